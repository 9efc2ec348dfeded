"""The plugin site: a two-way transformer's forward (SAM's `TwoWayTransformer`, which HQ-SAM and
SAM 2 reuse) re-expressed over its own frozen submodules, so that one token-to-image attention,
`transformer.layers[1]`'s, can take other keys/values.

Nothing here owns parameters: every call goes to the modules passed in, so with no keys function
the result is the base model's. Every family's decoder adapter runs its transformer through
`transformer_forward`. Image tokens are (N, H*W, C), row-major (y * W + x), the same memory as
(N, H, W, C).
"""

import math
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor, nn
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock

# (x_p tokens (N, HW, C), queries (N, T, C)) -> keys/values for the site's token-to-image attention
KeysFn = Callable[[Tensor, Tensor], Tensor]

PLUGIN_LAYER = 1  # transformer.layers[1], the second two-way block (paper Fig. 3)


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
    record_token: int = 0,
    module_attention: bool = False,
) -> Tuple[Tensor, Tensor]:
    """TwoWayAttentionBlock.forward with the token-to-image keys/values from keys_fn.

    Only that attention sees the new keys; it adds key_pe of the regular grid (each deformed
    feature stands in for the token of its query pixel). The image-to-token attention and the
    returned keys stay on the regular grid. `record["attention"]` receives the
    weights of token `record_token` (the family's output mask token t_o) over image tokens,
    averaged over heads: (N, H*W).

    keys may be one image's tokens (1, HW, C) for the N prompts of queries (N, T, C) (layer 0
    without keys_fn): its projections are then computed once, not once per prompt.

    module_attention calls the block's cross-attention modules themselves on the tokens as SAM 2
    lays them out (`transformer_forward`): SAM 2's run F.scaled_dot_product_attention, whose
    rounding the hand-written attention here does not reproduce, so its decoder stays SAM 2's
    bit for bit.
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
    n = q.shape[0]
    if values.shape[0] == 1 and not module_attention:
        attn_out = token_to_shared_image_attention(block.cross_attn_token_to_image, q, k, values)
    else:
        attn_out = block.cross_attn_token_to_image(q=q, k=k.expand(n, -1, -1),
                                                   v=values.expand(n, -1, -1))
    queries = block.norm2(queries + attn_out)
    if record is not None:
        t_o = slice(record_token, record_token + 1)
        probs = attention_probs(block.cross_attn_token_to_image, q[:, t_o], k)
        record["attention"] = probs.mean(dim=1)[:, 0]

    queries = block.norm3(queries + block.mlp(queries))

    q = queries + query_pe
    k = k if values is keys else keys + key_pe
    if module_attention:
        attn_out = block.cross_attn_image_to_token(q=k.expand(n, -1, -1), k=q, v=queries)
    else:
        attn_out = image_to_token_attention(block.cross_attn_image_to_token, k, q, queries)
    keys = block.norm4(keys + attn_out)
    return queries, keys


def _sam2_token_layout(image_embedding: Tensor, image_pe: Tensor, n: int) -> Tuple[Tensor, Tensor]:
    """Image tokens and their positional encoding (N, HW, C) as SAM 2's TwoWayTransformer
    makes them: channels-first views (flatten(2).permute(0, 2, 1)) of its inputs, the
    positional encoding repeated to the N prompts (repeat_interleave) as its MaskDecoder does.

    The memory layout is part of the arithmetic: the attention projections of a channels-first
    view and of a contiguous copy select different GEMM blockings on some CPUs, whose sums
    round differently (1e-7 on the logits), so equal values alone do not keep SAM 2's bits.
    """
    if image_pe.shape[0] != n:
        image_pe = torch.repeat_interleave(image_pe, n, dim=0)
    return image_embedding.flatten(2).permute(0, 2, 1), image_pe.flatten(2).permute(0, 2, 1)


def transformer_forward(
    transformer: nn.Module,
    image_embedding: Tensor,
    image_pe: Tensor,
    point_embedding: Tensor,
    keys_fn: Optional[KeysFn] = None,
    record: Optional[Dict[str, Tensor]] = None,
    record_token: int = 0,
    module_attention: bool = False,
) -> Tuple[Tensor, Tensor]:
    """TwoWayTransformer.forward, every block through `block_forward` (keys_fn and record at
    layers[PLUGIN_LAYER] only; module_attention as there).

    image_embedding (1 or N, C, H, W); image_pe (1 or N, C, H, W), broadcast rather than
    repeated (repeated under module_attention, as SAM 2 does). One image embedding is shared by the N prompts of point_embedding (N, T, C) up to
    the first block that makes the keys the prompt's own.
    """
    if module_attention:
        image_tokens, key_pe = _sam2_token_layout(image_embedding, image_pe,
                                                  point_embedding.shape[0])
    else:
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
            record_token,
            module_attention,
        )
    q = queries + point_embedding
    k = keys + key_pe
    queries = transformer.norm_final_attn(
        queries + transformer.final_attn_token_to_image(q=q, k=k, v=keys)
    )
    return queries, keys
