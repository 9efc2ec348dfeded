"""Bad inputs fail with an error that names the argument and what was expected: the Python
checks of the public function, and the C++ checks of the op called through torch.ops."""
import pytest
import torch

from stable_sam_ops import deformable_sample

from op_cases import make_case, needs_cpu_kernel


def good(**overrides):
    case = make_case(2, 4, 5, 6, 3, dtype=torch.float32)
    case["offset_scale"] = 1.0
    case.update(overrides)
    return case


F32 = torch.float32
BAD_INPUTS = {
    "value_not_tensor": (dict(value=[1.0]), TypeError, r"value must be a Tensor"),
    "value_integer": (dict(value=torch.zeros(2, 4, 5, 6, dtype=torch.int64)), TypeError,
                      r"value must be floating point"),
    "value_rank": (dict(value=torch.zeros(2, 20, 6)), ValueError, r"value must be \(B, H, W, C\)"),
    "value_zero_width": (dict(value=torch.zeros(2, 4, 0, 6), offset=torch.zeros(2, 4, 0, 3, 2)),
                         ValueError, r"H, W, C >= 1"),
    "offset_not_tensor": (dict(offset=None), TypeError, r"offset must be a Tensor"),
    "offset_rank": (dict(offset=torch.zeros(2, 4, 5, 6)), ValueError,
                    r"offset must be \(B, H, W, G, 2\) = \(2, 4, 5, G, 2\)"),
    "offset_spatial": (dict(offset=torch.zeros(2, 5, 4, 3, 2)), ValueError, r"offset must be"),
    "offset_last_dim": (dict(offset=torch.zeros(2, 4, 5, 3, 3)), ValueError, r"offset must be"),
    "groups_divide_channels": (dict(offset=torch.zeros(2, 4, 5, 4, 2), amplitude=None),
                               ValueError, r"C \(6\) must be divisible by G \(4\)"),
    "offset_dtype": (dict(offset=torch.zeros(2, 4, 5, 3, 2, dtype=torch.float64)), TypeError,
                     r"offset must have the dtype of value"),
    "offset_device": (dict(offset=torch.zeros(2, 4, 5, 3, 2, device="meta")), ValueError,
                      r"offset must be on the device of value"),
    "amplitude_shape": (dict(amplitude=torch.zeros(2, 4, 5, 1)), ValueError,
                        r"amplitude must be \(B, H, W, G\) = \(2, 4, 5, 3\)"),
    "amplitude_dtype": (dict(amplitude=torch.zeros(2, 4, 5, 3, dtype=torch.float16)), TypeError,
                        r"amplitude must have the dtype of value"),
    "amplitude_device": (dict(amplitude=torch.zeros(2, 4, 5, 3, device="meta")), ValueError,
                         r"amplitude must be on the device"),
    "residual_shape": (dict(residual=torch.zeros(2, 4, 5, 3)), ValueError,
                       r"residual must have the shape of value"),
    "residual_dtype": (dict(residual=torch.zeros(2, 4, 5, 6, dtype=torch.float64)), TypeError,
                       r"residual must have the dtype of value"),
    "residual_not_tensor": (dict(residual=3.0), TypeError, r"residual must be a Tensor"),
    "alpha_shape": (dict(alpha=torch.zeros(2, 3)), ValueError, r"alpha must be \(B, 2\) = \(2, 2\)"),
    "alpha_batch": (dict(alpha=torch.zeros(1, 2)), ValueError, r"alpha must be \(B, 2\)"),
    "alpha_dtype": (dict(alpha=torch.zeros(2, 2, dtype=torch.bfloat16)), TypeError,
                    r"alpha must have the dtype of value"),
    "alpha_device": (dict(alpha=torch.zeros(2, 2, device="meta")), ValueError,
                     r"alpha must be on the device"),
    "offset_scale_nan": (dict(offset_scale=float("nan")), ValueError,
                         r"offset_scale must be finite and > 0, got nan"),
    "offset_scale_inf": (dict(offset_scale=float("inf")), ValueError, r"offset_scale must be finite"),
    "offset_scale_zero": (dict(offset_scale=0.0), ValueError, r"offset_scale must be finite and > 0"),
    "offset_scale_negative": (dict(offset_scale=-2.0), ValueError, r"> 0, got -2.0"),
    "offset_scale_tensor": (dict(offset_scale=torch.tensor(1.0)), TypeError,
                            r"offset_scale must be a Python float, got Tensor"),
    "offset_scale_overflows_float32": (dict(offset_scale=1e39), ValueError,
                                       r"offset_scale \(1e\+39\) overflows float32"),
    "offset_scale_string": (dict(offset_scale="1.0"), TypeError,
                            r"offset_scale must be a Python float, got str"),
}


@pytest.mark.parametrize("overrides,error,match", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_names_the_argument(overrides, error, match):
    case = good(**overrides)
    with pytest.raises(error, match=match):
        deformable_sample(**case, backend="reference")


def test_good_input_passes():
    out = deformable_sample(**good(), backend="reference")
    assert out.shape == (2, 4, 5, 6)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match=r"backend must be 'auto' or one of .* got 'fast'"):
        deformable_sample(**good(), backend="fast")


