"""Triton kernels of the fused deformable-sampling op (contract: shared/design/deformable_sample.md).

The sampling arithmetic mirrors csrc/deformable_sample_math.h piece by piece; each helper names
the header function it corresponds to. A program owns a BLOCK_Q x BLOCK_C tile: BLOCK_Q
(query, group) pairs, consecutive in memory, by BLOCK_C channels of their group, looping over
the group's channels in BLOCK_C steps. Arithmetic is float32 (float64 for float64 inputs).

Import this module only after TRITON_INTERPRET is settled: @triton.jit picks the interpreter or
the compiler when it decorates.
"""
import triton
import triton.language as tl


@triton.jit
def _acc(x, IS_FP64: tl.constexpr):
    # at::opmath_type: float64 stays float64, everything else computes in float32.
    if IS_FP64:
        return x.to(tl.float64)
    else:
        return x.to(tl.float32)


@triton.jit
def _tanh(v):
    # math::tanh_. tl has no tanh that also runs in the interpreter; this form is exact in
    # absolute terms (what the sampling position needs), saturates to +-1 and keeps NaN.
    e = tl.exp(-2.0 * tl.abs(v))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(v < 0, -t, t)


@triton.jit
def _sample_point(raw_dx, raw_dy, i, j, H, W, offset_scale):
    """math::make_sample_point + the corner tests of math::corner_weights.

    Returns (y0, x0, wy, wx, dx_draw, dy_draw, in00, in01, in10, in11) for each query."""
    tx = _tanh(raw_dx)
    ty = _tanh(raw_dy)
    x = j.to(tx.dtype) + offset_scale * tx
    y = i.to(ty.dtype) + offset_scale * ty
    # NaN fails every comparison; far-out points have no corner in range (finite_and_near).
    near = (x >= -1.0) & (x <= W) & (y >= -1.0) & (y <= H)
    # Stand-in coordinate for rejected points keeps the float -> int conversion defined.
    x = tl.where(near, x, -2.0)
    y = tl.where(near, y, -2.0)
    xf = tl.floor(x)
    yf = tl.floor(y)
    x0 = xf.to(tl.int32)
    y0 = yf.to(tl.int32)
    wx = tl.where(near, x - xf, 0.0)
    wy = tl.where(near, y - yf, 0.0)
    dx_draw = tl.where(near, offset_scale * (1.0 - tx * tx), 0.0)
    dy_draw = tl.where(near, offset_scale * (1.0 - ty * ty), 0.0)
    x0_in = (x0 >= 0) & (x0 < W)
    x1_in = (x0 + 1 >= 0) & (x0 + 1 < W)
    y0_in = (y0 >= 0) & (y0 < H)
    y1_in = (y0 + 1 >= 0) & (y0 + 1 < H)
    return (y0, x0, wy, wx, dx_draw, dy_draw,
            near & y0_in & x0_in, near & y0_in & x1_in, near & y1_in & x0_in, near & y1_in & x1_in)


@triton.jit
def _pixel_index(b, y, x, H, W, C):
    # math::pixel_index, in int64 so that large tensors do not overflow.
    return ((b.to(tl.int64) * H + y) * W + x) * C


@triton.jit
def _query_tile(pid, n_qg, H, W, G, BLOCK_Q: tl.constexpr):
    qg = pid.to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_mask = qg < n_qg
    g = qg % G
    t = qg // G
    j = t % W
    t = t // W
    i = t % H
    b = t // H
    return qg, q_mask, b, i, j, g


@triton.jit
def _load_query_factors(offset_ptr, amplitude_ptr, alpha_ptr, qg, q_mask, b, i, j, H, W,
                        offset_scale, HAS_AMPLITUDE: tl.constexpr, HAS_ALPHA: tl.constexpr,
                        IS_FP64: tl.constexpr):
    # Raw offsets and amplitude: read once per (query, group), as the CUDA kernel does.
    raw_dx = _acc(tl.load(offset_ptr + 2 * qg, mask=q_mask, other=0.0), IS_FP64)
    raw_dy = _acc(tl.load(offset_ptr + 2 * qg + 1, mask=q_mask, other=0.0), IS_FP64)
    sp = _sample_point(raw_dx, raw_dy, i, j, H, W, offset_scale)
    one = tl.full(raw_dx.shape, 1.0, raw_dx.dtype)
    if HAS_AMPLITUDE:
        amp = _acc(tl.load(amplitude_ptr + qg, mask=q_mask, other=0.0), IS_FP64)
    else:
        amp = one
    if HAS_ALPHA:
        alpha1 = _acc(tl.load(alpha_ptr + 2 * b, mask=q_mask, other=0.0), IS_FP64)
        alpha2 = _acc(tl.load(alpha_ptr + 2 * b + 1, mask=q_mask, other=0.0), IS_FP64)
    else:
        alpha1 = one
        alpha2 = one
    return sp, amp, alpha1, alpha2


