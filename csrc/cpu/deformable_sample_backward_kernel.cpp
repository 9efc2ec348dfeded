// CPU backward of the fused deformable-sampling op (contract: shared/design/deformable_sample.md).
// The layout, and the helpers it shares with the forward, are in deformable_sample_kernel.h.
//
// The backward is deterministic and independent of the thread count. Its tasks are (batch
// item, row band, channel block) triples, run in two phases (even bands, then odd bands): a
// query scatters at most r = ceil(offset_scale) + 2 rows from its own, and bands are at least
// 2r tall, so the tasks of one phase scatter into disjoint grad_value pixels; each pixel gets
// its sums in an order fixed by the shape (even bands, then odd; queries in order in a band).
// The bands and the split of a group's channels into chunks depend on the shape only; how
// many whole chunks one task takes depends on the thread count too, which changes no sum.
#include "deformable_sample.h"
#include "deformable_sample_kernel.h"
#include "huge_pages.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

namespace stable_sam_ops {
namespace cpu {

using namespace detail;

namespace {

// Channel chunks: a task walks the queries of one row band for whole pixels (chunk = C) when
// it can, since whole pixels stream best: on a 2-core EPYC, fp32 C = 256, blocks of 256 / 128 /
// 64 / 32 channels ran the backward in 1.0 / 1.4 / 2.1 / 2.3x the time (slices 1 KiB apart are
// read in pieces that hardware prefetchers do not follow). A group wider than the chunk is cut
// into chunks_per_group chunks, the chunk halved while a phase has fewer than kMinTasks tasks,
// down to kMinChannelBlock; that split fixes the order of the channel sums, so it depends on
// the shape only.
constexpr int64_t kMinTasks = 8;
constexpr int64_t kMinChannelBlock = 128;
// Independent partial sums in the channel reductions: lets the compiler keep them in vector
// registers while the summation order stays the one written here.
constexpr int kLanes = 8;
// Queries per task of the backward's reduction pass (fixes the order of the alpha sums).
constexpr int64_t kQueryBlock = 256;

// How the backward splits its work. Units are (group, chunk) pairs, G * chunks_per_group of
// them per pixel, and every (query, unit) sum is taken whole by one task, so the number of
// units per task (units_per_task, from the thread count) changes no bit of the result.
struct BackwardTasks {
  int64_t bands;             // row bands, each >= 2 * (ceil(offset_scale) + 2) rows tall
  int64_t chunk;             // channels per unit (a whole group when C / G <= chunk)
  int64_t chunks_per_group;  // units per group
  int64_t units;             // G * chunks_per_group
  int64_t units_per_task;
  int64_t unit_tasks;        // tasks across the units of one (batch item, band)

  BackwardTasks(const Dims& d, double offset_scale, int threads) {
    // y = i + offset_scale * tanh(.) stays within offset_scale rows of i; its corners are rows
    // floor(y) and floor(y) + 1. One more row covers the rounding of y. Bands of 2 * rows rows
    // or more: a band then separates the two same-phase bands on either side of it.
    const double rows = std::ceil(offset_scale) + 2.0;
    bands = 4.0 * rows <= static_cast<double>(d.H) ? d.H / (2 * static_cast<int64_t>(rows)) : 1;
    const int64_t per_phase = d.B * ((bands + 1) / 2);
    chunk = d.C;
    while (chunk / 2 >= kMinChannelBlock && per_phase * ((d.C + chunk - 1) / chunk) < kMinTasks) {
      chunk = (chunk + 1) / 2;
    }
    if (d.Cg > chunk) {
      chunks_per_group = (d.Cg + chunk - 1) / chunk;
    } else {
      chunks_per_group = 1;
      chunk = d.Cg;
    }
    units = d.G * chunks_per_group;
    // Whole pixels per task, fewer units while the threads outnumber a phase's tasks.
    units_per_task = units;
    while (units_per_task > 1 && per_phase * ((units + units_per_task - 1) / units_per_task) <
                                     static_cast<int64_t>(threads)) {
      units_per_task = (units_per_task + 1) / 2;
    }
    unit_tasks = (units + units_per_task - 1) / units_per_task;
  }

