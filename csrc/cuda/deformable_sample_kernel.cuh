// Device code of the fused deformable-sampling op's CUDA backend: the kernels and their
// per-thread helpers. Contract: shared/design/deformable_sample.md. The host launchers live in
// deformable_sample_kernel.cu; this header is kept free of host-runtime code so that a host
// emulation of the CUDA execution model (csrc/cuda/emulation/) can run these exact kernels on
// CPU in CI, where no GPU exists.
//
// Layout: every tensor is contiguous, so value/residual/out are channels-last (B, H, W, C)
// and group g of a pixel is the contiguous run of channels [g * Cg, (g + 1) * Cg).
// Threads own VEC contiguous channels of one group of one query and move them with one 16-byte
// load or store when Cg and the pointers allow (VEC = 16 / sizeof(scalar_t)), one element at a
// time otherwise.
#pragma once

#include "deformable_sample_math.h"

#include <ATen/OpMathType.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <type_traits>

namespace stable_sam_ops {
namespace cuda_detail {

namespace m = stable_sam_ops::math;

constexpr unsigned kFullWarp = 0xffffffffu;
constexpr int kThreadsPerBlock = 256;  // a multiple of the warp size: segment shuffles need it

// VEC contiguous elements moved as one aligned load/store.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

// A 16-byte Pack assigned as a struct compiles to four 32-bit stores on sm_90; the same bytes
// stored as one uint4 through __stwb compile to one STG.E.128 (tests/stable_sam_ops/
// test_cuda_sass.py checks the SASS).
template <typename T, int N>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& x) {
  if constexpr (sizeof(Pack<T, N>) == 16) {
    uint4 bits;
    memcpy(&bits, &x, sizeof(bits));
    __stwb(reinterpret_cast<uint4*>(p), bits);
  } else {
    *reinterpret_cast<Pack<T, N>*>(p) = x;
  }
}

// Loads the VEC channels of one bilinear corner as acc_t, or zeros when the corner is out of
// range: an out-of-range corner is never read (its address may lie outside value).
template <typename scalar_t, int VEC, typename acc_t>
__device__ __forceinline__ void load_corner(const scalar_t* value, bool in_range, int64_t index,
                                            acc_t (&out)[VEC]) {
  if (in_range) {
    const Pack<scalar_t, VEC> pk = load_pack<scalar_t, VEC>(value + index);
#pragma unroll
    for (int e = 0; e < VEC; ++e) out[e] = static_cast<acc_t>(pk.v[e]);
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e) out[e] = acc_t(0);
  }
}

// Query coordinates of a flat (batch, row, column, group) index.
template <typename index_t>
struct QueryGroup {
  index_t b, i, j, g;
};

template <typename index_t>
__device__ __forceinline__ QueryGroup<index_t> split_query_group(index_t qg, index_t H, index_t W,
                                                                 index_t G) {
  QueryGroup<index_t> r;
  r.g = qg % G;
  index_t t = qg / G;
  r.j = t % W;
  t /= W;
  r.i = t % H;
  r.b = t / H;
  return r;
}