@triton.jit
def _load_corner(ptr, base, ch, in_range, c_mask, IS_FP64: tl.constexpr):
    # An out-of-range corner is masked off: never read, taken as 0 (zero padding).
    m = in_range[:, None] & c_mask[None, :]
    return _acc(tl.load(ptr + base[:, None] + ch[None, :], mask=m, other=0.0), IS_FP64)


# Sizes that only bound loops or split indices are not specialised on (a compile per shape
# otherwise); C and Cg are, since their divisibility lets Triton vectorise channel accesses.
_GENERIC_SIZES = ["n_qg", "H", "W", "G"]


@triton.jit(do_not_specialize=_GENERIC_SIZES)
def deformable_sample_forward_kernel(
    value_ptr, offset_ptr, amplitude_ptr, residual_ptr, alpha_ptr, out_ptr,
    n_qg, H, W, C, G, Cg, offset_scale_ptr,
    HAS_AMPLITUDE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_ALPHA: tl.constexpr,
    IS_FP64: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
):
    qg, q_mask, b, i, j, g = _query_tile(tl.program_id(0), n_qg, H, W, G, BLOCK_Q)
    # A Python float argument would be passed as float32; float64 needs the exact scale.
    offset_scale = tl.load(offset_scale_ptr)
    sp, amp, alpha1, alpha2 = _load_query_factors(
        offset_ptr, amplitude_ptr, alpha_ptr, qg, q_mask, b, i, j, H, W, offset_scale,
        HAS_AMPLITUDE, HAS_ALPHA, IS_FP64)
    y0, x0, wy, wx, dx_draw, dy_draw, in00, in01, in10, in11 = sp
    # math::corner_weights (out-of-range corners are masked at load, so their weight is moot).
    w00 = ((1.0 - wy) * (1.0 - wx))[:, None]
    w01 = ((1.0 - wy) * wx)[:, None]
    w10 = (wy * (1.0 - wx))[:, None]
    w11 = (wy * wx)[:, None]
    A = (alpha1 * amp)[:, None]
    i00 = _pixel_index(b, y0, x0, H, W, C) + g * Cg
    i01 = _pixel_index(b, y0, x0 + 1, H, W, C) + g * Cg
    i10 = _pixel_index(b, y0 + 1, x0, H, W, C) + g * Cg
    i11 = _pixel_index(b, y0 + 1, x0 + 1, H, W, C) + g * Cg
    iq = _pixel_index(b, i, j, H, W, C) + g * Cg
    for c_start in range(0, Cg, BLOCK_C):
        ch = c_start + tl.arange(0, BLOCK_C)
        c_mask = ch < Cg
        v00 = _load_corner(value_ptr, i00, ch, q_mask & in00, c_mask, IS_FP64)
        v01 = _load_corner(value_ptr, i01, ch, q_mask & in01, c_mask, IS_FP64)
        v10 = _load_corner(value_ptr, i10, ch, q_mask & in10, c_mask, IS_FP64)
        v11 = _load_corner(value_ptr, i11, ch, q_mask & in11, c_mask, IS_FP64)
        S = w00 * v00 + w01 * v01 + w10 * v10 + w11 * v11  # math::interpolate
        out = A * S
        if HAS_RESIDUAL:
            res = _load_corner(residual_ptr, iq, ch, q_mask, c_mask, IS_FP64)
            out = out + alpha2[:, None] * res
        m = q_mask[:, None] & c_mask[None, :]
        tl.store(out_ptr + iq[:, None] + ch[None, :], out.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=_GENERIC_SIZES)
