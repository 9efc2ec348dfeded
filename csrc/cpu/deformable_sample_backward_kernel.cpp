// CPU backward of the fused deformable-sampling op (contract: shared/design/deformable_sample.md).
// The layout, and the helpers it shares with the forward, are in deformable_sample_kernel.h.
//
// The backward gathers instead of scattering, so it needs no atomics, no private copies of
// grad_value and no zeroing, and its bits do not depend on the thread count:
//   1. the query pass sums each (query, group) over its channels (grad_offset, grad_amplitude,
//      alpha partials per fixed block of queries), writes grad_residual, and records where
//      each sampling point's corners fall and with what weights;
//   2. a stable counting sort lists, per (batch item, group), the queries of each corner cell;
//   3. the gather pass writes each grad_value pixel once, summing over the queries that sample
//      it in an order fixed by the data (cell, then query index).
// Passes 1 and 3 split queries and value rows, not batch items or channels, so every core
// has work at batch size 1.
#include "deformable_sample.h"
#include "backward_lanes.h"
#include "backward_scratch.h"
#include "deformable_sample_kernel.h"
#include "output_cache.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

namespace stable_sam_ops {
namespace cpu {

using namespace detail;

namespace {

// Queries per block of the query pass. One alpha partial per block, summed in block order,
// so the alpha sums keep one order whatever the thread count.
constexpr int64_t kQueryBlock = 64;
// Value rows per task of the gather pass (any split gives the same bits: no sum crosses
// pixels); small enough that a batch-1 image still gives every core work.
constexpr int64_t kGatherRows = 1;
// How many pixels ahead the gather pass prefetches the grad_out slices it reads first.
constexpr int64_t kGatherPrefetchPixels = 2;
// Sums over one (query, group) that the backward needs: g.dS/dx, g.dS/dy, g.S (for amplitude
// and alpha1) and g.residual (for alpha2).
template <typename acc_t>
struct ChannelSums {
  acc_t gdx, gdy, gs, gres;
};

// One (query, group) of the query pass over its n contiguous channels: writes grad_residual
// and returns the sums, each summed in kLanes fixed lanes and then over the lanes in order.
template <typename scalar_t, typename acc_t, bool kResidualGrad, bool kResidualSum>
ChannelSums<acc_t> query_channel_sums(const scalar_t* go, const scalar_t* v00,
                                      const scalar_t* v01, const scalar_t* v10,
                                      const scalar_t* v11, const scalar_t* res, scalar_t* gres,
                                      const SamplePoint<acc_t>& p, const CornerWeights<acc_t>& w,
                                      acc_t a2, int64_t n) {
  using V = typename LanesOf<acc_t>::type;
  V lx = {}, ly = {}, ls = {}, lr = {};
  for_lane_blocks(n, [&](int64_t c, int m) {
    const V g = load_lanes<acc_t>(go + c, m);
    const V x00 = load_lanes<acc_t>(v00 + c, m), x01 = load_lanes<acc_t>(v01 + c, m);
    const V x10 = load_lanes<acc_t>(v10 + c, m), x11 = load_lanes<acc_t>(v11 + c, m);
    // Lanes past m hold zeros and add nothing.
    lx += g * math::interpolate_dx(p, x00, x01, x10, x11);
    ly += g * math::interpolate_dy(p, x00, x01, x10, x11);
    ls += g * math::interpolate(w, x00, x01, x10, x11);
    if constexpr (kResidualGrad) {
      store_lanes<acc_t>(gres + c, a2 * g, m);
    }
    if constexpr (kResidualSum) {
      lr += g * load_lanes<acc_t>(res + c, m);
    }
  });
  ChannelSums<acc_t> s{acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  for (int l = 0; l < kLanes; ++l) {
    s.gdx += lx[l];
    s.gdy += ly[l];
    s.gs += ls[l];
    s.gres += lr[l];
  }
  return s;
}

// One (query, group) as the gather pass reads it: which query and group, and A times the
// bilinear weight of each of its four corners.
template <typename acc_t>
struct GatherTerm {
  int64_t query;           // pixel index within the batch item
  int64_t group;
  CornerWeights<acc_t> w;  // A * corner weights
};

// What the passes hand each other. A (query, group)'s cell is that of its top-left corner in
// the (H + 1) x (W + 1) grid of corners shifted by one (so that row and column -1 fit), or -1
// when no corner is in range.
template <typename acc_t>
struct GatherPlan {
  int64_t* cell;                  // (B, H, W, G)
  CornerWeights<acc_t>* weights;  // (B, H, W, G)
  // Per batch item, the terms sorted by key = cell * G + group (query order within a key),
  // and each key's first term: one cell's groups are neighbours in memory.
  int64_t* key_start;             // (B, cells * G + 1)
  GatherTerm<acc_t>* terms;       // (B, H * W * G)
  int64_t cells;
};

inline int64_t corner_cell(int64_t y0, int64_t x0, int64_t W) {
  return (y0 + 1) * (W + 1) + (x0 + 1);
}

// Pass 1, over blocks of kQueryBlock queries: everything that is a sum over one query's
// channels (grad_offset, grad_amplitude, and per block the alpha partials), grad_residual,
// and each (query, group)'s cell and weights for the gather pass. Each (query, group) is
// summed whole by one task, so the split of blocks over threads changes no bit.
template <typename scalar_t, bool kResidualGrad, bool kResidualSum>
void backward_query_pass(const scalar_t* grad_out, const scalar_t* value,
                         const at::opmath_type<scalar_t>* offset_tanh, const scalar_t* amplitude,
                         const scalar_t* residual, const scalar_t* alpha,
                         at::opmath_type<scalar_t> scale, const Dims d,
                         const GatherPlan<at::opmath_type<scalar_t>>& plan,
                         scalar_t* grad_offset, scalar_t* grad_amplitude,
                         scalar_t* grad_residual, at::opmath_type<scalar_t>* alpha1_partial,
                         at::opmath_type<scalar_t>* alpha2_partial) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t HW = d.H * d.W;
  const int64_t blocks = (HW + kQueryBlock - 1) / kQueryBlock;
  const std::vector<scalar_t> zeros(d.Cg, scalar_t(0));
  // One (query, group)'s corners and its amplitude.
  struct Sample {
    GroupCorners<scalar_t, acc_t> c;
    acc_t amp;
  };
  // The samples of query q's groups, with their corners prefetched.
  const auto plan_query = [&](int64_t q, Sample* samples) {
    const int64_t b = q / HW;
    const int64_t i = (q % HW) / d.W;
    const int64_t j = q % d.W;
    for (int64_t g = 0; g < d.G; ++g) {
      samples[g].c =
          locate_group_corners<true>(value, offset_tanh, q, b, i, j, g, d, scale, zeros.data());
      samples[g].amp = load_or<acc_t>(amplitude, q * d.G + g, acc_t(1));
    }
  };
  at::parallel_for(0, d.B * blocks, 1, [&](int64_t begin, int64_t end) {
    // Query q's samples are planned while query q - 1 is summed (within a block).
    std::vector<Sample> current(d.G), next(d.G);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks;
      const int64_t ij_begin = (task % blocks) * kQueryBlock;
      const int64_t ij_end = std::min(HW, ij_begin + kQueryBlock);
      const acc_t a1 = load_or<acc_t>(alpha, 2 * b, acc_t(1));
      const acc_t a2 = load_or<acc_t>(alpha, 2 * b + 1, acc_t(1));
      acc_t a1_sum = acc_t(0), a2_sum = acc_t(0);
      plan_query(b * HW + ij_begin, current.data());
      for (int64_t ij = ij_begin; ij < ij_end; ++ij) {
        const int64_t q = b * HW + ij;
        if (ij + 1 < ij_end) {
          plan_query(q + 1, next.data());
        }
        for (int64_t g = 0; g < d.G; ++g) {
          const int64_t qg = q * d.G + g;
          const GroupCorners<scalar_t, acc_t>& c = current[g].c;
          const acc_t amp = current[g].amp;
          const acc_t A = a1 * amp;
          const int64_t c0 = g * d.Cg;
          const ChannelSums<acc_t> sums =
              query_channel_sums<scalar_t, acc_t, kResidualGrad, kResidualSum>(
                  grad_out + q * d.C + c0, c.v00, c.v01, c.v10, c.v11,
                  kResidualSum ? residual + q * d.C + c0 : nullptr,
                  kResidualGrad ? grad_residual + q * d.C + c0 : nullptr, c.p, c.w, a2, d.Cg);
          grad_offset[2 * qg] = static_cast<scalar_t>(A * sums.gdx * c.p.dx_draw);
          grad_offset[2 * qg + 1] = static_cast<scalar_t>(A * sums.gdy * c.p.dy_draw);
          if (grad_amplitude != nullptr) {
            grad_amplitude[qg] = static_cast<scalar_t>(a1 * sums.gs);
          }
          a1_sum += amp * sums.gs;
          a2_sum += sums.gres;
          plan.cell[qg] = c.p.any_in_range() ? corner_cell(c.p.y0, c.p.x0, d.W) : -1;
          plan.weights[qg] = scaled(c.w, A);
        }
        std::swap(current, next);
      }
      alpha1_partial[task] = a1_sum;
      alpha2_partial[task] = a2_sum;
    }
  });
}

// Pass 2: a stable counting sort of each batch item's (query, group) terms by key, so that
// each key lists its queries in index order. Counting and placing run per (batch item,
// group) into a count per (batch item, group, cell), so no two tasks touch one counter; only
// the prefix sum over keys runs per batch item.
template <typename acc_t>
void backward_sort_pass(const Dims d, const GatherPlan<acc_t>& plan, int64_t* count) {
  const int64_t HW = d.H * d.W;
  const int64_t keys = plan.cells * d.G;
  at::parallel_for(0, d.B * d.G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / d.G;
      const int64_t g = bg % d.G;
      int64_t* n = count + bg * plan.cells;
      std::fill(n, n + plan.cells, int64_t(0));
      const int64_t* cell = plan.cell + b * HW * d.G + g;
      for (int64_t ij = 0; ij < HW; ++ij) {
        if (cell[ij * d.G] >= 0) ++n[cell[ij * d.G]];
      }
    }
  });
  // Each key's first term; the counts become the placing cursors.
  at::parallel_for(0, d.B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      int64_t* start = plan.key_start + b * (keys + 1);
      int64_t next = 0;
      for (int64_t c = 0; c < plan.cells; ++c) {
        for (int64_t g = 0; g < d.G; ++g) {
          int64_t& n = count[(b * d.G + g) * plan.cells + c];
          start[c * d.G + g] = next;
          next += n;
          n = start[c * d.G + g];
        }
      }
      start[keys] = next;
    }
  });
  at::parallel_for(0, d.B * d.G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / d.G;
      const int64_t g = bg % d.G;
      int64_t* cursor = count + bg * plan.cells;
      GatherTerm<acc_t>* terms = plan.terms + b * HW * d.G;
      const int64_t* cell = plan.cell + b * HW * d.G + g;
      const CornerWeights<acc_t>* weights = plan.weights + b * HW * d.G + g;
      for (int64_t ij = 0; ij < HW; ++ij) {
        if (cell[ij * d.G] >= 0) {
          terms[cursor[cell[ij * d.G]]++] = GatherTerm<acc_t>{ij, g, weights[ij * d.G]};
        }
      }
    }
  });
}

