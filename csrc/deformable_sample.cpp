// Schema of the fused deformable-sampling op and the checks every compiled backend shares.
// Backends register their kernels at the end of their own files (TORCH_LIBRARY_IMPL); the
// fake (meta) kernels and the autograd formula live in stable_sam_ops/_meta_registrations.py.
#include "deformable_sample.h"
#include "cpu/offset_tanh.h"
#include "cpu/output_cache.h"

#include <torch/extension.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

namespace stable_sam_ops {

namespace {

void check_same_device_dtype(const at::Tensor& value, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == value.device(), "deformable_sample: ", name,
              " must be on the same device as value (", value.device(), "), got ", t.device());
  TORCH_CHECK(t.scalar_type() == value.scalar_type(), "deformable_sample: ", name,
              " must have the dtype of value (", value.scalar_type(), "), got ",
              t.scalar_type());
}

}  // namespace

void check_deformable_sample_inputs(
    const at::Tensor& value, const at::Tensor& offset,
    const std::optional<at::Tensor>& amplitude, const std::optional<at::Tensor>& residual,
    const std::optional<at::Tensor>& alpha, double offset_scale) {
  TORCH_CHECK(value.dim() == 4, "deformable_sample: value must be (B, H, W, C), got shape ",
              value.sizes());
  const auto B = value.size(0), H = value.size(1), W = value.size(2), C = value.size(3);
  TORCH_CHECK(H >= 1 && W >= 1 && C >= 1,
              "deformable_sample: value must have H, W, C >= 1, got shape ", value.sizes());
  TORCH_CHECK(offset.dim() == 5 && offset.size(0) == B && offset.size(1) == H &&
                  offset.size(2) == W && offset.size(4) == 2 && offset.size(3) >= 1,
              "deformable_sample: offset must be (B, H, W, G, 2) = (", B, ", ", H, ", ", W,
              ", G, 2), got shape ", offset.sizes());
  const auto G = offset.size(3);
  TORCH_CHECK(C % G == 0, "deformable_sample: C (", C, ") must be divisible by G (", G, ")");
  check_same_device_dtype(value, offset, "offset");
  if (amplitude.has_value()) {
    const auto& a = *amplitude;
    TORCH_CHECK(a.dim() == 4 && a.size(0) == B && a.size(1) == H && a.size(2) == W &&
                    a.size(3) == G,
                "deformable_sample: amplitude must be (B, H, W, G) = (", B, ", ", H, ", ", W,
                ", ", G, "), got shape ", a.sizes());
    check_same_device_dtype(value, a, "amplitude");
  }
  if (residual.has_value()) {
    TORCH_CHECK(residual->sizes() == value.sizes(),
                "deformable_sample: residual must have the shape of value ", value.sizes(),
                ", got ", residual->sizes());
    check_same_device_dtype(value, *residual, "residual");
  }
  if (alpha.has_value()) {
    TORCH_CHECK(alpha->dim() == 2 && alpha->size(0) == B && alpha->size(1) == 2,
                "deformable_sample: alpha must be (B, 2) = (", B, ", 2), got shape ",
                alpha->sizes());
    check_same_device_dtype(value, *alpha, "alpha");
  }
  TORCH_CHECK(std::isfinite(offset_scale) && offset_scale > 0,
              "deformable_sample: offset_scale must be finite and > 0, got ", offset_scale);
  // Every backend computes in float32 unless the inputs are float64: a scale that overflows
  // it would make offset_scale * tanh(offset) infinite (NaN where tanh is 0).
  TORCH_CHECK(value.scalar_type() == at::kDouble ||
                  offset_scale <= static_cast<double>(std::numeric_limits<float>::max()),
              "deformable_sample: offset_scale (", offset_scale,
              ") overflows float32, the dtype the op computes in for ", value.scalar_type(),
              " inputs");
}

TORCH_LIBRARY(stable_sam_ops, m) {
  m.def(
      "deformable_sample(Tensor value, Tensor offset, Tensor? amplitude, Tensor? residual, "
      "Tensor? alpha, float offset_scale) -> Tensor");
  // Returns (grad_value, grad_offset, grad_amplitude, grad_residual, grad_alpha). A gradient
  // whose input was None comes back as an empty tensor.
  m.def(
      "_deformable_sample_backward(Tensor grad_out, Tensor value, Tensor offset, "
      "Tensor? amplitude, Tensor? residual, Tensor? alpha, float offset_scale) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

}  // namespace stable_sam_ops

namespace {

bool compiled_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

// The extension is a Python module too (pybind11), so `import stable_sam_ops._C` loads the
// kernels' registrations and reports how it was built.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "stable_sam_ops compiled kernels (registered as torch.ops.stable_sam_ops.*)";
  m.def("compiled_with_cuda", &compiled_with_cuda,
        "Whether the CUDA kernels were compiled into this build");
  m.def("cpu_output_cache_kept_bytes", &stable_sam_ops::cpu::output_cache_kept_bytes,
        "Bytes the CPU kernels keep for reuse from freed outputs, not in use now");
  m.def("empty_cpu_output_cache", &stable_sam_ops::cpu::empty_output_cache,
        "Frees the buffers the CPU kernels keep from freed outputs");
  m.def("_cpu_offset_tanh", &stable_sam_ops::cpu::offset_tanh_of,
        "tanh of raw offsets as the CPU kernels compute it (exposed for its tests)");
}