def deformable_sample_backward_kernel(
    grad_out_ptr, value_ptr, offset_ptr, amplitude_ptr, residual_ptr, alpha_ptr,
    grad_value_acc_ptr, grad_offset_ptr, grad_amplitude_ptr, grad_residual_ptr,
    alpha_partials_ptr,
    n_qg, H, W, C, G, Cg, offset_scale_ptr,
    HAS_AMPLITUDE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_ALPHA: tl.constexpr,
    IS_FP64: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dL/dvalue by atomics into a float32 (float64) buffer; the per-(query, group) gradients by
    a row reduction over the group's channels, written once, without atomics."""
    qg, q_mask, b, i, j, g = _query_tile(tl.program_id(0), n_qg, H, W, G, BLOCK_Q)
    # A Python float argument would be passed as float32; float64 needs the exact scale.
    offset_scale = tl.load(offset_scale_ptr)
    sp, amp, alpha1, alpha2 = _load_query_factors(
        offset_ptr, amplitude_ptr, alpha_ptr, qg, q_mask, b, i, j, H, W, offset_scale,
        HAS_AMPLITUDE, HAS_ALPHA, IS_FP64)
    y0, x0, wy, wx, dx_draw, dy_draw, in00, in01, in10, in11 = sp
    uy = (1.0 - wy)[:, None]
    ux = (1.0 - wx)[:, None]
    wy2 = wy[:, None]
    wx2 = wx[:, None]
    A = (alpha1 * amp)[:, None]
    i00 = _pixel_index(b, y0, x0, H, W, C) + g * Cg
    i01 = _pixel_index(b, y0, x0 + 1, H, W, C) + g * Cg
    i10 = _pixel_index(b, y0 + 1, x0, H, W, C) + g * Cg
    i11 = _pixel_index(b, y0 + 1, x0 + 1, H, W, C) + g * Cg
    iq = _pixel_index(b, i, j, H, W, C) + g * Cg
    sum_dx = tl.zeros_like(wx)
    sum_dy = tl.zeros_like(wx)
    sum_gS = tl.zeros_like(wx)
    sum_gR = tl.zeros_like(wx)
    for c_start in range(0, Cg, BLOCK_C):
        ch = c_start + tl.arange(0, BLOCK_C)
        c_mask = ch < Cg
        m = q_mask[:, None] & c_mask[None, :]
        gr = _load_corner(grad_out_ptr, iq, ch, q_mask, c_mask, IS_FP64)
        v00 = _load_corner(value_ptr, i00, ch, q_mask & in00, c_mask, IS_FP64)
        v01 = _load_corner(value_ptr, i01, ch, q_mask & in01, c_mask, IS_FP64)
        v10 = _load_corner(value_ptr, i10, ch, q_mask & in10, c_mask, IS_FP64)
        v11 = _load_corner(value_ptr, i11, ch, q_mask & in11, c_mask, IS_FP64)
        S = uy * ux * v00 + uy * wx2 * v01 + wy2 * ux * v10 + wy2 * wx2 * v11
        dSdx = uy * (v01 - v00) + wy2 * (v11 - v10)  # math::interpolate_dx
        dSdy = ux * (v10 - v00) + wx2 * (v11 - v01)  # math::interpolate_dy
        sum_dx += tl.sum(gr * dSdx, axis=1)
        sum_dy += tl.sum(gr * dSdy, axis=1)
        sum_gS += tl.sum(gr * S, axis=1)
        if HAS_RESIDUAL:
            res = _load_corner(residual_ptr, iq, ch, q_mask, c_mask, IS_FP64)
            sum_gR += tl.sum(gr * res, axis=1)
            tl.store(grad_residual_ptr + iq[:, None] + ch[None, :],
                     (alpha2[:, None] * gr).to(grad_residual_ptr.dtype.element_ty), mask=m)
        ag = A * gr
        acc_ty = grad_value_acc_ptr.dtype.element_ty
        tl.atomic_add(grad_value_acc_ptr + i00[:, None] + ch[None, :], (uy * ux * ag).to(acc_ty),
                      mask=m & in00[:, None], sem="relaxed")
        tl.atomic_add(grad_value_acc_ptr + i01[:, None] + ch[None, :], (uy * wx2 * ag).to(acc_ty),
                      mask=m & in01[:, None], sem="relaxed")
        tl.atomic_add(grad_value_acc_ptr + i10[:, None] + ch[None, :], (wy2 * ux * ag).to(acc_ty),
                      mask=m & in10[:, None], sem="relaxed")
        tl.atomic_add(grad_value_acc_ptr + i11[:, None] + ch[None, :], (wy2 * wx2 * ag).to(acc_ty),
                      mask=m & in11[:, None], sem="relaxed")
    A1 = alpha1 * amp
    gty = grad_offset_ptr.dtype.element_ty
    tl.store(grad_offset_ptr + 2 * qg, (A1 * sum_dx * dx_draw).to(gty), mask=q_mask)
    tl.store(grad_offset_ptr + 2 * qg + 1, (A1 * sum_dy * dy_draw).to(gty), mask=q_mask)
    if HAS_AMPLITUDE:
        tl.store(grad_amplitude_ptr + qg, (alpha1 * sum_gS).to(gty), mask=q_mask)
    if HAS_ALPHA:
        pty = alpha_partials_ptr.dtype.element_ty
        tl.store(alpha_partials_ptr + 2 * qg, (amp * sum_gS).to(pty), mask=q_mask)
        tl.store(alpha_partials_ptr + 2 * qg + 1, sum_gR.to(pty), mask=q_mask)
