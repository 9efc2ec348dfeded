// Declarations shared by the op's schema file and its backend kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <tuple>

namespace stable_sam_ops {

// Checks shapes, dtypes and devices against the contract (shared/design/deformable_sample.md)
// and fails with a message that names the argument. Called by every compiled backend.
void check_deformable_sample_inputs(
    const at::Tensor& value, const at::Tensor& offset,
    const std::optional<at::Tensor>& amplitude, const std::optional<at::Tensor>& residual,
    const std::optional<at::Tensor>& alpha, double offset_scale);

}  // namespace stable_sam_ops
