// CUDA backend of the fused deformable-sampling op: host launchers and the op registration.
// Contract: shared/design/deformable_sample.md. The kernels are in deformable_sample_kernel.cuh;
// all sampling arithmetic comes from deformable_sample_math.h, the header the CPU kernel and its
// tests share, so what the CPU tests prove covers what runs here.
#include "deformable_sample.h"
#include "cuda/deformable_sample_kernel.cuh"

#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <tuple>
#include <type_traits>

namespace stable_sam_ops {

namespace {

using namespace cuda_detail;

bool aligned16(const at::Tensor& t) {
  return !t.defined() || reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

// 16-byte packs when every channel-run starts on a 16-byte boundary: Cg a multiple of the pack
// and every channels-last tensor's base pointer 16-byte aligned (slices may not be).
template <typename scalar_t>
bool can_vectorize(int64_t Cg, std::initializer_list<const at::Tensor*> tensors) {
  constexpr int vec = 16 / sizeof(scalar_t);
  if (Cg % vec != 0) return false;
  for (const at::Tensor* t : tensors) {
    if (!aligned16(*t)) return false;
  }
  return true;
}

template <typename scalar_t>
const scalar_t* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

at::Tensor deformable_sample_forward_kernel(const at::Tensor& value_in, const at::Tensor& offset_in,
                                            const std::optional<at::Tensor>& amplitude_in,
                                            const std::optional<at::Tensor>& residual_in,
                                            const std::optional<at::Tensor>& alpha_in,
                                            double offset_scale) {
  check_deformable_sample_inputs(value_in, offset_in, amplitude_in, residual_in, alpha_in,
                                 offset_scale);
  TORCH_CHECK(value_in.is_cuda(), "deformable_sample (cuda): value must be a CUDA tensor");
  c10::cuda::CUDAGuard guard(value_in.device());
  const at::Tensor value = value_in.contiguous();
  const at::Tensor offset = offset_in.contiguous();
  const at::Tensor amplitude = contiguous_or_undefined(amplitude_in);
  const at::Tensor residual = contiguous_or_undefined(residual_in);
  const at::Tensor alpha = contiguous_or_undefined(alpha_in);
  at::Tensor out = at::empty_like(value, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  const int64_t H = value.size(1), W = value.size(2), C = value.size(3), G = offset.size(3);
  const int64_t Cg = C / G;
  const int64_t n_qg = value.size(0) * H * W * G;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "deformable_sample_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        constexpr int VEC = 16 / sizeof(scalar_t);
        auto launch = [&](auto vec_tag, auto index_tag) {
          constexpr int V = decltype(vec_tag)::value;
          using index_t = typename decltype(index_tag)::type;
          const int64_t n = n_qg * (Cg / V);
          deformable_sample_forward_kernel_impl<scalar_t, V, index_t>
              <<<blocks_for(n), kThreadsPerBlock, 0, stream>>>(
                  static_cast<index_t>(n), value.const_data_ptr<scalar_t>(),
                  offset.const_data_ptr<scalar_t>(), ptr_or_null<scalar_t>(amplitude),
                  ptr_or_null<scalar_t>(residual), ptr_or_null<scalar_t>(alpha),
                  out.mutable_data_ptr<scalar_t>(), H, W, C, G, static_cast<acc_t>(offset_scale));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        };
        const bool vec = can_vectorize<scalar_t>(Cg, {&value, &residual, &out});
        const bool small = forward_fits_int32(n_qg, Cg, value.numel(), offset.numel());
        using I32 = std::type_identity<int32_t>;
        using I64 = std::type_identity<int64_t>;
        using VV = std::integral_constant<int, VEC>;
        using V1 = std::integral_constant<int, 1>;
        if (vec && small) launch(VV{}, I32{});
        else if (vec) launch(VV{}, I64{});
        else if (small) launch(V1{}, I32{});
        else launch(V1{}, I64{});
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
deformable_sample_backward_kernel(const at::Tensor& grad_out_in, const at::Tensor& value_in,
                                  const at::Tensor& offset_in,
                                  const std::optional<at::Tensor>& amplitude_in,
                                  const std::optional<at::Tensor>& residual_in,
                                  const std::optional<at::Tensor>& alpha_in, double offset_scale) {
  check_deformable_sample_inputs(value_in, offset_in, amplitude_in, residual_in, alpha_in,
                                 offset_scale);
  TORCH_CHECK(value_in.is_cuda(), "deformable_sample (cuda): value must be a CUDA tensor");
  TORCH_CHECK(grad_out_in.sizes() == value_in.sizes(),
              "deformable_sample backward: grad_out must have the shape of value ",
              value_in.sizes(), ", got ", grad_out_in.sizes());
  TORCH_CHECK(grad_out_in.device() == value_in.device() &&
                  grad_out_in.scalar_type() == value_in.scalar_type(),
              "deformable_sample backward: grad_out must match value's device and dtype");
  c10::cuda::CUDAGuard guard(value_in.device());
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor value = value_in.contiguous();
  const at::Tensor offset = offset_in.contiguous();
  const at::Tensor amplitude = contiguous_or_undefined(amplitude_in);
  const at::Tensor residual = contiguous_or_undefined(residual_in);
  const at::Tensor alpha = contiguous_or_undefined(alpha_in);
  const auto empty = [&] { return value.new_empty({0}); };
  at::Tensor grad_offset = at::empty_like(offset, at::MemoryFormat::Contiguous);
  at::Tensor grad_amplitude =
      amplitude.defined() ? at::empty_like(amplitude, at::MemoryFormat::Contiguous) : empty();
  at::Tensor grad_residual =
      residual.defined() ? at::empty_like(residual, at::MemoryFormat::Contiguous) : empty();
  at::Tensor grad_alpha = alpha.defined() ? at::zeros_like(alpha) : empty();
  if (value.numel() == 0) {
    return {at::zeros_like(value), grad_offset, grad_amplitude, grad_residual, grad_alpha};
  }
  const int64_t B = value.size(0), H = value.size(1), W = value.size(2), C = value.size(3),
                G = offset.size(3);
  const int64_t Cg = C / G;
  const int64_t n_qg = B * H * W * G;
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const auto acc_dtype = value.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad_value;
  at::Tensor grad_value_acc;  // float32 (float64 for double) atomics target
  if (deterministic) {
    grad_value = at::empty_like(value, at::MemoryFormat::Contiguous);
  } else if (value.scalar_type() == acc_dtype) {
    grad_value = at::zeros_like(value, at::MemoryFormat::Contiguous);
    grad_value_acc = grad_value;
  } else {
    grad_value_acc = at::zeros(value.sizes(), value.options().dtype(acc_dtype));
  }
  // What the deterministic gather reads of each (query, group); written by the query kernel.
  at::Tensor sample_corner, sample_coef;
  if (deterministic) {
    sample_corner = at::empty({n_qg, 2}, value.options().dtype(at::kInt));
    sample_coef = at::empty({n_qg, 4}, value.options().dtype(acc_dtype));
  }
  at::Tensor alpha_partials =
      alpha.defined() ? at::empty({B, H * W * G, 2}, value.options().dtype(acc_dtype))
                      : at::Tensor();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "deformable_sample_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        constexpr int VEC = 16 / sizeof(scalar_t);
        const bool vec = can_vectorize<scalar_t>(
            Cg, {&grad_out, &value, &residual, &grad_residual, &grad_value});
        const auto plan =
            plan_backward_query(n_qg, Cg / (vec ? VEC : 1), value.numel(), offset.numel());
        auto launch_query = [&](auto vec_tag, auto index_tag) {
          constexpr int V = decltype(vec_tag)::value;
          using index_t = typename decltype(index_tag)::type;
          deformable_sample_backward_query_kernel_impl<scalar_t, V, index_t>
              <<<blocks_for(plan.n_threads), kThreadsPerBlock, 0, stream>>>(
                  static_cast<index_t>(plan.n_threads), plan.lanes_log2,
                  grad_out.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(),
                  offset.const_data_ptr<scalar_t>(), ptr_or_null<scalar_t>(amplitude),
                  ptr_or_null<scalar_t>(residual), ptr_or_null<scalar_t>(alpha),
                  grad_value_acc.defined() ? grad_value_acc.mutable_data_ptr<acc_t>() : nullptr,
                  grad_offset.mutable_data_ptr<scalar_t>(),
                  amplitude.defined() ? grad_amplitude.mutable_data_ptr<scalar_t>() : nullptr,
                  residual.defined() ? grad_residual.mutable_data_ptr<scalar_t>() : nullptr,
                  alpha_partials.defined() ? alpha_partials.mutable_data_ptr<acc_t>() : nullptr,
                  SampleCache<acc_t>{
                      sample_corner.defined() ? sample_corner.mutable_data_ptr<int32_t>() : nullptr,
                      sample_coef.defined() ? sample_coef.mutable_data_ptr<acc_t>() : nullptr},
                  H, W, C, G, static_cast<acc_t>(offset_scale));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        };
        using I32 = std::type_identity<int32_t>;
        using I64 = std::type_identity<int64_t>;
        using VV = std::integral_constant<int, VEC>;
        using V1 = std::integral_constant<int, 1>;
        const bool small = plan.index32;
        if (vec && small) launch_query(VV{}, I32{});
        else if (vec) launch_query(VV{}, I64{});
        else if (small) launch_query(V1{}, I32{});
        else launch_query(V1{}, I64{});

        if (deterministic) {
          const int64_t radius = gather_radius(offset_scale, H, W);
          auto launch_gather = [&](auto vec_tag) {
            constexpr int V = decltype(vec_tag)::value;
            const int64_t n = n_qg * (Cg / V);
            deformable_sample_backward_gather_value_kernel_impl<scalar_t, V>
                <<<blocks_for(n), kThreadsPerBlock, 0, stream>>>(
                    n, grad_out.const_data_ptr<scalar_t>(), sample_corner.const_data_ptr<int32_t>(),
                    sample_coef.const_data_ptr<acc_t>(), grad_value.mutable_data_ptr<scalar_t>(),
                    H, W, C, G, radius);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          };
          if (vec) launch_gather(VV{});
          else launch_gather(V1{});
        }
      });
  if (!grad_value.defined()) grad_value = grad_value_acc.to(value.scalar_type());
  if (alpha_partials.defined()) {
    // Second level of the dL/dalpha reduction: a fixed-shape sum, deterministic run to run.
    grad_alpha = alpha_partials.sum(1).to(value.scalar_type());
  }
  return {grad_value, grad_offset, grad_amplitude, grad_residual, grad_alpha};
}

}  // namespace

TORCH_LIBRARY_IMPL(stable_sam_ops, CUDA, m) {
  m.impl("deformable_sample", &deformable_sample_forward_kernel);
  m.impl("_deformable_sample_backward", &deformable_sample_backward_kernel);
}

}  // namespace stable_sam_ops
