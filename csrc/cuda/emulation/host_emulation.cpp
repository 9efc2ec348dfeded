// Runs the CUDA kernels of deformable_sample_kernel.cuh on the CPU by emulating the parts of
// the CUDA execution model they use: block/thread indices, grid-stride launches, float atomics
// and warp shuffles (each warp's 32 lanes are 32 OS threads meeting at a barrier per shuffle).
// Test-only (tests/stable_sam_ops/test_cuda_kernel_emulated.py builds it; setup.py does not):
// it checks the kernels' indexing, packed and scalar paths, 32- and 64-bit indices, lane
// segments and the deterministic gather where no GPU exists. It cannot check what only
// hardware shows (memory-model races, misaligned-access faults, timing).
#include <torch/extension.h>

#include <atomic>
#include <barrier>
#include <cstdint>
#include <limits>
#include <optional>
#include <thread>
#include <tuple>
#include <vector>

// ---- The CUDA execution model, emulated ----------------------------------------------------
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct uint4 {
  unsigned x, y, z, w;
};
inline void __stwb(uint4* p, uint4 v) { *p = v; }

struct EmulatedDim3 {
  unsigned x = 0, y = 1, z = 1;
};
thread_local EmulatedDim3 threadIdx;
thread_local EmulatedDim3 blockIdx;
EmulatedDim3 blockDim;  // set per launch; launches run one at a time
EmulatedDim3 gridDim;

namespace {

constexpr int kWarpSize = 32;

struct EmulatedWarp {
  std::barrier<> meet{kWarpSize};
  double slots[kWarpSize];
};
thread_local EmulatedWarp* current_warp = nullptr;
thread_local int current_lane = 0;

}  // namespace

template <typename T>
T atomicAdd(T* address, T v) {
  return std::atomic_ref<T>(*address).fetch_add(v);
}

// Every lane of the warp must call this the same number of times, as on the GPU (a lane that
// returned early has dropped out of the barrier, so the others read a stale slot and the
// results go wrong instead of hanging).
template <typename T>
T __shfl_xor_sync(unsigned /*mask*/, T v, int lane_mask, int /*width*/) {
  EmulatedWarp& w = *current_warp;
  w.slots[current_lane] = static_cast<double>(v);  // float and double are exact in double
  w.meet.arrive_and_wait();
  const T r = static_cast<T>(w.slots[current_lane ^ lane_mask]);
  w.meet.arrive_and_wait();
  return r;
}

#include "cuda/deformable_sample_kernel.cuh"

namespace {

using namespace stable_sam_ops::cuda_detail;

// The launchers' block size and grid (blocks_for), with max_blocks in place of kMaxBlocks.
template <typename Kernel, typename... Args>
void emulate_launch(int64_t n_threads, int64_t max_blocks, Kernel kernel, Args... args) {
  const int64_t blocks = blocks_for(n_threads, max_blocks);
  gridDim.x = static_cast<unsigned>(blocks);
  blockDim.x = kThreadsPerBlock;
  for (int64_t b = 0; b < blocks; ++b) {
    for (int warp_start = 0; warp_start < kThreadsPerBlock; warp_start += kWarpSize) {
      EmulatedWarp warp;
      std::vector<std::thread> lanes;
      for (int lane = 0; lane < kWarpSize; ++lane) {
        lanes.emplace_back([&, lane] {
          current_warp = &warp;
          current_lane = lane;
          blockIdx.x = static_cast<unsigned>(b);
          threadIdx.x = static_cast<unsigned>(warp_start + lane);
          kernel(args...);
          warp.meet.arrive_and_drop();
        });
      }
      for (auto& t : lanes) t.join();
    }
  }
}

template <typename scalar_t>
const scalar_t* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr<scalar_t>() : nullptr;
}

std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