def test_backend_that_cannot_serve_lists_its_reasons():
    # CPU tensors on the cuda backend: every reason is listed, the device among them.
    with pytest.raises(RuntimeError, match=r"backend 'cuda' cannot serve this call: .*device cpu"):
        deformable_sample(**good(), backend="cuda")


@needs_cpu_kernel
def test_cpu_backend_refuses_meta_tensors():
    case = {k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in good().items()}
    with pytest.raises(RuntimeError, match=r"backend 'cpu' cannot serve this call: .*device meta"):
        deformable_sample(**case, backend="cpu")


OP_BAD_INPUTS = {
    "offset_shape": (dict(offset=torch.zeros(2, 4, 5, 3, 3)), r"offset must be \(B, H, W, G, 2\)"),
    "groups": (dict(offset=torch.zeros(2, 4, 5, 4, 2), amplitude=None),
               r"C \(6\) must be divisible by G \(4\)"),
    "amplitude": (dict(amplitude=torch.zeros(2, 4, 5, 2)), r"amplitude must be \(B, H, W, G\)"),
    "residual": (dict(residual=torch.zeros(2, 4, 5, 5)), r"residual must have the shape of value"),
    "alpha": (dict(alpha=torch.zeros(2, 1)), r"alpha must be \(B, 2\)"),
    "dtype": (dict(amplitude=torch.zeros(2, 4, 5, 3, dtype=torch.float64)),
              r"amplitude must have the dtype of value"),
    "offset_scale": (dict(offset_scale=-1.0), r"offset_scale must be finite and > 0"),
    "offset_scale_overflow": (dict(offset_scale=1e39),
                              r"offset_scale \(1e\+39\) overflows float32"),
    "value_rank": (dict(value=torch.zeros(2, 4, 30)), r"value must be \(B, H, W, C\)"),
}


@needs_cpu_kernel
@pytest.mark.parametrize("overrides,match", OP_BAD_INPUTS.values(), ids=OP_BAD_INPUTS.keys())
def test_compiled_op_checks_shapes(overrides, match):
    # Callers of torch.ops skip the Python checks: the C++ TORCH_CHECKs must catch these.
    case = good(**overrides)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.stable_sam_ops.deformable_sample(
            case["value"], case["offset"], case["amplitude"], case["residual"], case["alpha"],
            case["offset_scale"],
        )


@needs_cpu_kernel
def test_compiled_backward_checks_grad_out():
    case = good()
    with pytest.raises(RuntimeError, match=r"grad_out must have the shape of value"):
        torch.ops.stable_sam_ops._deformable_sample_backward(
            torch.zeros(2, 4, 5, 7), case["value"], case["offset"], case["amplitude"],
            case["residual"], case["alpha"], 1.0,
        )


def _meta(case):
    return {k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in case.items()}


@needs_cpu_kernel
@pytest.mark.parametrize("overrides,match", OP_BAD_INPUTS.values(), ids=OP_BAD_INPUTS.keys())
def test_fake_kernel_refuses_what_the_kernel_refuses(overrides, match):
    # Meta tensors run the fake kernel, as torch.compile's shape propagation does.
    case = _meta(good(**overrides))
    with pytest.raises((TypeError, ValueError), match=match):
        torch.ops.stable_sam_ops.deformable_sample(
            case["value"], case["offset"], case["amplitude"], case["residual"], case["alpha"],
            case["offset_scale"],
        )


@needs_cpu_kernel
def test_fake_backward_refuses_a_bad_grad_out():
    case = _meta(good())
    with pytest.raises(ValueError, match=r"grad_out must have the shape of value"):
        torch.ops.stable_sam_ops._deformable_sample_backward(
            torch.zeros(2, 4, 5, 7, device="meta"), case["value"], case["offset"],
            case["amplitude"], case["residual"], case["alpha"], 1.0,
        )


@needs_cpu_kernel
def test_compile_refuses_a_shape_at_trace_time():
    # The op called directly (no Python checks): tracing must fail, not produce a graph for
    # shapes that the kernel would refuse when it runs.
    case = good(alpha=torch.zeros(2, 1))

    def direct(value, offset, amplitude, residual, alpha):
        return torch.ops.stable_sam_ops.deformable_sample(value, offset, amplitude, residual,
                                                          alpha, 1.0)

    torch._dynamo.reset()
    compiled = torch.compile(direct, fullgraph=True, backend="eager")
    with pytest.raises(Exception, match=r"alpha must be \(B, 2\)") as info:
        compiled(case["value"], case["offset"], case["amplitude"], case["residual"], case["alpha"])
    # Refused by the fake kernel while tracing (a ValueError), not by the C++ kernel when the
    # graph ran (a RuntimeError from TORCH_CHECK).
    causes, error = [], info.value
    while error is not None:
        causes.append(type(error))
        error = error.__cause__ or error.__context__
    assert ValueError in causes, causes
