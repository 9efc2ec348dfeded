// Registers the CPU kernels of the fused deformable-sampling op: the forward is in
// deformable_sample_forward_kernel.cpp, the backward in deformable_sample_backward_kernel.cpp,
// what they share in deformable_sample_kernel.h.
#include "deformable_sample_kernel.h"

#include <torch/library.h>

namespace stable_sam_ops {

TORCH_LIBRARY_IMPL(stable_sam_ops, CPU, m) {
  m.impl("deformable_sample", &cpu::deformable_sample_forward_kernel);
  m.impl("_deformable_sample_backward", &cpu::deformable_sample_backward_kernel);
}

}  // namespace stable_sam_ops
