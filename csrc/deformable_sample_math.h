// The sampling arithmetic of the fused deformable-sampling op, shared by the CPU and CUDA
// kernels (and mirrored by the Triton kernel). Everything here is a pure inline function of
// scalars so that the CPU tests, which prove this arithmetic against the grid_sample oracle,
// cover exactly what the CUDA kernel runs. Contract: shared/design/deformable_sample.md.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SSO_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SSO_HOST_DEVICE inline
#endif

namespace stable_sam_ops {
namespace math {

// One bilinear sampling point of one (batch, query, group), in value-pixel coordinates
// (align_corners=True: pixel centres at integers). Corners are named by (row, column)
// offsets from the top-left corner: c00 = (y0, x0), c01 = (y0, x0 + 1), c10 = (y0 + 1, x0),
// c11 = (y0 + 1, x0 + 1).
template <typename acc_t>
struct SamplePoint {
  int64_t y0;
  int64_t x0;
  acc_t wy;        // y - y0, in [0, 1)
  acc_t wx;        // x - x0, in [0, 1)
  acc_t dx_draw;   // d(x) / d(raw x offset) = offset_scale * (1 - tanh^2)
  acc_t dy_draw;   // d(y) / d(raw y offset)
  bool in00, in01, in10, in11;  // each corner tested on its own: zero padding

  SSO_HOST_DEVICE bool any_in_range() const { return in00 || in01 || in10 || in11; }
};

template <typename acc_t>
SSO_HOST_DEVICE acc_t tanh_(acc_t v) {
  return tanh(v);
}

// Builds the sampling point of query pixel (row i, column j) from the tanh of its raw offsets
// (tx = tanh(raw x offset), ty likewise): kernels that vectorise tanh over a whole tensor call
// this directly; make_sample_point below is the scalar entry point.
// A NaN coordinate, or one so far outside that no corner can be in range, yields a point with
// every corner out of range and zero derivatives; this test also keeps the float -> int
// conversion below defined (it is undefined behaviour for NaN and out-of-range values).
template <typename acc_t>
SSO_HOST_DEVICE SamplePoint<acc_t> make_sample_point_from_tanh(
    acc_t tx, acc_t ty, int64_t i, int64_t j, int64_t H, int64_t W, acc_t offset_scale) {
  SamplePoint<acc_t> p;
  const acc_t x = static_cast<acc_t>(j) + offset_scale * tx;
  const acc_t y = static_cast<acc_t>(i) + offset_scale * ty;
  // Written so that NaN fails the test: every comparison with NaN is false.
  const bool finite_and_near = (x >= acc_t(-1)) && (x <= static_cast<acc_t>(W)) &&
                               (y >= acc_t(-1)) && (y <= static_cast<acc_t>(H));
  if (!finite_and_near) {
    p.y0 = -2;
    p.x0 = -2;
    p.wy = acc_t(0);
    p.wx = acc_t(0);
    p.dx_draw = acc_t(0);
    p.dy_draw = acc_t(0);
    p.in00 = p.in01 = p.in10 = p.in11 = false;
    return p;
  }
  const acc_t xf = floor(x);
  const acc_t yf = floor(y);
  p.x0 = static_cast<int64_t>(xf);
  p.y0 = static_cast<int64_t>(yf);
  p.wx = x - xf;
  p.wy = y - yf;
  p.dx_draw = offset_scale * (acc_t(1) - tx * tx);
  p.dy_draw = offset_scale * (acc_t(1) - ty * ty);
  const bool x0_in = p.x0 >= 0 && p.x0 < W;
  const bool x1_in = p.x0 + 1 >= 0 && p.x0 + 1 < W;
  const bool y0_in = p.y0 >= 0 && p.y0 < H;
  const bool y1_in = p.y0 + 1 >= 0 && p.y0 + 1 < H;
  p.in00 = y0_in && x0_in;
  p.in01 = y0_in && x1_in;
  p.in10 = y1_in && x0_in;
  p.in11 = y1_in && x1_in;
  return p;
}

// Builds the sampling point of query pixel (row i, column j) from its raw (pre-tanh) offsets.
template <typename acc_t>
SSO_HOST_DEVICE SamplePoint<acc_t> make_sample_point(
    acc_t raw_dx, acc_t raw_dy, int64_t i, int64_t j, int64_t H, int64_t W,
    acc_t offset_scale) {
  return make_sample_point_from_tanh<acc_t>(tanh_(raw_dx), tanh_(raw_dy), i, j, H, W,
                                            offset_scale);
}

// Bilinear corner weights; a corner out of range gets weight 0, so callers may skip its load
// and pass any finite stand-in (conventionally 0) for its value.
template <typename acc_t>
struct CornerWeights {
  acc_t w00, w01, w10, w11;
};

template <typename acc_t>
SSO_HOST_DEVICE CornerWeights<acc_t> corner_weights(const SamplePoint<acc_t>& p) {
  CornerWeights<acc_t> w;
  const acc_t ux = acc_t(1) - p.wx;
  const acc_t uy = acc_t(1) - p.wy;
  w.w00 = p.in00 ? uy * ux : acc_t(0);
  w.w01 = p.in01 ? uy * p.wx : acc_t(0);
  w.w10 = p.in10 ? p.wy * ux : acc_t(0);
  w.w11 = p.in11 ? p.wy * p.wx : acc_t(0);
  return w;
}

// S = sum of weight * corner value. Corner values of out-of-range corners must be 0.
// val_t is acc_t, or a SIMD vector of acc_t lanes (the CPU kernel's GCC vector types), so that
// vector code runs this same arithmetic.
template <typename acc_t, typename val_t>
SSO_HOST_DEVICE val_t interpolate(const CornerWeights<acc_t>& w, val_t v00, val_t v01,
                                  val_t v10, val_t v11) {
  return w.w00 * v00 + w.w01 * v01 + w.w10 * v10 + w.w11 * v11;
}

// dS/dx and dS/dy with the derivative that floor() gives at integer coordinates (as
// grid_sample's). Corner values of out-of-range corners must be 0.
template <typename acc_t, typename val_t>
SSO_HOST_DEVICE val_t interpolate_dx(const SamplePoint<acc_t>& p, val_t v00, val_t v01,
                                     val_t v10, val_t v11) {
  return (acc_t(1) - p.wy) * (v01 - v00) + p.wy * (v11 - v10);
}

template <typename acc_t, typename val_t>
SSO_HOST_DEVICE val_t interpolate_dy(const SamplePoint<acc_t>& p, val_t v00, val_t v01,
                                     val_t v10, val_t v11) {
  return (acc_t(1) - p.wx) * (v10 - v00) + p.wx * (v11 - v01);
}

// Flat element index of value[b, y, x, c0] in a contiguous (B, H, W, C) tensor.
SSO_HOST_DEVICE int64_t pixel_index(int64_t b, int64_t y, int64_t x, int64_t H, int64_t W,
                                    int64_t C) {
  return ((b * H + y) * W + x) * C;
}

}  // namespace math
}  // namespace stable_sam_ops
