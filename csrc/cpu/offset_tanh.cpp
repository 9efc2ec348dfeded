// tanh of the raw offsets for the CPU kernels.
//
// ATen's tanh (MKL's, here) took about 1 ms of each forward and each backward at B=8, 64x64,
// G=8 on the 2-core EPYC in benchmarks/RESULTS.md: 3 ns an element, three times its exp. Where
// the offsets are float32 and AVX2 is compiled in, the kernels use the vector tanh below
// (half and bfloat16 offsets too, converted to float32 first); float64 goes through ATen.
//
// tanh(a) for a = |x| is -m / (2 + m) with m = expm1(-2a), written this way so that small
// offsets keep their relative precision (1 - exp(-2a) would cancel). m = 2^n (1 + q) - 1 with
// -2a = n ln2 + r, |r| <= ln2 / 2, and q = expm1(r) by its Taylor series to r^8 / 8! (the next
// term is below 1e-9 of q). a is capped at 9, where tanh rounds to 1 in float32. The result is
// within a few float32 ulps of tanh; each element is computed by the same vector code wherever
// a thread's range starts, so the bits do not depend on the thread count.
#include "offset_tanh.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace stable_sam_ops {
namespace cpu {

#if defined(__AVX2__) && defined(__FMA__)
namespace {

__m256 tanh8(__m256 x) {
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  // min(9, NaN) is NaN: a NaN offset stays NaN, which the kernels treat as out of range.
  const __m256 a = _mm256_min_ps(_mm256_set1_ps(9.0f), _mm256_andnot_ps(sign_bit, x));
  const __m256 t = _mm256_mul_ps(_mm256_set1_ps(-2.0f), a);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(t, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // ln 2 in two parts, so that r = t - n ln2 is exact to float32 for |n| <= 26.
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), t);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606820309417e-06f), r);
  __m256 q = _mm256_set1_ps(1.0f / 40320.0f);
  for (const float c : {1.0f / 5040.0f, 1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f,
                        1.0f / 6.0f, 0.5f, 1.0f}) {
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(c));
  }
  q = _mm256_mul_ps(q, r);  // expm1(r)
  const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  const __m256 pow2n = _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23));
  const __m256 m = _mm256_fmadd_ps(pow2n, q, _mm256_sub_ps(pow2n, _mm256_set1_ps(1.0f)));
  const __m256 tanh_a = _mm256_div_ps(m, _mm256_sub_ps(_mm256_set1_ps(-2.0f), m));
  return _mm256_or_ps(_mm256_andnot_ps(sign_bit, tanh_a), _mm256_and_ps(sign_bit, x));
}

void tanh_float(const float* x, float* y, int64_t n) {
  // 8-element blocks on a fixed grid: a thread's range starts on a block boundary.
  const int64_t blocks = (n + 7) / 8;
  at::parallel_for(0, blocks, 8192, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t i = 8 * k;
      if (i + 8 <= n) {
        _mm256_storeu_ps(y + i, tanh8(_mm256_loadu_ps(x + i)));
      } else {
        float in[8] = {}, out[8];
        std::memcpy(in, x + i, sizeof(float) * (n - i));
        _mm256_storeu_ps(out, tanh8(_mm256_loadu_ps(in)));
        std::memcpy(y + i, out, sizeof(float) * (n - i));
      }
    }
  });
}

}  // namespace
#endif

at::Tensor offset_tanh_of(const at::Tensor& offset) {
#if defined(__AVX2__) && defined(__FMA__)
  if (offset.scalar_type() == at::kFloat) {
    const at::Tensor x = offset.contiguous();
    at::Tensor y = at::empty(x.sizes(), x.options());
    tanh_float(x.const_data_ptr<float>(), y.mutable_data_ptr<float>(), x.numel());
    return y;
  }
  if (offset.scalar_type() == at::kHalf || offset.scalar_type() == at::kBFloat16) {
    at::Tensor y = offset.to(at::kFloat).contiguous();
    tanh_float(y.const_data_ptr<float>(), y.mutable_data_ptr<float>(), y.numel());
    return y;
  }
#endif
  return offset.to(at::toOpMathType(offset.scalar_type())).tanh().contiguous();
}

}  // namespace cpu
}  // namespace stable_sam_ops