// The launchers' choices that depend on pointers or sizes beyond a test's reach are explicit
// arguments here, so tests cover every combination: vectorize (16-byte packs), index64 (64-bit
// indices; the launchers take plan_backward_query's / fits_int32's answer, which
// launch_plan below exposes), max_blocks (a small cap forces the grid-stride loops to wrap).
// Everything else follows the launchers: block size, lanes per group, allocation of outputs.
at::Tensor forward(at::Tensor value, at::Tensor offset, std::optional<at::Tensor> amplitude,
                   std::optional<at::Tensor> residual, std::optional<at::Tensor> alpha,
                   double offset_scale, bool vectorize, bool index64, int64_t max_blocks) {
  value = value.contiguous();
  offset = offset.contiguous();
  amplitude = contiguous(amplitude);
  residual = contiguous(residual);
  alpha = contiguous(alpha);
  at::Tensor out = at::empty_like(value);
  const int64_t H = value.size(1), W = value.size(2), C = value.size(3), G = offset.size(3);
  const int64_t n_qg = value.size(0) * H * W * G;
  if (n_qg == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "emu_fwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int VEC = 16 / sizeof(scalar_t);
    auto run = [&](auto vec_tag, auto index_tag) {
      constexpr int V = decltype(vec_tag)::value;
      using index_t = typename decltype(index_tag)::type;
      TORCH_CHECK((C / G) % V == 0, "emulation: Cg must be a multiple of the pack");
      const int64_t n = n_qg * (C / G / V);
      emulate_launch(n, max_blocks, deformable_sample_forward_kernel_impl<scalar_t, V, index_t>,
                     static_cast<index_t>(n), value.const_data_ptr<scalar_t>(),
                     offset.const_data_ptr<scalar_t>(), ptr_or_null<scalar_t>(amplitude),
                     ptr_or_null<scalar_t>(residual), ptr_or_null<scalar_t>(alpha),
                     out.mutable_data_ptr<scalar_t>(), static_cast<index_t>(H),
                     static_cast<index_t>(W), static_cast<index_t>(C), static_cast<index_t>(G),
                     static_cast<acc_t>(offset_scale));
    };
    using VV = std::integral_constant<int, VEC>;
    using V1 = std::integral_constant<int, 1>;
    using I32 = std::type_identity<int32_t>;
    using I64 = std::type_identity<int64_t>;
    if (vectorize && index64) run(VV{}, I64{});
    else if (vectorize) run(VV{}, I32{});
    else if (index64) run(V1{}, I64{});
    else run(V1{}, I32{});
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    at::Tensor grad_out, at::Tensor value, at::Tensor offset, std::optional<at::Tensor> amplitude,
    std::optional<at::Tensor> residual, std::optional<at::Tensor> alpha, double offset_scale,
    bool deterministic, bool vectorize, bool index64, int64_t max_blocks) {
  grad_out = grad_out.contiguous();
  value = value.contiguous();
  offset = offset.contiguous();
  amplitude = contiguous(amplitude);
  residual = contiguous(residual);
  alpha = contiguous(alpha);
  const int64_t B = value.size(0), H = value.size(1), W = value.size(2), C = value.size(3),
                G = offset.size(3);
  const int64_t n_qg = B * H * W * G;
  const auto acc_dtype = value.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (n_qg == 0) {
    return {at::zeros_like(value), at::empty_like(offset),
            amplitude ? at::empty_like(*amplitude) : value.new_empty({0}),
            residual ? at::empty_like(*residual) : value.new_empty({0}),
            alpha ? at::zeros_like(*alpha) : value.new_empty({0})};
  }
  // The launcher's empty_like outputs hold whatever the GPU allocator hands back; NaN here (and
  // a plausible corner (0, 0) with NaN coefficients in the sample cache) makes any element a
  // kernel leaves unwritten show in the result instead of passing as 0.
  const double nan = std::numeric_limits<double>::quiet_NaN();
  at::Tensor grad_value_acc;
  at::Tensor grad_value;
  at::Tensor sample_corner, sample_coef;
  if (deterministic) {
    grad_value = at::full_like(value, nan);
    sample_corner = at::zeros({n_qg, 2}, value.options().dtype(at::kInt));
    sample_coef = at::full({n_qg, 4}, nan, value.options().dtype(acc_dtype));
  } else {
    grad_value_acc = at::zeros(value.sizes(), value.options().dtype(acc_dtype));
  }
  at::Tensor grad_offset = at::full_like(offset, nan);
  at::Tensor grad_amplitude = amplitude ? at::full_like(*amplitude, nan) : value.new_empty({0});
  at::Tensor grad_residual = residual ? at::full_like(*residual, nan) : value.new_empty({0});
  at::Tensor alpha_partials = at::full({B, H * W * G, 2}, nan, value.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "emu_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int VEC = 16 / sizeof(scalar_t);
    auto run = [&](auto vec_tag, auto index_tag) {
      constexpr int V = decltype(vec_tag)::value;
      using index_t = typename decltype(index_tag)::type;
      TORCH_CHECK((C / G) % V == 0, "emulation: Cg must be a multiple of the pack");
      const int64_t n_vec = C / G / V;
      const auto plan = plan_backward_query(n_qg, n_vec, value.numel(), offset.numel());
      emulate_launch(
          plan.n_threads, max_blocks,
          deformable_sample_backward_query_kernel_impl<scalar_t, V, index_t>,
          static_cast<index_t>(plan.n_threads), plan.lanes_log2,
          grad_out.const_data_ptr<scalar_t>(),
          value.const_data_ptr<scalar_t>(), offset.const_data_ptr<scalar_t>(),
          ptr_or_null<scalar_t>(amplitude), ptr_or_null<scalar_t>(residual),
          ptr_or_null<scalar_t>(alpha),
          deterministic ? static_cast<acc_t*>(nullptr) : grad_value_acc.mutable_data_ptr<acc_t>(),
          grad_offset.mutable_data_ptr<scalar_t>(),
          amplitude ? grad_amplitude.mutable_data_ptr<scalar_t>() : nullptr,
          residual ? grad_residual.mutable_data_ptr<scalar_t>() : nullptr,
          alpha ? alpha_partials.mutable_data_ptr<acc_t>() : nullptr,
          SampleCache<acc_t>{deterministic ? sample_corner.mutable_data_ptr<int32_t>() : nullptr,
                             deterministic ? sample_coef.mutable_data_ptr<acc_t>() : nullptr},
          static_cast<index_t>(H), static_cast<index_t>(W), static_cast<index_t>(C),
          static_cast<index_t>(G), static_cast<acc_t>(offset_scale));
      if (deterministic) {
        const int64_t ng = n_qg * n_vec;
        emulate_launch(ng, max_blocks,
                       deformable_sample_backward_gather_value_kernel_impl<scalar_t, V>, ng,
                       grad_out.const_data_ptr<scalar_t>(),
                       sample_corner.const_data_ptr<int32_t>(), sample_coef.const_data_ptr<acc_t>(),
                       grad_value.mutable_data_ptr<scalar_t>(), H, W, C, G,
                       gather_radius(offset_scale, H, W));
      }
    };
    using VV = std::integral_constant<int, VEC>;
    using V1 = std::integral_constant<int, 1>;
    using I32 = std::type_identity<int32_t>;
    using I64 = std::type_identity<int64_t>;
    if (vectorize && index64) run(VV{}, I64{});
    else if (vectorize) run(VV{}, I32{});
    else if (index64) run(V1{}, I64{});
    else run(V1{}, I32{});
  });
  if (!deterministic) grad_value = grad_value_acc.to(value.scalar_type());
  at::Tensor grad_alpha =
      alpha ? alpha_partials.sum(1).to(value.scalar_type()) : value.new_empty({0});
  return {grad_value, grad_offset, grad_amplitude, grad_residual, grad_alpha};
}

// The launchers' index width for the backward query kernel and the forward kernel, from
// shapes alone: meta tensors give the sizes at the int32 boundary without allocating them.
std::tuple<bool, bool> launch_plan_index32(const at::Tensor& value, const at::Tensor& offset,
                                           bool vectorize) {
  const int64_t C = value.size(3), G = offset.size(3);
  const int64_t n_qg = value.size(0) * value.size(1) * value.size(2) * G;
  const int64_t vec = vectorize ? 16 / value.element_size() : 1;
  const bool forward32 = forward_fits_int32(n_qg, C / G, value.numel(), offset.numel());
  const bool backward32 =
      plan_backward_query(n_qg, C / G / vec, value.numel(), offset.numel()).index32;
  return {forward32, backward32};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "The CUDA kernels of stable_sam_ops run on CPU under an emulated CUDA model (tests)";
  m.def("forward", &forward);
  m.def("backward", &backward);
  m.def("launch_plan_index32", &launch_plan_index32);
}