  int64_t band_begin(int64_t k, int64_t H) const { return k * H / bands; }
};

// Sums over one (query, group, channel block) that the backward needs: g.dS/dx, g.dS/dy, g.S
// (for amplitude and alpha1) and g.residual (for alpha2).
template <typename acc_t>
struct ChannelSums {
  acc_t gdx, gdy, gs, gres;
};

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

// Up to kLanes channels of the backward (m of them, from channel 0 of every pointer): adds
// the channels' terms to the lane sums and scatters A * w * g into the four corners. Always
// inlined, so that the main loop's m == kLanes is a constant and its loads are vector loads.
template <typename scalar_t, typename acc_t, bool kResidualGrad, bool kResidualSum>
__attribute__((always_inline)) inline void backward_lanes(
    const scalar_t* go, const scalar_t* v00, const scalar_t* v01, const scalar_t* v10,
    const scalar_t* v11, acc_t* gv00, acc_t* gv01, acc_t* gv10, acc_t* gv11,
    const scalar_t* res, scalar_t* gres, const SamplePoint<acc_t>& p,
    const CornerWeights<acc_t>& w, const CornerWeights<acc_t>& aw, acc_t a2, int m,
    typename LanesOf<acc_t>::type& lx, typename LanesOf<acc_t>::type& ly,
    typename LanesOf<acc_t>::type& ls, typename LanesOf<acc_t>::type& lr) {
  using V = typename LanesOf<acc_t>::type;
  const V g = load_lanes<acc_t>(go, m);
  const V x00 = load_lanes<acc_t>(v00, m), x01 = load_lanes<acc_t>(v01, m);
  const V x10 = load_lanes<acc_t>(v10, m), x11 = load_lanes<acc_t>(v11, m);
  // Lanes past m hold zeros and add nothing.
  lx += g * math::interpolate_dx(p, x00, x01, x10, x11);
  ly += g * math::interpolate_dy(p, x00, x01, x10, x11);
  ls += g * math::interpolate(w, x00, x01, x10, x11);
  store_lanes<acc_t>(gv00, load_lanes<acc_t>(gv00, m) + aw.w00 * g, m);
  store_lanes<acc_t>(gv01, load_lanes<acc_t>(gv01, m) + aw.w01 * g, m);
  store_lanes<acc_t>(gv10, load_lanes<acc_t>(gv10, m) + aw.w10 * g, m);
  store_lanes<acc_t>(gv11, load_lanes<acc_t>(gv11, m) + aw.w11 * g, m);
  if constexpr (kResidualGrad) {
    store_lanes<acc_t>(gres, a2 * g, m);
  }
  if constexpr (kResidualSum) {
    lr += g * load_lanes<acc_t>(res, m);
  }
}

// One (query, group, channel block) of the backward over n contiguous channels: scatters
// A * w * g into the four corners of grad_value (gv.. point at a task-private scratch for
// corners out of range, so no two of them alias), writes grad_residual and returns the sums,
// each summed in kLanes fixed lanes and then over the lanes in order.
template <typename scalar_t, typename acc_t, bool kResidualGrad, bool kResidualSum>
ChannelSums<acc_t> backward_channels(
    const scalar_t* go, const scalar_t* v00, const scalar_t* v01, const scalar_t* v10,
    const scalar_t* v11, acc_t* gv00, acc_t* gv01, acc_t* gv10, acc_t* gv11,
    const scalar_t* res, scalar_t* gres, const SamplePoint<acc_t>& p,
    const CornerWeights<acc_t> w, acc_t A, acc_t a2, int64_t n) {
  using V = typename LanesOf<acc_t>::type;
  const CornerWeights<acc_t> aw = scaled(w, A);
  V lx = {}, ly = {}, ls = {}, lr = {};
  const auto block = [&](int64_t c, int m) {
    backward_lanes<scalar_t, acc_t, kResidualGrad, kResidualSum>(
        go + c, v00 + c, v01 + c, v10 + c, v11 + c, gv00 + c, gv01 + c, gv10 + c, gv11 + c,
        kResidualSum ? res + c : nullptr, kResidualGrad ? gres + c : nullptr, p, w, aw, a2, m,
        lx, ly, ls, lr);
  };
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
    block(c, kLanes);  // a constant m: the vector loads
  }
  if (c < n) {
    block(c, static_cast<int>(n - c));
  }
  ChannelSums<acc_t> s{acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  for (int l = 0; l < kLanes; ++l) {
    s.gdx += lx[l];
    s.gdy += ly[l];
    s.gs += ls[l];
    s.gres += lr[l];
  }
  return s;
}

// Pass 1 of the backward, one phase (the bands k with k % 2 == phase): task (b, band, units)
// walks the band's queries of batch item b for its units, scattering into grad_value; per
// (query, unit) sums go to `partial` (3 per entry: gdx, gdy, gs) and each unit's g.residual
// sum over the band to alpha2_partial[b, band, unit].
template <typename scalar_t, bool kResidualGrad, bool kResidualSum>
void backward_scatter_phase(
    const scalar_t* grad_out, const scalar_t* value,
    const at::opmath_type<scalar_t>* offset_tanh, const scalar_t* amplitude,
    const scalar_t* residual, const scalar_t* alpha, at::opmath_type<scalar_t> scale,
    const Dims d, const BackwardTasks tasks, int64_t phase,
    at::opmath_type<scalar_t>* grad_value, scalar_t* grad_residual,
    at::opmath_type<scalar_t>* partial, at::opmath_type<scalar_t>* alpha2_partial) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t phase_bands = (tasks.bands - phase + 1) / 2;
  const std::vector<scalar_t> zeros(d.Cg, scalar_t(0));
  at::parallel_for(0, d.B * phase_bands * tasks.unit_tasks, 1, [&](int64_t begin, int64_t end) {
    // Where out-of-range corners dump their (zero) gradient: 4 disjoint blocks.
    std::vector<acc_t> scratch(4 * d.Cg, acc_t(0));
    std::vector<acc_t> gres_sums(tasks.units_per_task);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (phase_bands * tasks.unit_tasks);
      const int64_t k = 2 * (task / tasks.unit_tasks % phase_bands) + phase;
      const int64_t u_begin = task % tasks.unit_tasks * tasks.units_per_task;
      const int64_t u_end = std::min(tasks.units, u_begin + tasks.units_per_task);
      const acc_t a1 = load_or<acc_t>(alpha, 2 * b, acc_t(1));
      const acc_t a2 = load_or<acc_t>(alpha, 2 * b + 1, acc_t(1));
      std::fill(gres_sums.begin(), gres_sums.end(), acc_t(0));
      const int64_t ij_end = tasks.band_begin(k + 1, d.H) * d.W;
      for (int64_t ij = tasks.band_begin(k, d.H) * d.W; ij < ij_end; ++ij) {
        const int64_t q = b * d.H * d.W + ij;
        const int64_t i = ij / d.W;
        const int64_t j = ij % d.W;
        for (int64_t u = u_begin; u < u_end; ++u) {
          const int64_t g = u / tasks.chunks_per_group;
          const int64_t chunk = u % tasks.chunks_per_group;
          const int64_t cs = chunk * tasks.chunk;
          const int64_t qg = q * d.G + g;
          const SamplePoint<acc_t> p = math::make_sample_point_from_tanh<acc_t>(
              offset_tanh[2 * qg], offset_tanh[2 * qg + 1], i, j, d.H, d.W, scale);
          const CornerWeights<acc_t> w = math::corner_weights(p);
          const acc_t A = a1 * load_or<acc_t>(amplitude, qg, acc_t(1));
          const int64_t c0 = g * d.Cg + cs;
          const scalar_t* z = zeros.data();
          const auto gv = [&](bool in, int64_t y, int64_t x, int corner) {
            return in ? grad_value + math::pixel_index(b, y, x, d.H, d.W, d.C) + c0
                      : scratch.data() + corner * d.Cg;
          };
          const ChannelSums<acc_t> s =
              backward_channels<scalar_t, acc_t, kResidualGrad, kResidualSum>(
                  grad_out + q * d.C + c0,
                  corner_ptr(value, p.in00, b, p.y0, p.x0, d, c0, z),
                  corner_ptr(value, p.in01, b, p.y0, p.x0 + 1, d, c0, z),
                  corner_ptr(value, p.in10, b, p.y0 + 1, p.x0, d, c0, z),
                  corner_ptr(value, p.in11, b, p.y0 + 1, p.x0 + 1, d, c0, z),
                  gv(p.in00, p.y0, p.x0, 0), gv(p.in01, p.y0, p.x0 + 1, 1),
                  gv(p.in10, p.y0 + 1, p.x0, 2), gv(p.in11, p.y0 + 1, p.x0 + 1, 3),
                  kResidualSum ? residual + q * d.C + c0 : nullptr,
                  kResidualGrad ? grad_residual + q * d.C + c0 : nullptr, p, w, A, a2,
                  std::min(d.Cg, cs + tasks.chunk) - cs);
          acc_t* part = partial + 3 * (qg * tasks.chunks_per_group + chunk);
          part[0] = s.gdx;
          part[1] = s.gdy;
          part[2] = s.gs;
          gres_sums[u - u_begin] += s.gres;
        }
      }
      for (int64_t u = u_begin; u < u_end; ++u) {
        alpha2_partial[(b * tasks.bands + k) * tasks.units + u] = gres_sums[u - u_begin];
      }
    }
  });
}

// Pass 2: per (query, group), sums the chunks' partials in chunk order into grad_offset and
// grad_amplitude; per (b, query block), the alpha1 partial sums.
template <typename scalar_t>
void backward_reduce_pass(const at::opmath_type<scalar_t>* offset_tanh, const scalar_t* amplitude,
                          const scalar_t* alpha, at::opmath_type<scalar_t> scale, const Dims d,
                          const BackwardTasks tasks, const at::opmath_type<scalar_t>* partial,
                          scalar_t* grad_offset, scalar_t* grad_amplitude,
                          at::opmath_type<scalar_t>* alpha1_partial) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t HW = d.H * d.W;
  const int64_t blocks = (HW + kQueryBlock - 1) / kQueryBlock;
  at::parallel_for(0, d.B * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks;
      const int64_t ij_end = std::min(HW, (task % blocks + 1) * kQueryBlock);
      const acc_t a1 = load_or<acc_t>(alpha, 2 * b, acc_t(1));
      acc_t a1_sum = acc_t(0);
      for (int64_t ij = (task % blocks) * kQueryBlock; ij < ij_end; ++ij) {
        const int64_t q = b * HW + ij;
        for (int64_t g = 0; g < d.G; ++g) {
          const int64_t qg = q * d.G + g;
          acc_t gdx = acc_t(0), gdy = acc_t(0), gs = acc_t(0);
          for (int64_t k = 0; k < tasks.chunks_per_group; ++k) {
            const acc_t* part = partial + 3 * (qg * tasks.chunks_per_group + k);
            gdx += part[0];
            gdy += part[1];
            gs += part[2];
          }
          const SamplePoint<acc_t> p = math::make_sample_point_from_tanh<acc_t>(
              offset_tanh[2 * qg], offset_tanh[2 * qg + 1],
              ij / d.W, ij % d.W, d.H, d.W, scale);
          const acc_t amp = load_or<acc_t>(amplitude, qg, acc_t(1));
          const acc_t A = a1 * amp;
          grad_offset[2 * qg] = static_cast<scalar_t>(A * gdx * p.dx_draw);
          grad_offset[2 * qg + 1] = static_cast<scalar_t>(A * gdy * p.dy_draw);
          if (grad_amplitude != nullptr) {
            grad_amplitude[qg] = static_cast<scalar_t>(a1 * gs);
          }
          a1_sum += amp * gs;
        }
      }
      alpha1_partial[task] = a1_sum;
    }
  });
}

