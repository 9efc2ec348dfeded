// CPU forward of the fused deformable-sampling op (contract: shared/design/deformable_sample.md).
// The layout, and the helpers it shares with the backward, are in deformable_sample_kernel.h.
#include "deformable_sample.h"
#include "deformable_sample_kernel.h"
#include "output_cache.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
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

#if defined(__AVX2__) && defined(__FMA__)
// forward_channels for float with streaming stores, n a multiple of 8 and out 32-byte
// aligned: the output is written once and not read back here, so its cache lines skip the
// read-for-ownership a plain store costs (a third of the op's memory traffic at B=8).
template <bool kResidual>
void forward_channels_streaming(float* __restrict__ out, const float* __restrict__ v00,
                                const float* __restrict__ v01, const float* __restrict__ v10,
                                const float* __restrict__ v11, const float* __restrict__ res,
                                const CornerWeights<float> aw, float a2, int64_t n) {
  const __m256 w00 = _mm256_set1_ps(aw.w00), w01 = _mm256_set1_ps(aw.w01);
  const __m256 w10 = _mm256_set1_ps(aw.w10), w11 = _mm256_set1_ps(aw.w11);
  const __m256 r = _mm256_set1_ps(a2);
  for (int64_t c = 0; c < n; c += 8) {
    __m256 s = _mm256_mul_ps(w00, _mm256_loadu_ps(v00 + c));
    s = _mm256_fmadd_ps(w01, _mm256_loadu_ps(v01 + c), s);
    s = _mm256_fmadd_ps(w10, _mm256_loadu_ps(v10 + c), s);
    s = _mm256_fmadd_ps(w11, _mm256_loadu_ps(v11 + c), s);
    if constexpr (kResidual) {
      s = _mm256_fmadd_ps(r, _mm256_loadu_ps(res + c), s);
    }
    _mm256_stream_ps(out + c, s);
  }
}
#endif

// One (query, group)'s four corner rows of value and their weights A * w.
template <typename scalar_t, typename acc_t>
struct GroupSample {
  const scalar_t* v00;
  const scalar_t* v01;
  const scalar_t* v10;
  const scalar_t* v11;
  CornerWeights<acc_t> aw;
};

template <typename scalar_t>
void deformable_sample_forward_kernel_impl(
    const scalar_t* value, const at::opmath_type<scalar_t>* offset_tanh,
    const scalar_t* amplitude, const scalar_t* residual, const scalar_t* alpha,
    double offset_scale, const Dims d, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  using Sample = GroupSample<scalar_t, acc_t>;
  const std::vector<scalar_t> zeros(d.Cg, scalar_t(0));
  const acc_t scale = static_cast<acc_t>(offset_scale);
  const int64_t rows_ahead = value_rows_ahead(scale);
  const int64_t HW = d.H * d.W;
  const int64_t grain = std::max<int64_t>(1, 16384 / d.C);
  const bool streaming = std::is_same_v<scalar_t, float> && d.Cg % 8 == 0 &&
                         reinterpret_cast<uintptr_t>(out) % 32 == 0;
  // The sampling points of query q's groups, with their corners prefetched.
  const auto plan = [&](int64_t q, Sample* samples) {
    const int64_t b = q / HW;
    const int64_t i = (q % HW) / d.W;
    const int64_t j = q % d.W;
    const acc_t a1 = load_or<acc_t>(alpha, 2 * b, acc_t(1));
    const scalar_t* z = zeros.data();
    prefetch_value_row_ahead(value, b, i, j, rows_ahead, d);
    for (int64_t g = 0; g < d.G; ++g) {
      const auto c = locate_group_corners<false>(value, offset_tanh, q, b, i, j, g, d, scale, z);
      const acc_t A = a1 * load_or<acc_t>(amplitude, q * d.G + g, acc_t(1));
      samples[g] = Sample{c.v00, c.v01, c.v10, c.v11, scaled(c.w, A)};
    }
  };
  at::parallel_for(0, d.queries(), grain, [&](int64_t begin, int64_t end) {
    // Query q's samples are planned while query q - 1 is sampled.
    std::vector<Sample> current(d.G), next(d.G);
    plan(begin, current.data());
    for (int64_t q = begin; q < end; ++q) {
      if (q + 1 < end) {
        plan(q + 1, next.data());
      }
      const acc_t a2 = load_or<acc_t>(alpha, 2 * (q / HW) + 1, acc_t(1));
      for (int64_t g = 0; g < d.G; ++g) {
        const Sample& s = current[g];
        const int64_t c0 = g * d.Cg;
        scalar_t* o = out + q * d.C + c0;
#if defined(__AVX2__) && defined(__FMA__)
        if constexpr (std::is_same_v<scalar_t, float>) {
          if (streaming) {
            const float* r = residual != nullptr ? residual + q * d.C + c0 : nullptr;
            if (r != nullptr) {
              forward_channels_streaming<true>(o, s.v00, s.v01, s.v10, s.v11, r, s.aw, a2, d.Cg);
            } else {
              forward_channels_streaming<false>(o, s.v00, s.v01, s.v10, s.v11, r, s.aw, a2,
                                                d.Cg);
            }
            continue;
          }
        }
#endif
        if (residual != nullptr) {
          forward_channels<scalar_t, acc_t, true>(o, s.v00, s.v01, s.v10, s.v11,
                                                  residual + q * d.C + c0, s.aw, a2, d.Cg);
        } else {
          forward_channels<scalar_t, acc_t, false>(o, s.v00, s.v01, s.v10, s.v11, nullptr,
                                                   s.aw, a2, d.Cg);
        }
      }
      std::swap(current, next);
    }
#if defined(__AVX2__) && defined(__FMA__)
    if (streaming) {
      _mm_sfence();  // the streaming stores are visible before the task ends
    }
#endif
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
  at::Tensor out = empty_output(value.sizes(), value.options());
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