// Pass 3, over value rows: each grad_value pixel gathers A * w * g from the queries whose
// corners it is and is written once. A channel's terms are summed cell by cell in the order
// of cell_step below, and in query order within a cell. No two tasks write one pixel and no
// sum crosses pixels, so any split over threads gives the same bits, and grad_value needs no
// zeroing. A pixel's keys for one cell are contiguous (all its groups), so the pixel walks
// four runs of terms, whatever the number of groups.
template <typename scalar_t>
void backward_gather_pass(const scalar_t* grad_out, const Dims d,
                          const GatherPlan<at::opmath_type<scalar_t>>& plan,
                          scalar_t* grad_value) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t HW = d.H * d.W;
  const int64_t C = d.C;
  const int64_t Cg = d.Cg;
  const int64_t G = d.G;
  const int64_t row_tasks = (d.H + kGatherRows - 1) / kGatherRows;
  // Pixel (y, x) is corner 11 of the cell whose top-left corner is (y - 1, x - 1), 10 of
  // (y - 1, x), 01 of (y, x - 1) and 00 of (y, x): in the shifted grid, these cells.
  const int64_t cell_step[4] = {0, 1, d.W + 1, d.W + 2};
  const bool streaming = std::is_same_v<scalar_t, float> && C % 8 == 0 &&
                         reinterpret_cast<uintptr_t>(grad_value) % 32 == 0;
  at::parallel_for(0, d.B * row_tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(C);  // one pixel's sums
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / row_tasks;
      const int64_t y_begin = (task % row_tasks) * kGatherRows;
      const int64_t y_end = std::min(d.H, y_begin + kGatherRows);
      const int64_t* start = plan.key_start + b * (plan.cells * G + 1);
      const GatherTerm<acc_t>* terms = plan.terms + b * HW * G;
      const scalar_t* go_b = grad_out + b * HW * C;
      for (int64_t y = y_begin; y < y_end; ++y) {
        for (int64_t x = 0; x < d.W; ++x) {
          const int64_t first = corner_cell(y - 1, x - 1, d.W);
          // Queries are read here for the first time when their top-left corner is (y, x)
          // (cell 3): gathers no prefetcher predicts, so fetch those of a pixel ahead.
          if (x + kGatherPrefetchPixels < d.W) {
            const int64_t ahead = first + cell_step[3] + kGatherPrefetchPixels;
            for (int64_t e = start[ahead * G]; e < start[(ahead + 1) * G]; ++e) {
              prefetch_channels(go_b + terms[e].query * C + terms[e].group * Cg, Cg);
            }
          }
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int k = 0; k < 4; ++k) {
            const int64_t cell = first + cell_step[k];
            for (int64_t e = start[cell * G]; e < start[(cell + 1) * G]; ++e) {
              const GatherTerm<acc_t>& t = terms[e];
              const acc_t f = k == 0 ? t.w.w11 : k == 1 ? t.w.w10 : k == 2 ? t.w.w01 : t.w.w00;
              const scalar_t* src = go_b + t.query * C + t.group * Cg;
              acc_t* a = acc.data() + t.group * Cg;
              for_lane_blocks(Cg, [&](int64_t c, int m) {
                store_lanes<acc_t>(a + c, load_lanes<acc_t>(a + c, m) +
                                              f * load_lanes<acc_t>(src + c, m), m);
              });
            }
          }
          scalar_t* gv = grad_value + (b * HW + y * d.W + x) * C;
#if defined(__AVX2__)
          if constexpr (std::is_same_v<scalar_t, float>) {
            if (streaming) {
              // Written once and not read again here: past the caches, with no line fetched
              // for ownership first.
              for (int64_t c = 0; c < C; c += 8) {
                _mm256_stream_ps(gv + c, _mm256_loadu_ps(acc.data() + c));
              }
              continue;
            }
          }
#endif
          for_lane_blocks(C, [&](int64_t c, int m) {
            store_lanes<acc_t>(gv + c, load_lanes<acc_t>(acc.data() + c, m), m);
          });
        }
      }
    }