template <typename scalar_t>
void deformable_sample_backward_kernel_impl(
    const scalar_t* grad_out, const scalar_t* value,
    const at::opmath_type<scalar_t>* offset_tanh, const scalar_t* amplitude,
    const scalar_t* residual, const scalar_t* alpha, double offset_scale, const Dims d,
    at::opmath_type<scalar_t>* grad_value,
    scalar_t* grad_offset, scalar_t* grad_amplitude, scalar_t* grad_residual,
    scalar_t* grad_alpha) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t scale = static_cast<acc_t>(offset_scale);
  const BackwardTasks tasks(d, static_cast<double>(scale), at::get_num_threads());
  const int64_t blocks = (d.H * d.W + kQueryBlock - 1) / kQueryBlock;
  std::vector<acc_t> partial(3 * d.queries() * d.G * tasks.chunks_per_group);
  std::vector<acc_t> alpha2_partial(d.B * tasks.bands * tasks.units);
  std::vector<acc_t> alpha1_partial(d.B * blocks);

  const bool residual_sum = residual != nullptr && alpha != nullptr;
  auto scatter = [&](auto residual_grad, auto residual_sum_tag) {
    for (int64_t phase = 0; phase < 2; ++phase) {
      backward_scatter_phase<scalar_t, decltype(residual_grad)::value,
                             decltype(residual_sum_tag)::value>(
          grad_out, value, offset_tanh, amplitude, residual, alpha, scale, d, tasks, phase,
          grad_value, grad_residual, partial.data(), alpha2_partial.data());
    }
  };
  if (residual == nullptr) {
    scatter(std::false_type{}, std::false_type{});
  } else if (!residual_sum) {
    scatter(std::true_type{}, std::false_type{});
  } else {
    scatter(std::true_type{}, std::true_type{});
  }
  backward_reduce_pass<scalar_t>(offset_tanh, amplitude, alpha, scale, d, tasks, partial.data(),
                                 grad_offset, grad_amplitude, alpha1_partial.data());
  if (grad_alpha != nullptr) {
    for (int64_t b = 0; b < d.B; ++b) {
      acc_t s1 = acc_t(0), s2 = acc_t(0);
      for (int64_t k = 0; k < blocks; ++k) s1 += alpha1_partial[b * blocks + k];
      for (int64_t k = 0; k < tasks.bands * tasks.units; ++k) {
        s2 += alpha2_partial[b * tasks.bands * tasks.units + k];
      }
      grad_alpha[2 * b] = static_cast<scalar_t>(s1);
      grad_alpha[2 * b + 1] = static_cast<scalar_t>(s2);
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
deformable_sample_backward_kernel(
    const at::Tensor& grad_out_, const at::Tensor& value_, const at::Tensor& offset_,
    const std::optional<at::Tensor>& amplitude_, const std::optional<at::Tensor>& residual_,
    const std::optional<at::Tensor>& alpha_, double offset_scale) {
  check_deformable_sample_inputs(value_, offset_, amplitude_, residual_, alpha_, offset_scale);
  check_cpu(value_, "value");
  TORCH_CHECK(grad_out_.sizes() == value_.sizes(),
              "deformable_sample backward: grad_out must have the shape of value ",
              value_.sizes(), ", got ", grad_out_.sizes());
  TORCH_CHECK(grad_out_.scalar_type() == value_.scalar_type() &&
                  grad_out_.device() == value_.device(),
              "deformable_sample backward: grad_out must have the dtype and device of value (",
              value_.scalar_type(), ", ", value_.device(), "), got ", grad_out_.scalar_type(),
              ", ", grad_out_.device());
  const at::Tensor grad_out = grad_out_.contiguous();
  const at::Tensor value = value_.contiguous();
  const at::Tensor offset = offset_.contiguous();
  const auto amplitude = contiguous(amplitude_);
  const auto residual = contiguous(residual_);
  const auto alpha = contiguous(alpha_);

  const auto acc_dtype = at::toOpMathType(value.scalar_type());
  // Scattered sums accumulate in opmath precision: several queries add into one value pixel.
  at::Tensor grad_value_acc = at::empty(value.sizes(), value.options().dtype(acc_dtype));
  advise_huge_pages(grad_value_acc);
  grad_value_acc.zero_();
  // The kernel writes every element of these (no zeroing needed).
  at::Tensor grad_offset = at::empty(offset.sizes(), offset.options());
  const auto none = [&] { return at::empty({0}, value.options()); };
  at::Tensor grad_amplitude = amplitude ? at::empty(amplitude->sizes(), value.options()) : none();
  at::Tensor grad_residual = residual ? at::empty(value.sizes(), value.options()) : none();
  advise_huge_pages(grad_residual);
  at::Tensor grad_alpha = alpha ? at::empty(alpha->sizes(), value.options()) : none();
  if (value.numel() > 0) {
    const Dims d = dims_of(value, offset);
    const at::Tensor offset_tanh = offset_tanh_of(offset);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, value.scalar_type(), "deformable_sample_backward_cpu", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          deformable_sample_backward_kernel_impl<scalar_t>(
              grad_out.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(),
              offset_tanh.const_data_ptr<acc_t>(), data_or_null<scalar_t>(amplitude),
              data_or_null<scalar_t>(residual), data_or_null<scalar_t>(alpha), offset_scale, d,
              grad_value_acc.mutable_data_ptr<acc_t>(), grad_offset.mutable_data_ptr<scalar_t>(),
              amplitude ? grad_amplitude.mutable_data_ptr<scalar_t>() : nullptr,
              residual ? grad_residual.mutable_data_ptr<scalar_t>() : nullptr,
              alpha ? grad_alpha.mutable_data_ptr<scalar_t>() : nullptr);
        });
  }
  at::Tensor grad_value = grad_value_acc.scalar_type() == value.scalar_type()
                              ? grad_value_acc
                              : grad_value_acc.to(value.scalar_type());
  return {grad_value, grad_offset, grad_amplitude, grad_residual, grad_alpha};
}

}  // namespace cpu
}  // namespace stable_sam_ops