// The per-(query, group) factors: the sampling point (from the raw offsets, read once), the
// amplitude and the batch's routing weights. None-inputs take their documented defaults.
template <typename scalar_t, typename acc_t>
struct QueryFactors {
  m::SamplePoint<acc_t> p;
  acc_t amplitude;
  acc_t alpha1;
  acc_t alpha2;
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ QueryFactors<scalar_t, acc_t> load_query_factors(
    const scalar_t* __restrict__ offset, const scalar_t* __restrict__ amplitude,
    const scalar_t* __restrict__ alpha, int64_t qg, int64_t b, int64_t i, int64_t j, int64_t H,
    int64_t W, acc_t offset_scale) {
  QueryFactors<scalar_t, acc_t> f;
  const acc_t raw_dx = static_cast<acc_t>(offset[2 * qg]);
  const acc_t raw_dy = static_cast<acc_t>(offset[2 * qg + 1]);
  f.p = m::make_sample_point<acc_t>(raw_dx, raw_dy, i, j, H, W, offset_scale);
  f.amplitude = amplitude != nullptr ? static_cast<acc_t>(amplitude[qg]) : acc_t(1);
  f.alpha1 = alpha != nullptr ? static_cast<acc_t>(alpha[2 * b]) : acc_t(1);
  f.alpha2 = alpha != nullptr ? static_cast<acc_t>(alpha[2 * b + 1]) : acc_t(1);
  return f;
}

// ---------------------------------------------------------------------------------------------
// Forward: one thread per (query, group, VEC-channel chunk).

template <typename scalar_t, int VEC, typename index_t>
__global__ void deformable_sample_forward_kernel_impl(
    index_t n_threads, const scalar_t* __restrict__ value, const scalar_t* __restrict__ offset,
    const scalar_t* __restrict__ amplitude, const scalar_t* __restrict__ residual,
    const scalar_t* __restrict__ alpha, scalar_t* __restrict__ out, index_t H, index_t W,
    index_t C, index_t G, at::opmath_type<scalar_t> offset_scale) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t Cg = C / G;
  const index_t n_vec = Cg / VEC;
  for (index_t idx = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; idx < n_threads;
       idx += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t k = idx % n_vec;
    const index_t qg = idx / n_vec;
    const auto q = split_query_group<index_t>(qg, H, W, G);
    const auto f = load_query_factors<scalar_t, acc_t>(offset, amplitude, alpha, qg, q.b, q.i,
                                                       q.j, H, W, offset_scale);
    const auto w = m::corner_weights(f.p);
    const int64_t c0 = static_cast<int64_t>(q.g) * Cg + static_cast<int64_t>(k) * VEC;
    acc_t v00[VEC], v01[VEC], v10[VEC], v11[VEC];
    load_corner<scalar_t, VEC>(value, f.p.in00,
                               m::pixel_index(q.b, f.p.y0, f.p.x0, H, W, C) + c0, v00);
    load_corner<scalar_t, VEC>(value, f.p.in01,
                               m::pixel_index(q.b, f.p.y0, f.p.x0 + 1, H, W, C) + c0, v01);
    load_corner<scalar_t, VEC>(value, f.p.in10,
                               m::pixel_index(q.b, f.p.y0 + 1, f.p.x0, H, W, C) + c0, v10);
    load_corner<scalar_t, VEC>(value, f.p.in11,
                               m::pixel_index(q.b, f.p.y0 + 1, f.p.x0 + 1, H, W, C) + c0, v11);
    const int64_t out_index = m::pixel_index(q.b, q.i, q.j, H, W, C) + c0;
    const acc_t A = f.alpha1 * f.amplitude;
    acc_t res[VEC];
    load_corner<scalar_t, VEC>(residual, residual != nullptr, out_index, res);
    Pack<scalar_t, VEC> o;
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const acc_t S = m::interpolate(w, v00[e], v01[e], v10[e], v11[e]);
      // Without a residual the second term is absent, not 0 * alpha2 (alpha2 may be inf/NaN).
      o.v[e] = static_cast<scalar_t>(residual != nullptr ? A * S + f.alpha2 * res[e] : A * S);
    }
    store_pack<scalar_t, VEC>(out + out_index, o);
  }
}

// ---------------------------------------------------------------------------------------------
// Backward, query side: `lanes` consecutive threads (a power of two <= 32, aligned inside a
// warp) share one (query, group) and stride over its VEC-chunks; their partial sums for
// dL/doffset, dL/damplitude and dL/dalpha meet in a segment shuffle, so those gradients need no
// atomics and are deterministic. With grad_value_acc given, dL/dvalue is scattered here by
// float atomics (the fast, non-deterministic path); otherwise the gather kernel computes it.

template <typename T>
__device__ __forceinline__ T segment_sum(T v, int lanes) {
  for (int delta = lanes / 2; delta > 0; delta /= 2) v += __shfl_xor_sync(kFullWarp, v, delta, lanes);
  return v;
}

// sm_90 adds 16-byte float atomics (float4 atomicAdd): a quarter of the atomic operations.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && \
    (__CUDACC_VER_MAJOR__ > 12 || (__CUDACC_VER_MAJOR__ == 12 && __CUDACC_VER_MINOR__ >= 4))
#define SSO_FLOAT4_ATOMICS 1
#else
#define SSO_FLOAT4_ATOMICS 0
#endif

// dst[e] += coef * g[e] by atomics. dst is 16-byte aligned whenever VEC % 4 == 0: the packed
// path runs only when every channel run starts on a pack boundary of a fresh buffer.
template <int VEC, typename acc_t>
__device__ __forceinline__ void scatter_corner(acc_t* dst, acc_t coef, const acc_t (&g)[VEC]) {
  if constexpr (SSO_FLOAT4_ATOMICS && std::is_same_v<acc_t, float> && VEC % 4 == 0) {
#if SSO_FLOAT4_ATOMICS
#pragma unroll
    for (int e = 0; e < VEC; e += 4) {
      atomicAdd(reinterpret_cast<float4*>(dst + e),
                make_float4(coef * g[e], coef * g[e + 1], coef * g[e + 2], coef * g[e + 3]));
    }
#endif
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e) atomicAdd(dst + e, coef * g[e]);
  }
}

