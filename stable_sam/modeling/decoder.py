"""SAM's mask decoder forward, re-expressed over SAM's own (frozen) submodules so that one
token-to-image attention can take other keys/values (the plugin site, `transformer.layers[1]`).

Nothing here owns parameters: every call goes to the modules of the `MaskDecoder` passed in, so
with no keys function the result is SAM's. Image tokens are (N, H*W, C), row-major (y * W + x),
the same memory as (N, H, W, C).
"""

import math
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor, nn
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MaskDecoder
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock

# (x_p tokens (N, HW, C), queries (N, T, C)) -> keys/values for the site's token-to-image attention
KeysFn = Callable[[Tensor, Tensor], Tensor]

PLUGIN_LAYER = 1  # transformer.layers[1], the second two-way block (paper Fig. 3)
# t_o (paper eq. 5, "the prompt token feature corresponding to the output mask"): decoder token
# 1, SAM's single-mask token (token 0 is the IoU token). It stays t_o with
# multimask_output=True, whose masks come from tokens 2-4: the routing weights are one pair per
# prompt, shared by every output token's attention, and the DRP is trained on this token only
# (the training loss reads the single mask), so another token would feed it unseen inputs.
OUTPUT_MASK_TOKEN = 1


def attention_probs(attn: Attention, q: Tensor, k: Tensor) -> Tensor:
    """Softmax weights of SAM's `Attention` for queries q (N, Tq, C) over keys k (N, Tk, C):
    (N, heads, Tq, Tk). Mirrors Attention.forward's scores without computing its output."""
    heads = attn.num_heads
    qh = attn.q_proj(q)
    kh = attn.k_proj(k)
    n, tq, d = qh.shape
    qh = qh.view(n, tq, heads, d // heads).transpose(1, 2)
    kh = kh.reshape(kh.shape[0], kh.shape[1], heads, d // heads).transpose(1, 2)
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(d // heads)
    return torch.softmax(scores, dim=-1)


def _heads(x: Tensor, heads: int) -> Tensor:
    """(B, T, D) -> (B, heads, T, D / heads), as Attention._separate_heads."""
    b, t, d = x.shape
    return x.reshape(b, t, heads, d // heads).transpose(1, 2)


def _attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Attention.forward's softmax(q k^T / sqrt(d)) v on projected, head-split tensors."""
    attn = q @ k.transpose(-1, -2)
    attn = attn / math.sqrt(q.shape[-1])
    return torch.softmax(attn, dim=-1) @ v


def token_to_shared_image_attention(
    attn: Attention, q: Tensor, k: Tensor, v: Tensor
) -> Tensor:
    """attn(q, k, v) for N prompts' tokens q (N, T, C) over one image's keys k, v (1, HW, C).

    SAM's call repeats the image per prompt: this projects its keys and values once and folds
    the prompts into the query rows of one attention (each row's softmax is its own).
    """
    n, t, _ = q.shape
    heads = attn.num_heads
    qh = _heads(attn.q_proj(q), heads)  # (N, heads, T, d)
    qh = qh.transpose(0, 1).reshape(1, heads, n * t, -1)
    out = _attend(qh, _heads(attn.k_proj(k), heads), _heads(attn.v_proj(v), heads))
    out = out.view(heads, n, t, -1).permute(1, 2, 0, 3).reshape(n, t, -1)
    return attn.out_proj(out)


def image_to_token_attention(attn: Attention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """attn(q, k, v) for image tokens q (1 or N, HW, C) over N prompts' tokens k, v (N, T, C).

    The scores are laid out (T, HW) per head, so that the softmax over the few prompt tokens
    runs across contiguous rows of HW values (over rows of T = 7 values it costs as much as the
    projections). One image's tokens q (batch 1) are projected once, the prompts folded into
    the rows of one product per head.
    """
    n, t, _ = k.shape
    heads = attn.num_heads
    qh = attn.q_proj(q)
    b, hw, dim = qh.shape
    kh = attn.k_proj(k).view(n, t, heads, -1)
    vh = attn.v_proj(v).view(n, t, heads, -1)
    if b == 1:  # batches (head, prompt)
        qt = qh.view(hw, heads, -1).permute(1, 2, 0)  # (heads, d, HW)
        scores = (kh.permute(2, 0, 1, 3).reshape(heads, n * t, -1) @ qt).view(heads * n, t, hw)
        vb = vh.permute(2, 0, 1, 3).reshape(heads * n, t, -1)
    else:  # batches (prompt, head)
        qt = qh.view(n, hw, heads, -1).permute(0, 2, 3, 1)  # (N, heads, d, HW)
        scores = (kh.transpose(1, 2) @ qt).view(n * heads, t, hw)
        vb = vh.transpose(1, 2).reshape(n * heads, t, -1)
    weights = torch.softmax(scores / math.sqrt(dim // heads), dim=1)
    out = weights.transpose(1, 2) @ vb  # (batches, HW, d)
    if b == 1:
        out = out.view(heads, n, hw, -1).permute(1, 2, 0, 3)
    else:
        out = out.view(n, heads, hw, -1).permute(0, 2, 1, 3)
    return attn.out_proj(out.reshape(n, hw, dim))


def block_forward(
    block: TwoWayAttentionBlock,
    queries: Tensor,
    keys: Tensor,
    query_pe: Tensor,
    key_pe: Tensor,
    keys_fn: Optional[KeysFn] = None,
    record: Optional[Dict[str, Tensor]] = None,
) -> Tuple[Tensor, Tensor]:
    """TwoWayAttentionBlock.forward with the token-to-image keys/values from keys_fn.

    Only that attention sees the new keys; it adds key_pe of the regular grid (each deformed
    feature stands in for the token of its query pixel). The image-to-token attention and the
    returned keys stay on the regular grid. `record["attention"]` receives the output mask
    token's weights over image tokens, averaged over heads: (N, H*W).

    keys may be one image's tokens (1, HW, C) for the N prompts of queries (N, T, C) (layer 0
    without keys_fn): its projections are then computed once, not once per prompt.
    """
    if block.skip_first_layer_pe:
        queries = block.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + block.self_attn(q=q, k=q, v=queries)
    queries = block.norm1(queries)

    values = keys if keys_fn is None else keys_fn(keys, queries)
    q = queries + query_pe
    k = values + key_pe
    if values.shape[0] == 1:
        attn_out = token_to_shared_image_attention(block.cross_attn_token_to_image, q, k, values)
    else:
        attn_out = block.cross_attn_token_to_image(q=q, k=k, v=values)
    queries = block.norm2(queries + attn_out)
    if record is not None:
        t_o = slice(OUTPUT_MASK_TOKEN, OUTPUT_MASK_TOKEN + 1)
        probs = attention_probs(block.cross_attn_token_to_image, q[:, t_o], k)
        record["attention"] = probs.mean(dim=1)[:, 0]

    queries = block.norm3(queries + block.mlp(queries))

    q = queries + query_pe
    k = k if values is keys else keys + key_pe
    attn_out = image_to_token_attention(block.cross_attn_image_to_token, k, q, queries)
    keys = block.norm4(keys + attn_out)
    return queries, keys


def transformer_forward(
    transformer: nn.Module,
    image_embedding: Tensor,
    image_pe: Tensor,
    point_embedding: Tensor,
    keys_fn: Optional[KeysFn] = None,
    record: Optional[Dict[str, Tensor]] = None,
) -> Tuple[Tensor, Tensor]:
    """TwoWayTransformer.forward, every block through `block_forward` (keys_fn and record at
    layers[PLUGIN_LAYER] only).

    image_embedding (1 or N, C, H, W); image_pe (1 or N, C, H, W), broadcast rather than
    repeated. One image embedding is shared by the N prompts of point_embedding (N, T, C) up to
    the first block that makes the keys the prompt's own.
    """
    image_tokens = image_embedding.flatten(2).transpose(1, 2).contiguous()
    # contiguous once: every block adds it to (N, HW, C) tokens, and a channels-first view
    # makes each of those adds a strided gather
    key_pe = image_pe.flatten(2).permute(0, 2, 1).contiguous()
    queries, keys = point_embedding, image_tokens
    for index, layer in enumerate(transformer.layers):
        site = index == PLUGIN_LAYER
        queries, keys = block_forward(
            layer,
            queries,
            keys,
            point_embedding,
            key_pe,
            keys_fn if site else None,
            record if site else None,
        )
    q = queries + point_embedding
    k = keys + key_pe
    queries = transformer.norm_final_attn(
        queries + transformer.final_attn_token_to_image(q=q, k=k, v=keys)
    )
    return queries, keys


def predict_masks(
    decoder: MaskDecoder,
    image_embeddings: Tensor,
    image_pe: Tensor,
    sparse_prompt_embeddings: Tensor,
    dense_prompt_embeddings: Tensor,
    keys_fn: Optional[KeysFn] = None,
    record: Optional[Dict[str, Tensor]] = None,
) -> Tuple[Tensor, Tensor]:
    """MaskDecoder.predict_masks: all mask tokens' logits (N, 4, 4h, 4w) and IoU scores (N, 4).

    image_embeddings may hold one embedding shared by all N prompts (batch 1, SAM's use) or one
    per prompt (batch N); SAM's repeat_interleave would pair a batch-B embedding with B*N
    prompts instead.
    """
    n = sparse_prompt_embeddings.shape[0]
    for name, t in (
        ("image_embeddings", image_embeddings),
        ("dense_prompt_embeddings", dense_prompt_embeddings),
    ):
        if t.dim() != 4 or t.shape[0] not in (1, n):
            raise ValueError(
                f"{name} must be (1 or N, C, H, W) with N = {n} prompts, got {tuple(t.shape)}"
            )
    if image_pe.dim() != 4 or image_pe.shape[0] not in (1, n):
        raise ValueError(f"image_pe must be (1 or N, C, H, W), got {tuple(image_pe.shape)}")

    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat(
        (output_tokens.unsqueeze(0).expand(n, -1, -1), sparse_prompt_embeddings), dim=1
    )
    # batch 1 when the N prompts share one embedding and no mask prompt: transformer_forward
    # then projects the image side of layer 0 once for all of them
    if n > 1 and dense_prompt_embeddings.stride(0) == 0:
        # the prompt encoder's no-mask embedding is one tensor expanded over the prompts
        dense_prompt_embeddings = dense_prompt_embeddings[:1]
    src = image_embeddings + dense_prompt_embeddings
    _, c, h, w = src.shape

    hs, image_tokens = transformer_forward(
        decoder.transformer, src, image_pe, tokens, keys_fn, record
    )
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : 1 + decoder.num_mask_tokens, :]

    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
        dim=1,
    )
    masks = upscaled_mask_logits(decoder.output_upscaling, image_tokens, h, w, hyper_in)
    return masks, decoder.iou_prediction_head(iou_token_out)


def _is_pixel_local_upscaling(upscaling: nn.Module) -> bool:
    """Whether `upscaling` is SAM's output_upscaling: (2x2 stride-2 transposed conv, LayerNorm2d,
    activation, 2x2 stride-2 transposed conv, activation)."""
    if not isinstance(upscaling, nn.Sequential) or len(upscaling) != 5:
        return False
    up1, norm, _, up2, _ = upscaling
    convs_ok = all(
        isinstance(m, nn.ConvTranspose2d)
        and m.kernel_size == (2, 2)
        and m.stride == (2, 2)
        and m.padding == (0, 0)
        and m.output_padding == (0, 0)
        and m.dilation == (1, 1)
        and m.groups == 1
        and m.bias is not None
        for m in (up1, up2)
    )
    return convs_ok and isinstance(norm, LayerNorm2d)


def _upsample_2x2(conv: nn.ConvTranspose2d, x: Tensor) -> Tensor:
    """A 2x2 stride-2 transposed conv on channels-last pixels x (..., C_in): each output pixel
    depends on one input pixel only, so it is one matrix product per pixel, (..., 2, 2, C_out)
    with the (dy, dx) sub-pixel before the channels."""
    c_in, c_out = conv.weight.shape[:2]
    weight = conv.weight.permute(2, 3, 1, 0).reshape(4 * c_out, c_in)  # rows (dy, dx, c_out)
    return nn.functional.linear(x, weight, conv.bias.repeat(4)).unflatten(-1, (2, 2, c_out))


def upscaled_mask_logits(
    upscaling: nn.Module, image_tokens: Tensor, h: int, w: int, hyper_in: Tensor
) -> Tensor:
    """hyper_in (N, M, C') times output_upscaling of the image tokens (N, h*w, C): the mask
    logits (N, M, 4h, 4w), as MaskDecoder.predict_masks computes them.

    SAM's upscaling (two 2x2 stride-2 transposed convs, LayerNorm2d and activations) is
    pixel-local: every 4x4 block of output pixels comes from one token. So it runs here on the
    channels-last tokens as matrix products and a channel LayerNorm, keeping each token's 16
    sub-pixels next to it, and only the M logit planes are put in image order at the end,
    instead of two NCHW transposed convolutions and an NCHW LayerNorm over 16x the pixels.
    """
    n, _, c = image_tokens.shape
    if not _is_pixel_local_upscaling(upscaling):
        upscaled = upscaling(image_tokens.transpose(1, 2).reshape(n, c, h, w))
        _, cu, hu, wu = upscaled.shape
        return (hyper_in @ upscaled.view(n, cu, hu * wu)).view(n, -1, hu, wu)
    up1, norm, act1, up2, act2 = upscaling
    x = _upsample_2x2(up1, image_tokens)  # (N, hw, dy, dx, C/4)
    x = act1(nn.functional.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps))
    x = act2(_upsample_2x2(up2, x))  # (N, hw, dy, dx, ey, ex, C/8)
    m = hyper_in.shape[1]
    logits = hyper_in @ x.view(n, -1, x.shape[-1]).transpose(1, 2)  # (N, M, hw * 16)
    # output row 4y + 2dy + ey, column 4x + 2dx + ex
    logits = logits.view(n, m, h, w, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
    return logits.reshape(n, m, 4 * h, 4 * w)
