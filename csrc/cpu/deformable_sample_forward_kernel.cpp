// CPU forward of the fused deformable-sampling op (contract: shared/design/deformable_sample.md).
// The layout, and the helpers it shares with the backward, are in deformable_sample_kernel.h.
#include "deformable_sample.h"
#include "deformable_sample_kernel.h"
#include "huge_pages.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>
#include <vector>

namespace stable_sam_ops {
namespace cpu {

using namespace detail;

namespace {

// out[c] = sum of (A * w) * corner[c] (+ a2 * residual[c]) over n contiguous channels.
template <typename scalar_t, typename acc_t, bool kResidual>
void forward_channels(scalar_t* __restrict__ out, const scalar_t* __restrict__ v00,
                      const scalar_t* __restrict__ v01, const scalar_t* __restrict__ v10,
                      const scalar_t* __restrict__ v11, const scalar_t* __restrict__ res,
                      const CornerWeights<acc_t> aw, acc_t a2, int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    acc_t s = math::interpolate(aw, static_cast<acc_t>(v00[c]), static_cast<acc_t>(v01[c]),
                                static_cast<acc_t>(v10[c]), static_cast<acc_t>(v11[c]));
    if constexpr (kResidual) {
      s += a2 * static_cast<acc_t>(res[c]);
    }
    out[c] = static_cast<scalar_t>(s);
  }
}

template <typename scalar_t>
void deformable_sample_forward_kernel_impl(
    const scalar_t* value, const at::opmath_type<scalar_t>* offset_tanh,
    const scalar_t* amplitude, const scalar_t* residual, const scalar_t* alpha,
    double offset_scale, const Dims d, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const std::vector<scalar_t> zeros(d.Cg, scalar_t(0));
  const acc_t scale = static_cast<acc_t>(offset_scale);
  const int64_t HW = d.H * d.W;
  const int64_t grain = std::max<int64_t>(1, 16384 / d.C);
  at::parallel_for(0, d.queries(), grain, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const int64_t b = q / HW;
      const int64_t i = (q % HW) / d.W;
      const int64_t j = q % d.W;
      const acc_t a1 = load_or<acc_t>(alpha, 2 * b, acc_t(1));
      const acc_t a2 = load_or<acc_t>(alpha, 2 * b + 1, acc_t(1));
      for (int64_t g = 0; g < d.G; ++g) {
        const int64_t qg = q * d.G + g;
        const SamplePoint<acc_t> p = math::make_sample_point_from_tanh<acc_t>(
              offset_tanh[2 * qg], offset_tanh[2 * qg + 1], i, j,
            d.H, d.W, scale);
        const acc_t A = a1 * load_or<acc_t>(amplitude, qg, acc_t(1));
        const CornerWeights<acc_t> aw = scaled(math::corner_weights(p), A);
        const int64_t c0 = g * d.Cg;
        const scalar_t* z = zeros.data();
        const scalar_t* v00 = corner_ptr(value, p.in00, b, p.y0, p.x0, d, c0, z);
        const scalar_t* v01 = corner_ptr(value, p.in01, b, p.y0, p.x0 + 1, d, c0, z);
        const scalar_t* v10 = corner_ptr(value, p.in10, b, p.y0 + 1, p.x0, d, c0, z);
        const scalar_t* v11 = corner_ptr(value, p.in11, b, p.y0 + 1, p.x0 + 1, d, c0, z);
        scalar_t* o = out + q * d.C + c0;
        if (residual != nullptr) {
          forward_channels<scalar_t, acc_t, true>(o, v00, v01, v10, v11, residual + q * d.C + c0,
                                                  aw, a2, d.Cg);
        } else {
          forward_channels<scalar_t, acc_t, false>(o, v00, v01, v10, v11, nullptr, aw, a2, d.Cg);
        }
      }
    }
  });
}

}  // namespace

at::Tensor deformable_sample_forward_kernel(
    const at::Tensor& value_, const at::Tensor& offset_,
    const std::optional<at::Tensor>& amplitude_, const std::optional<at::Tensor>& residual_,
    const std::optional<at::Tensor>& alpha_, double offset_scale) {
  check_deformable_sample_inputs(value_, offset_, amplitude_, residual_, alpha_, offset_scale);
  check_cpu(value_, "value");
  const at::Tensor value = value_.contiguous();
  const at::Tensor offset = offset_.contiguous();
  const auto amplitude = contiguous(amplitude_);
  const auto residual = contiguous(residual_);
  const auto alpha = contiguous(alpha_);
  at::Tensor out = at::empty(value.sizes(), value.options());
  advise_huge_pages(out);
  if (out.numel() == 0) {
    return out;
  }
  const Dims d = dims_of(value, offset);
  const at::Tensor offset_tanh = offset_tanh_of(offset);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "deformable_sample_forward_cpu", [&] {
        deformable_sample_forward_kernel_impl<scalar_t>(
            value.const_data_ptr<scalar_t>(),
            offset_tanh.const_data_ptr<at::opmath_type<scalar_t>>(),
            data_or_null<scalar_t>(amplitude), data_or_null<scalar_t>(residual),
            data_or_null<scalar_t>(alpha), offset_scale, d, out.mutable_data_ptr<scalar_t>());
      });
  return out;
}

}  // namespace cpu
}  // namespace stable_sam_ops