#if defined(__AVX2__)
    if (streaming) {
      _mm_sfence();  // the streaming stores are visible before the task ends
    }
#endif
  });
}

template <typename scalar_t>
void deformable_sample_backward_kernel_impl(
    const scalar_t* grad_out, const scalar_t* value,
    const at::opmath_type<scalar_t>* offset_tanh, const scalar_t* amplitude,
    const scalar_t* residual, const scalar_t* alpha, double offset_scale, const Dims d,
    scalar_t* grad_value, scalar_t* grad_offset, scalar_t* grad_amplitude,
    scalar_t* grad_residual, scalar_t* grad_alpha) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t scale = static_cast<acc_t>(offset_scale);
  const int64_t HW = d.H * d.W;
  const int64_t blocks = (HW + kQueryBlock - 1) / kQueryBlock;
  const int64_t qg_count = d.queries() * d.G;
  const int64_t cells = (d.H + 1) * (d.W + 1);
  // Scratch that every pass writes before it reads (left uninitialised), from this thread's
  // workspace.
  ScratchCarver scratch(
      scratch_bytes<int64_t>(qg_count) + scratch_bytes<CornerWeights<acc_t>>(qg_count) +
      scratch_bytes<int64_t>(d.B * (cells * d.G + 1)) +
      scratch_bytes<GatherTerm<acc_t>>(qg_count) + scratch_bytes<int64_t>(d.B * d.G * cells));
  const GatherPlan<acc_t> plan{scratch.take<int64_t>(qg_count),
                               scratch.take<CornerWeights<acc_t>>(qg_count),
                               scratch.take<int64_t>(d.B * (cells * d.G + 1)),
                               scratch.take<GatherTerm<acc_t>>(qg_count), cells};
  int64_t* count = scratch.take<int64_t>(d.B * d.G * cells);
  std::vector<acc_t> alpha1_partial(d.B * blocks);
  std::vector<acc_t> alpha2_partial(d.B * blocks);

  const bool residual_sum = residual != nullptr && alpha != nullptr;
  auto query_pass = [&](auto residual_grad, auto residual_sum_tag) {
    backward_query_pass<scalar_t, decltype(residual_grad)::value,
                        decltype(residual_sum_tag)::value>(
        grad_out, value, offset_tanh, amplitude, residual, alpha, scale, d, plan, grad_offset,
        grad_amplitude, grad_residual, alpha1_partial.data(), alpha2_partial.data());
  };
  if (residual == nullptr) {
    query_pass(std::false_type{}, std::false_type{});
  } else if (!residual_sum) {
    query_pass(std::true_type{}, std::false_type{});
  } else {
    query_pass(std::true_type{}, std::true_type{});
  }
  backward_sort_pass<acc_t>(d, plan, count);
  backward_gather_pass<scalar_t>(grad_out, d, plan, grad_value);
  if (grad_alpha != nullptr) {
    for (int64_t b = 0; b < d.B; ++b) {
      acc_t s1 = acc_t(0), s2 = acc_t(0);
      for (int64_t k = 0; k < blocks; ++k) {
        s1 += alpha1_partial[b * blocks + k];
        s2 += alpha2_partial[b * blocks + k];
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

  // The gather pass writes every element of grad_value once, and the query pass every element
  // of the others: no zeroing.
  at::Tensor grad_value = empty_output(value.sizes(), value.options());
  at::Tensor grad_offset = empty_output(offset.sizes(), offset.options());
  const auto none = [&] { return at::empty({0}, value.options()); };
  at::Tensor grad_amplitude =
      amplitude ? empty_output(amplitude->sizes(), value.options()) : none();
  at::Tensor grad_residual = residual ? empty_output(value.sizes(), value.options()) : none();
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
              grad_value.mutable_data_ptr<scalar_t>(), grad_offset.mutable_data_ptr<scalar_t>(),
              amplitude ? grad_amplitude.mutable_data_ptr<scalar_t>() : nullptr,
              residual ? grad_residual.mutable_data_ptr<scalar_t>() : nullptr,
              alpha ? grad_alpha.mutable_data_ptr<scalar_t>() : nullptr);
        });
  }
  return {grad_value, grad_offset, grad_amplitude, grad_residual, grad_alpha};
}

}  // namespace cpu
}  // namespace stable_sam_ops
