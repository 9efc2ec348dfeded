// Buffers for the CPU kernels' large outputs, kept when a returned tensor is freed and handed to
// the next output of the same size.
//
// PyTorch's CPU allocator maps a large tensor fresh from the kernel on each call and unmaps it
// when the tensor dies, so every call of the op pays the kernel's page faults and zeroing of its
// outputs: on the 2-core EPYC in benchmarks/RESULTS.md that was the largest single cost of the
// forward (a 32 MiB output at B=8, C=256, 64x64) and 17 % of the backward's cycles, and its cost
// swung by 10x from phase to phase. The op is called with the same shapes prompt after prompt
// (decoder inference) and step after step (training), so a freed output's buffer is almost
// always the one the next call needs: keeping it removes that cost, as CUDA's caching allocator
// does on the GPU.
//
// Only outputs of at least kMinCachedBytes are served here; smaller ones come from the heap,
// which is already warm. A buffer is reused for a request of its exact (2 MiB-rounded) size. At
// most STABLE_SAM_OPS_CPU_OUTPUT_CACHE_MB (default 256) MiB are kept while unused, the least
// recently freed buffers going first; 0 keeps nothing. empty_output_cache() frees all kept
// buffers. Tensors keep their usual semantics: the storage is resizable, and a resize moves the
// data to a buffer of the new size.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>

#include <cstddef>

namespace stable_sam_ops {
namespace cpu {

constexpr size_t kMinCachedBytes = size_t(2) << 20;

// An uninitialised contiguous CPU tensor, from a kept buffer when one of its size is free.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// Bytes of buffers kept for reuse and not in use now.
size_t output_cache_kept_bytes();

// Frees every kept buffer (buffers in use are freed when their tensors die).
void empty_output_cache();

}  // namespace cpu
}  // namespace stable_sam_ops
