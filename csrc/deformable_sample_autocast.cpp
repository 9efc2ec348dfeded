// Autocast for the fused deformable-sampling op: under torch.autocast it is a lower-precision
// op, like matmul. Every floating input but float64 is cast to the autocast dtype, then the op
// runs with autocast off. The kernels accumulate half and bfloat16 in float32, so this costs
// little accuracy against running the op in float32, and it reads half the bytes (measurements
// in the README). stable_sam_ops.deformable_sample applies the same policy for every backend.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

namespace stable_sam_ops {

namespace {

template <c10::DispatchKey kAutocastKey, c10::DeviceType kDevice>
at::Tensor deformable_sample_autocast(const at::Tensor& value, const at::Tensor& offset,
                                      const std::optional<at::Tensor>& amplitude,
                                      const std::optional<at::Tensor>& residual,
                                      const std::optional<at::Tensor>& alpha,
                                      double offset_scale) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(kAutocastKey);
  const auto to = at::autocast::get_lower_precision_fp_from_device_type(kDevice);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("stable_sam_ops::deformable_sample", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&,
                                         const std::optional<at::Tensor>&,
                                         const std::optional<at::Tensor>&, double)>();
  return op.call(at::autocast::cached_cast(to, value, kDevice),
                 at::autocast::cached_cast(to, offset, kDevice),
                 at::autocast::cached_cast(to, amplitude, kDevice),
                 at::autocast::cached_cast(to, residual, kDevice),
                 at::autocast::cached_cast(to, alpha, kDevice), offset_scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(stable_sam_ops, AutocastCPU, m) {
  m.impl("deformable_sample",
         &deformable_sample_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(stable_sam_ops, AutocastCUDA, m) {
  m.impl("deformable_sample",
         &deformable_sample_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
}

}  // namespace stable_sam_ops
