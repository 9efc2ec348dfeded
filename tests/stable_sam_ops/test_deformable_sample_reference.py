"""The pure-PyTorch reference against an independent, literal loop over the contract's formula.

The loop oracle is slow, so shapes are tiny; it checks the grid_sample composition (padding of
one-pixel images, NaN handling, group layout) that every other test trusts as the oracle.
"""
import math

import pytest
import torch

from stable_sam_ops.reference import deformable_sample_reference

from op_cases import as_float64, make_case, present


def loop_oracle(value, offset, amplitude=None, residual=None, alpha=None, offset_scale=1.0):
    """out[b,i,j,c] exactly as shared/design/deformable_sample.md writes it, one scalar at a time."""
    B, H, W, C = value.shape
    G = offset.shape[3]
    Cg = C // G
    out = torch.zeros(B, H, W, C, dtype=torch.float64)

    def V(b, yy, xx, c):
        return float(value[b, yy, xx, c]) if 0 <= yy < H and 0 <= xx < W else 0.0

    for b in range(B):
        a1, a2 = (1.0, 1.0) if alpha is None else (float(alpha[b, 0]), float(alpha[b, 1]))
        for i in range(H):
            for j in range(W):
                for g in range(G):
                    ox, oy = float(offset[b, i, j, g, 0]), float(offset[b, i, j, g, 1])
                    amp = 1.0 if amplitude is None else float(amplitude[b, i, j, g])
                    for c in range(g * Cg, (g + 1) * Cg):
                        S = 0.0
                        if not (math.isnan(ox) or math.isnan(oy)):
                            x = j + offset_scale * math.tanh(ox)
                            y = i + offset_scale * math.tanh(oy)
                            x0, y0 = math.floor(x), math.floor(y)
                            wx, wy = x - x0, y - y0
                            S = ((1 - wy) * (1 - wx) * V(b, y0, x0, c)
                                 + (1 - wy) * wx * V(b, y0, x0 + 1, c)
                                 + wy * (1 - wx) * V(b, y0 + 1, x0, c)
                                 + wy * wx * V(b, y0 + 1, x0 + 1, c))
                        r = 0.0 if residual is None else float(residual[b, i, j, c])
                        out[b, i, j, c] = a1 * amp * S + a2 * r
    return out


# (B, H, W, C, G): one-pixel images, one row, one column, non-square, groups of one channel.
SHAPES = [(1, 1, 1, 2, 1), (2, 1, 7, 3, 1), (1, 5, 1, 4, 2), (2, 6, 9, 4, 2), (1, 3, 4, 3, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("offset_scale", [0.25, 1.0, 3.7, 50.0])
@pytest.mark.parametrize("optional", [(), ("amplitude", "residual", "alpha")], ids=["bare", "all"])
def test_reference_matches_loop_oracle(shape, offset_scale, optional):
    case = make_case(*shape, optional=optional, offset_std=1.5)
    expected = loop_oracle(**case, offset_scale=offset_scale)
    actual = deformable_sample_reference(**case, offset_scale=offset_scale)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_reference_nan_offsets_sample_zero():
    case = make_case(2, 4, 5, 4, 2)
    case["offset"][0, 1, 2, 1, 0] = float("nan")  # one coordinate of one point
    case["offset"][1, 3, 4, 0, 1] = float("nan")
    expected = loop_oracle(**case, offset_scale=2.0)
    actual = deformable_sample_reference(**case, offset_scale=2.0)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    # the NaN point's channels are the residual term only
    a2 = case["alpha"][0, 1]
    torch.testing.assert_close(actual[0, 1, 2, 2:], a2 * case["residual"][0, 1, 2, 2:])


def test_reference_empty_batch_keeps_grad():
    case = make_case(0, 3, 4, 4, 2, requires_grad=True)
    out = deformable_sample_reference(**case, offset_scale=1.0)
    assert out.shape == (0, 3, 4, 4)
    out.sum().backward()
    assert case["value"].grad.shape == case["value"].shape


def test_reference_gradcheck():
    case = make_case(2, 3, 4, 4, 2, requires_grad=True)
    names, tensors = present(case)

    def fn(*ts):
        return deformable_sample_reference(**dict(zip(names, ts)), offset_scale=1.3)

    assert torch.autograd.gradcheck(fn, tensors, fast_mode=True)


def test_loop_oracle_is_not_trivial():
    # Guards the oracle itself: a zero offset samples the pixel under the query exactly.
    case = as_float64(make_case(1, 3, 4, 2, 1, optional=()))
    case["offset"].zero_()
    torch.testing.assert_close(loop_oracle(**case), case["value"])
