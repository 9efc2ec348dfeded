// CPU backward of the fused deformable-sampling op (contract: shared/design/deformable_sample.md).
// The layout, and the helpers it shares with the forward, are in deformable_sample_kernel.h.
//
// The backward is deterministic and independent of the thread count: its tasks are fixed
// (batch, channel block) pairs, each task owns the grad_value channels it scatters into, and
// every sum is taken in an order fixed by the code, never by the scheduling.
#include "deformable_sample.h"
#include "deformable_sample_kernel.h"
#include "huge_pages.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

namespace stable_sam_ops {
namespace cpu {

using namespace detail;

namespace {

// The backward's tasks walk all queries of one batch item over a block of channels. Whole
// pixels (block = C) stream best: on a 2-core EPYC, fp32 C = 256, blocks of 256 / 128 / 64 / 32
// channels ran the backward in 1.0 / 1.4 / 2.1 / 2.3x the time (slices 1 KiB apart are read
// in pieces that hardware prefetchers do not follow). So the block is C, halved only while
// there are fewer than kMinTasks tasks, down to kMinChannelBlock. It depends on the shape only,
// never on the thread count, so the backward's sums (and bits) do not either.
constexpr int64_t kMinTasks = 8;
constexpr int64_t kMinChannelBlock = 128;
// Independent partial sums in the channel reductions: lets the compiler keep them in vector
// registers while the summation order stays the one written here.
constexpr int kLanes = 8;
// Queries per task of the backward's reduction pass (fixes the order of the alpha sums).
constexpr int64_t kQueryBlock = 256;

// How the backward splits the channels of one batch item into tasks of `block` channels:
// either one group cut into `chunks_per_group` blocks (C / G >= block), or `groups_per_task`
// whole groups.
struct ChannelTasks {
  int64_t block;
  int64_t chunks_per_group;
  int64_t groups_per_task;
  int64_t per_batch;

  explicit ChannelTasks(const Dims& d) {
    block = d.C;
    while (block / 2 >= kMinChannelBlock && d.B * ((d.C + block - 1) / block) < kMinTasks) {
      block = (block + 1) / 2;
    }
    if (d.Cg >= block) {
      chunks_per_group = (d.Cg + block - 1) / block;
      groups_per_task = 1;
      per_batch = d.G * chunks_per_group;
    } else {
      chunks_per_group = 1;
      groups_per_task = std::max<int64_t>(1, block / d.Cg);
      per_batch = (d.G + groups_per_task - 1) / groups_per_task;
    }
  }
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

// Pass 1 of the backward: task (b, t) walks every query of batch item b for its channel block,
// scattering into the grad_value channels it owns; per (query, group, chunk) sums go to
// `partial` (3 per entry: gdx, gdy, gs) and its g.residual sum to alpha2_partial[b, t].
template <typename scalar_t, bool kResidualGrad, bool kResidualSum>
void backward_scatter_pass(
    const scalar_t* grad_out, const scalar_t* value,
    const at::opmath_type<scalar_t>* offset_tanh, const scalar_t* amplitude,
    const scalar_t* residual, const scalar_t* alpha, at::opmath_type<scalar_t> scale, const Dims d, const ChannelTasks tasks,
    at::opmath_type<scalar_t>* grad_value, scalar_t* grad_residual,
    at::opmath_type<scalar_t>* partial, at::opmath_type<scalar_t>* alpha2_partial) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t HW = d.H * d.W;
  const std::vector<scalar_t> zeros(d.Cg, scalar_t(0));
  at::parallel_for(0, d.B * tasks.per_batch, 1, [&](int64_t begin, int64_t end) {
    // Where out-of-range corners dump their (zero) gradient: 4 disjoint blocks.
    std::vector<acc_t> scratch(4 * d.Cg, acc_t(0));
    const int64_t sstride = d.Cg;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tasks.per_batch;
      const int64_t t = task % tasks.per_batch;
      int64_t g_begin, g_end, chunk, cs, ce;  // groups, and channels within each group
      if (d.Cg >= tasks.block) {
        g_begin = t / tasks.chunks_per_group;
        g_end = g_begin + 1;
        chunk = t % tasks.chunks_per_group;
        cs = chunk * tasks.block;
        ce = std::min(d.Cg, cs + tasks.block);
      } else {
        g_begin = t * tasks.groups_per_task;
        g_end = std::min(d.G, g_begin + tasks.groups_per_task);
        chunk = 0;
        cs = 0;
        ce = d.Cg;
      }
      const int64_t n = ce - cs;
      const acc_t a1 = load_or<acc_t>(alpha, 2 * b, acc_t(1));
      const acc_t a2 = load_or<acc_t>(alpha, 2 * b + 1, acc_t(1));
      acc_t gres_sum = acc_t(0);
      for (int64_t ij = 0; ij < HW; ++ij) {
        const int64_t q = b * HW + ij;
        const int64_t i = ij / d.W;
        const int64_t j = ij % d.W;
        for (int64_t g = g_begin; g < g_end; ++g) {
          const int64_t qg = q * d.G + g;
          const SamplePoint<acc_t> p = math::make_sample_point_from_tanh<acc_t>(
              offset_tanh[2 * qg], offset_tanh[2 * qg + 1], i, j,
              d.H, d.W, scale);
          const CornerWeights<acc_t> w = math::corner_weights(p);
          const acc_t A = a1 * load_or<acc_t>(amplitude, qg, acc_t(1));
          const int64_t c0 = g * d.Cg + cs;
          const scalar_t* z = zeros.data();
          const auto gv = [&](bool in, int64_t y, int64_t x, int k) {
            return in ? grad_value + math::pixel_index(b, y, x, d.H, d.W, d.C) + c0
                      : scratch.data() + k * sstride;
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
                  kResidualGrad ? grad_residual + q * d.C + c0 : nullptr, p, w, A, a2, n);
          acc_t* part = partial + 3 * (qg * tasks.chunks_per_group + chunk);
          part[0] = s.gdx;
          part[1] = s.gdy;
          part[2] = s.gs;
          gres_sum += s.gres;
        }
      }
      alpha2_partial[task] = gres_sum;
    }
  });
}

// Pass 2: per (query, group), sums the chunks' partials in chunk order into grad_offset and
// grad_amplitude; per (b, query block), the alpha1 partial sums.
template <typename scalar_t>
void backward_reduce_pass(const at::opmath_type<scalar_t>* offset_tanh, const scalar_t* amplitude,
                          const scalar_t* alpha, at::opmath_type<scalar_t> scale, const Dims d,
                          const ChannelTasks tasks, const at::opmath_type<scalar_t>* partial,
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
  const ChannelTasks tasks(d);
  const int64_t blocks = (d.H * d.W + kQueryBlock - 1) / kQueryBlock;
  std::vector<acc_t> partial(3 * d.queries() * d.G * tasks.chunks_per_group);
  std::vector<acc_t> alpha2_partial(d.B * tasks.per_batch);
  std::vector<acc_t> alpha1_partial(d.B * blocks);

  const bool residual_sum = residual != nullptr && alpha != nullptr;
  auto scatter = [&](auto residual_grad, auto residual_sum_tag) {
    backward_scatter_pass<scalar_t, decltype(residual_grad)::value,
                          decltype(residual_sum_tag)::value>(
        grad_out, value, offset_tanh, amplitude, residual, alpha, scale, d, tasks, grad_value,
        grad_residual, partial.data(), alpha2_partial.data());
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
      for (int64_t k = 0; k < tasks.per_batch; ++k) s2 += alpha2_partial[b * tasks.per_batch + k];
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