// With sample_corner/sample_coef given (the deterministic path), lane 0 of each (query, group)
// also writes what the gather kernel needs of it: the top-left corner (y0, x0) and the four
// corner coefficients alpha1 * amplitude * weight (0 for a corner out of range), so the gather
// reads 8 bytes per query in its window instead of recomputing two tanh.
template <typename acc_t>
struct SampleCache {
  int32_t* __restrict__ corner;  // (n_qg, 2): y0, x0
  acc_t* __restrict__ coef;      // (n_qg, 4): c00, c01, c10, c11
};

// Blocks of 256 threads the backward query kernel asks to keep resident per SM. 3 caps
// registers at 80 per thread: the one-element paths (77-86 registers unbounded, 71-78 bounded)
// fit without spilling; the packed paths and float64 (96-128) spill at 80, so they keep 2 (25%
// occupancy).
// Per-kernel registers and spills from ptxas -v: benchmarks/RESULTS.md.
template <typename scalar_t, int VEC>
constexpr int backward_query_min_blocks() {
  return VEC == 1 && sizeof(scalar_t) <= 4 ? 3 : 2;
}

template <typename scalar_t, int VEC, typename index_t>
__global__ void __launch_bounds__(kThreadsPerBlock, (backward_query_min_blocks<scalar_t, VEC>()))
deformable_sample_backward_query_kernel_impl(
    index_t n_threads, int lanes_log2, const scalar_t* __restrict__ grad_out,
    const scalar_t* __restrict__ value, const scalar_t* __restrict__ offset,
    const scalar_t* __restrict__ amplitude, const scalar_t* __restrict__ residual,
    const scalar_t* __restrict__ alpha, at::opmath_type<scalar_t>* __restrict__ grad_value_acc,
    scalar_t* __restrict__ grad_offset, scalar_t* __restrict__ grad_amplitude,
    scalar_t* __restrict__ grad_residual, at::opmath_type<scalar_t>* __restrict__ alpha_partials,
    SampleCache<at::opmath_type<scalar_t>> sample_cache, index_t H, index_t W, index_t C,
    index_t G, at::opmath_type<scalar_t> offset_scale) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lanes = 1 << lanes_log2;
  const index_t Cg = C / G;
  const index_t n_vec = Cg / VEC;
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  // The loop bound is warp-uniform (base is), so every lane of a warp reaches the shuffles.
  for (index_t base = blockIdx.x * static_cast<index_t>(blockDim.x); base < n_threads;
       base += stride) {
    const index_t idx = base + threadIdx.x;
    const bool active = idx < n_threads;
    const index_t qg = idx >> lanes_log2;
    const int lane = static_cast<int>(idx & (lanes - 1));
    acc_t sum_dx = 0, sum_dy = 0, sum_gS = 0, sum_gR = 0;
    QueryFactors<scalar_t, acc_t> f{};
    if (active) {
      const auto q = split_query_group<index_t>(qg, H, W, G);
      f = load_query_factors<scalar_t, acc_t>(offset, amplitude, alpha, qg, q.b, q.i, q.j, H, W,
                                              offset_scale);
      const auto w = m::corner_weights(f.p);
      const acc_t A = f.alpha1 * f.amplitude;
      const int64_t i00 = m::pixel_index(q.b, f.p.y0, f.p.x0, H, W, C);
      const int64_t i01 = m::pixel_index(q.b, f.p.y0, f.p.x0 + 1, H, W, C);
      const int64_t i10 = m::pixel_index(q.b, f.p.y0 + 1, f.p.x0, H, W, C);
      const int64_t i11 = m::pixel_index(q.b, f.p.y0 + 1, f.p.x0 + 1, H, W, C);
      const int64_t iq = m::pixel_index(q.b, q.i, q.j, H, W, C);
      for (index_t k = lane; k < n_vec; k += lanes) {
        const int64_t c0 = static_cast<int64_t>(q.g) * Cg + static_cast<int64_t>(k) * VEC;
        acc_t g[VEC], v00[VEC], v01[VEC], v10[VEC], v11[VEC];
        load_corner<scalar_t, VEC>(grad_out, true, iq + c0, g);
        load_corner<scalar_t, VEC>(value, f.p.in00, i00 + c0, v00);
        load_corner<scalar_t, VEC>(value, f.p.in01, i01 + c0, v01);
        load_corner<scalar_t, VEC>(value, f.p.in10, i10 + c0, v10);
        load_corner<scalar_t, VEC>(value, f.p.in11, i11 + c0, v11);
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          sum_dx += g[e] * m::interpolate_dx(f.p, v00[e], v01[e], v10[e], v11[e]);
          sum_dy += g[e] * m::interpolate_dy(f.p, v00[e], v01[e], v10[e], v11[e]);
          sum_gS += g[e] * m::interpolate(w, v00[e], v01[e], v10[e], v11[e]);
        }
        if (residual != nullptr) {
          acc_t r[VEC];
          load_corner<scalar_t, VEC>(residual, true, iq + c0, r);
          Pack<scalar_t, VEC> gr;
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            sum_gR += g[e] * r[e];
            gr.v[e] = static_cast<scalar_t>(f.alpha2 * g[e]);
          }
          store_pack<scalar_t, VEC>(grad_residual + iq + c0, gr);
        }
        if (grad_value_acc != nullptr) {
          if (f.p.in00) scatter_corner<VEC>(grad_value_acc + i00 + c0, w.w00 * A, g);
          if (f.p.in01) scatter_corner<VEC>(grad_value_acc + i01 + c0, w.w01 * A, g);
          if (f.p.in10) scatter_corner<VEC>(grad_value_acc + i10 + c0, w.w10 * A, g);
          if (f.p.in11) scatter_corner<VEC>(grad_value_acc + i11 + c0, w.w11 * A, g);
        }
      }
    }
    sum_dx = segment_sum(sum_dx, lanes);
    sum_dy = segment_sum(sum_dy, lanes);
    sum_gS = segment_sum(sum_gS, lanes);
    sum_gR = segment_sum(sum_gR, lanes);
    if (active && lane == 0) {
      const acc_t A = f.alpha1 * f.amplitude;
      // 2 * qg in 64 bits: with one channel per group qg may pass 2^30 in an int32 launch.
      const int64_t q2 = 2 * static_cast<int64_t>(qg);
      grad_offset[q2] = static_cast<scalar_t>(A * sum_dx * f.p.dx_draw);
      grad_offset[q2 + 1] = static_cast<scalar_t>(A * sum_dy * f.p.dy_draw);
      if (grad_amplitude != nullptr) grad_amplitude[qg] = static_cast<scalar_t>(f.alpha1 * sum_gS);
      if (alpha_partials != nullptr) {
        alpha_partials[q2] = f.amplitude * sum_gS;
        alpha_partials[q2 + 1] = sum_gR;
      }
      if (sample_cache.corner != nullptr) {
        const auto w = m::corner_weights(f.p);
        // y0, x0 lie in [-2, max(H, W)] (-2 marks a point with no corner in range).
        sample_cache.corner[q2] = static_cast<int32_t>(f.p.y0);
        sample_cache.corner[q2 + 1] = static_cast<int32_t>(f.p.x0);
        Pack<acc_t, 4> c;
        c.v[0] = A * w.w00;
        c.v[1] = A * w.w01;
        c.v[2] = A * w.w10;
        c.v[3] = A * w.w11;
        store_pack<acc_t, 4>(sample_cache.coef + 2 * q2, c);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward, deterministic dL/dvalue: one thread per (value pixel, group, VEC-chunk) gathers from
// every query within `radius` = ceil(offset_scale) + 1 pixels (|delta| <= offset_scale, so no
// other query can touch this pixel), in a fixed order, reading each query's corner and
// coefficients from the SampleCache the query kernel wrote.

template <typename scalar_t, int VEC>
__global__ void deformable_sample_backward_gather_value_kernel_impl(
    int64_t n_threads, const scalar_t* __restrict__ grad_out,
    const int32_t* __restrict__ sample_corner,
    const at::opmath_type<scalar_t>* __restrict__ sample_coef, scalar_t* __restrict__ grad_value,
    int64_t H, int64_t W, int64_t C, int64_t G, int64_t radius) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t Cg = C / G;
  const int64_t n_vec = Cg / VEC;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n_threads;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t k = idx % n_vec;
    const auto px = split_query_group<int64_t>(idx / n_vec, H, W, G);  // the value pixel
    const int64_t c0 = px.g * Cg + k * VEC;
    acc_t acc[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[e] = acc_t(0);
    const int64_t i_lo = px.i - radius > 0 ? px.i - radius : 0;
    const int64_t i_hi = px.i + radius < H - 1 ? px.i + radius : H - 1;
    const int64_t j_lo = px.j - radius > 0 ? px.j - radius : 0;
    const int64_t j_hi = px.j + radius < W - 1 ? px.j + radius : W - 1;
    for (int64_t qi = i_lo; qi <= i_hi; ++qi) {
      for (int64_t qj = j_lo; qj <= j_hi; ++qj) {
        const int64_t qg = ((px.b * H + qi) * W + qj) * G + px.g;
        const Pack<int32_t, 2> corner = load_pack<int32_t, 2>(sample_corner + 2 * qg);
        const int64_t dy = px.i - corner.v[0];
        const int64_t dx = px.j - corner.v[1];
        if (dy < 0 || dy > 1 || dx < 0 || dx > 1) continue;
        // 0 for a corner out of range, so no range test here.
        const acc_t coef = sample_coef[4 * qg + 2 * dy + dx];
        acc_t g[VEC];
        load_corner<scalar_t, VEC>(grad_out, true, m::pixel_index(px.b, qi, qj, H, W, C) + c0, g);
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[e] += coef * g[e];
      }
    }
    Pack<scalar_t, VEC> o;
#pragma unroll
    for (int e = 0; e < VEC; ++e) o.v[e] = static_cast<scalar_t>(acc[e]);
    store_pack<scalar_t, VEC>(grad_value + m::pixel_index(px.b, px.i, px.j, H, W, C) + c0, o);
  }
}

// ---------------------------------------------------------------------------------------------
// Launch geometry shared by the launchers and the host emulation.

constexpr int64_t kMaxBlocks = 65535LL * 32;  // grid-stride loops cover the rest

inline int64_t blocks_for(int64_t n_threads, int64_t max_blocks = kMaxBlocks) {
  const int64_t wanted = (n_threads + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return wanted < 1 ? 1 : (wanted < max_blocks ? wanted : max_blocks);
}

// Whether a kernel may use int32 indices (faster division): its thread indices, including the
// last grid-stride step past the end, and every element index it forms in index_t, i.e. the
// numel of every tensor it indexes that way (value, and offset, whose 2 * qg is twice the
// query count: with one channel per group that passes 2^31 before value's numel does).
inline bool fits_int32(int64_t n_threads, std::initializer_list<int64_t> numels) {
  const int64_t lim = std::numeric_limits<int32_t>::max();
  if (n_threads + kMaxBlocks * kThreadsPerBlock >= lim) return false;
  for (const int64_t n : numels) {
    if (n >= lim) return false;
  }
  return true;
}

// The forward kernel's index width over n_qg (query, group) pairs of Cg channels.
inline bool forward_fits_int32(int64_t n_qg, int64_t Cg, int64_t value_numel,
                               int64_t offset_numel) {
  return fits_int32(n_qg * Cg, {value_numel, offset_numel});
}

// log2 of the lanes that share one (query, group) in the backward query kernel: a power of two
// covering the group's packs, at most a warp.
inline int backward_lanes_log2(int64_t n_vec) {
  int lanes_log2 = 0;
  while ((int64_t{1} << lanes_log2) < n_vec && lanes_log2 < 5) ++lanes_log2;
  return lanes_log2;
}

// How the launchers (and the host emulation) run the backward query kernel over n_qg
// (query, group) pairs of n_vec chunks each.
struct BackwardQueryPlan {
  int lanes_log2;
  int64_t n_threads;
  bool index32;
};

inline BackwardQueryPlan plan_backward_query(int64_t n_qg, int64_t n_vec, int64_t value_numel,
                                             int64_t offset_numel) {
  BackwardQueryPlan plan;
  plan.lanes_log2 = backward_lanes_log2(n_vec);
  plan.n_threads = n_qg << plan.lanes_log2;
  plan.index32 = fits_int32(plan.n_threads, {value_numel, offset_numel});
  return plan;
}

// |delta| <= offset_scale: a query more than ceil(offset_scale) + 1 pixels away cannot touch a
// pixel. Capped by the image so that huge scales do not overflow.
inline int64_t gather_radius(double offset_scale, int64_t H, int64_t W) {
  const double r = std::ceil(offset_scale) + 1.0;
  const double cap = static_cast<double>(H > W ? H : W);
  return static_cast<int64_t>(r < cap ? r : cap);
}

}  // namespace cuda_detail
}  // namespace stable_sam_ops
