// Fixed-order SIMD lanes of the CPU backward (deformable_sample_backward_kernel.cpp): its channel
// sums run in kLanes independent partial sums, so their bits do not depend on how the compiler
// vectorises or on the thread count.
#pragma once

#include <cstdint>
#include <type_traits>

namespace stable_sam_ops {
namespace cpu {
namespace detail {

// Independent partial sums in the channel reductions: lets the compiler keep them in vector
// registers while the summation order stays the one written here.
constexpr int kLanes = 8;

// kLanes channels as one GCC vector (explicit SIMD: SSE registers on any x86-64, wider ones
// when the compiler may use them); the summation order of the lanes stays the one written here.
template <typename acc_t>
struct LanesOf;
template <>
struct LanesOf<float> {
  typedef float type __attribute__((vector_size(kLanes * sizeof(float))));
};
template <>
struct LanesOf<double> {
  typedef double type __attribute__((vector_size(kLanes * sizeof(double))));
};

// Loads m <= kLanes channels (the lanes past m are 0); a plain vector load when m == kLanes
// and no conversion is needed.
template <typename acc_t, typename scalar_t>
__attribute__((always_inline)) inline typename LanesOf<acc_t>::type load_lanes(
    const scalar_t* p, int m) {
  typename LanesOf<acc_t>::type v = {};
  if (std::is_same_v<scalar_t, acc_t> && m == kLanes) {
    __builtin_memcpy(&v, p, sizeof(v));
  } else {
    for (int l = 0; l < m; ++l) v[l] = static_cast<acc_t>(p[l]);
  }
  return v;
}

template <typename acc_t, typename scalar_t>
__attribute__((always_inline)) inline void store_lanes(scalar_t* p,
                                                       typename LanesOf<acc_t>::type v, int m) {
  if (std::is_same_v<scalar_t, acc_t> && m == kLanes) {
    __builtin_memcpy(p, &v, sizeof(v));
  } else {
    for (int l = 0; l < m; ++l) p[l] = static_cast<scalar_t>(v[l]);
  }
}

// Runs f(c, m) over n channels in blocks of m = kLanes, then the tail; the main loop's m is a
// constant, so the always-inlined lane helpers compile to vector loads there.
template <typename F>
__attribute__((always_inline)) inline void for_lane_blocks(int64_t n, F&& f) {
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
    f(c, kLanes);
  }
  if (c < n) {
    f(c, static_cast<int>(n - c));
  }
}

}  // namespace detail
}  // namespace cpu
}  // namespace stable_sam_ops
