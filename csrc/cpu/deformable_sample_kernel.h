// CPU kernels of the fused deformable-sampling op (contract: shared/design/deformable_sample.md):
// what the forward (deformable_sample_forward_kernel.cpp) and the backward
// (deformable_sample_backward_kernel.cpp) share; deformable_sample_kernel.cpp registers both.
//
// Layout: value, residual, out and their gradients are contiguous (B, H, W, C) tensors, so the
// C / G channels of one (query, group) are contiguous; each kernel computes the sampling point
// once per (query, group) with the shared arithmetic of deformable_sample_math.h and then runs
// a loop over those channels in vector code (auto-vectorised in the forward, GCC vector types
// in the backward, whose lane sums must keep a fixed order).
#pragma once

#include "deformable_sample_math.h"
#include "offset_tanh.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <tuple>

namespace stable_sam_ops {
namespace cpu {

// The host functions registered for the CPU dispatch key.
at::Tensor deformable_sample_forward_kernel(
    const at::Tensor& value, const at::Tensor& offset,
    const std::optional<at::Tensor>& amplitude, const std::optional<at::Tensor>& residual,
    const std::optional<at::Tensor>& alpha, double offset_scale);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
deformable_sample_backward_kernel(
    const at::Tensor& grad_out, const at::Tensor& value, const at::Tensor& offset,
    const std::optional<at::Tensor>& amplitude, const std::optional<at::Tensor>& residual,
    const std::optional<at::Tensor>& alpha, double offset_scale);

namespace detail {

using math::CornerWeights;
using math::SamplePoint;

struct Dims {
  int64_t B, H, W, C, G, Cg;
  int64_t queries() const { return B * H * W; }
};

inline Dims dims_of(const at::Tensor& value, const at::Tensor& offset) {
  Dims d;
  d.B = value.size(0);
  d.H = value.size(1);
  d.W = value.size(2);
  d.C = value.size(3);
  d.G = offset.size(3);
  d.Cg = d.C / d.G;
  return d;
}

template <typename acc_t, typename scalar_t>
acc_t load_or(const scalar_t* p, int64_t i, acc_t fallback) {
  return p != nullptr ? static_cast<acc_t>(p[i]) : fallback;
}

// Points a corner at its first channel in `base` when in range, else at a zero stand-in that is
// never written: the corner's weight is 0 there, and no memory outside value is read.
template <typename scalar_t>
const scalar_t* corner_ptr(const scalar_t* base, bool in_range, int64_t b, int64_t y,
                           int64_t x, const Dims& d, int64_t c0, const scalar_t* zeros) {
  return in_range ? base + math::pixel_index(b, y, x, d.H, d.W, d.C) + c0 : zeros;
}

template <typename acc_t>
CornerWeights<acc_t> scaled(CornerWeights<acc_t> w, acc_t s) {
  w.w00 *= s;
  w.w01 *= s;
  w.w10 *= s;
  w.w11 *= s;
  return w;
}

template <typename T>
const T* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr<T>() : nullptr;
}

inline std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

// Cache lines of a corner's channels fetched ahead: the corners are gathers that hardware
// prefetchers cannot predict (the forward waited on them for about 85% of its cycles in
// `perf annotate` at B=8, C=256, G=8 before it prefetched); past this, a channel run is a stream
// they follow.
constexpr int64_t kPrefetchBytes = 256;

// Prefetches the first n channels at p (up to kPrefetchBytes), for writing when kWrite.
template <bool kWrite = false, typename T>
inline void prefetch_channels(const T* p, int64_t n) {
  const int64_t bytes = std::min<int64_t>(n * static_cast<int64_t>(sizeof(T)), kPrefetchBytes);
  for (int64_t off = 0; off < bytes; off += 64) {
    __builtin_prefetch(reinterpret_cast<const char*>(p) + off, kWrite ? 1 : 0);
  }
}

// The rows of value a query row's samples can reach end offset_scale + 1 below it, so the rows
// that the next query row first needs lie this many rows below the current one. A query
// prefetches its column of that row: over one query row, the whole row arrives a row ahead.
// Without it each row's first reads were gathers of 128-byte runs (C / G channels) from
// memory that no hardware prefetcher predicts; the corner prefetch one query ahead is too
// close to hide them.
template <typename acc_t>
int64_t value_rows_ahead(acc_t offset_scale) {
  // Capped before the conversion: any scale past the image prefetches nothing.
  return static_cast<int64_t>(std::min(std::ceil(static_cast<double>(offset_scale)), 1e9)) + 2;
}

// Prefetches value[b, i + rows_ahead, j, :] into the caches, when that row exists.
template <typename scalar_t>
inline void prefetch_value_row_ahead(const scalar_t* value, int64_t b, int64_t i, int64_t j,
                                     int64_t rows_ahead, const Dims& d) {
  if (i + rows_ahead >= d.H) {
    return;
  }
  const char* p =
      reinterpret_cast<const char*>(value + math::pixel_index(b, i + rows_ahead, j, d.H, d.W,
                                                              d.C));
  const int64_t bytes = d.C * static_cast<int64_t>(sizeof(scalar_t));
  for (int64_t off = 0; off < bytes; off += 64) {
    __builtin_prefetch(p + off, 0, 2);
  }
}

// One (query, group)'s sampling point, bilinear weights, and the first of its channels in each
// of the four corner rows of value (a zero stand-in for a corner out of range).
template <typename scalar_t, typename acc_t>
struct GroupCorners {
  SamplePoint<acc_t> p;
  CornerWeights<acc_t> w;
  const scalar_t* v00;
  const scalar_t* v01;
  const scalar_t* v10;
  const scalar_t* v11;
};

// Locates group g of query q (batch item b, row i, column j), prefetching its corners when
// kPrefetchCorners: the backward's query pass locates the next query's groups while it sums
// this one's (measured: 58 -> 48 ms at B=8, one thread). The forward does not: it prefetches
// whole value rows ahead instead (prefetch_value_row_ahead), and the corner prefetches on top
// of that cost it time. `zeros` holds C / G zeros.
template <bool kPrefetchCorners, typename scalar_t, typename acc_t>
inline GroupCorners<scalar_t, acc_t> locate_group_corners(
    const scalar_t* value, const acc_t* offset_tanh, int64_t q, int64_t b, int64_t i, int64_t j,
    int64_t g, const Dims& d, acc_t scale, const scalar_t* zeros) {
  const int64_t qg = q * d.G + g;
  const int64_t c0 = g * d.Cg;
  GroupCorners<scalar_t, acc_t> c;
  c.p = math::make_sample_point_from_tanh<acc_t>(offset_tanh[2 * qg], offset_tanh[2 * qg + 1], i,
                                                 j, d.H, d.W, scale);
  c.w = math::corner_weights(c.p);
  c.v00 = corner_ptr(value, c.p.in00, b, c.p.y0, c.p.x0, d, c0, zeros);
  c.v01 = corner_ptr(value, c.p.in01, b, c.p.y0, c.p.x0 + 1, d, c0, zeros);
  c.v10 = corner_ptr(value, c.p.in10, b, c.p.y0 + 1, c.p.x0, d, c0, zeros);
  c.v11 = corner_ptr(value, c.p.in11, b, c.p.y0 + 1, c.p.x0 + 1, d, c0, zeros);
  if constexpr (kPrefetchCorners) {
    for (const scalar_t* v : {c.v00, c.v01, c.v10, c.v11}) prefetch_channels(v, d.Cg);
  }
  return c;
}

inline void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "deformable_sample (cpu): ", name,
              " must be a CPU tensor, got ", t.device());
}

}  // namespace detail
}  // namespace cpu
}  // namespace stable_sam_ops
