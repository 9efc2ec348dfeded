// tanh of the raw offsets, the first step of both CPU kernels (see offset_tanh.cpp).
#pragma once

#include <ATen/core/Tensor.h>

namespace stable_sam_ops {
namespace cpu {

// tanh(offset) in the op's compute precision (float32, or float64 for float64 inputs), as a
// contiguous tensor of offset's shape.
at::Tensor offset_tanh_of(const at::Tensor& offset);

}  // namespace cpu
}  // namespace stable_sam_ops
