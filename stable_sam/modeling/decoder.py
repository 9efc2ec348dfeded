"""SAM's mask decoder forward, re-expressed over SAM's own (frozen) submodules so that one
token-to-image attention can take other keys/values (the plugin site, `transformer.layers[1]`).

Nothing here owns parameters: every call goes to the modules of the `MaskDecoder` passed in, so
with no keys function the result is SAM's. Image tokens are (N, H*W, C), row-major (y * W + x),
the same memory as (N, H, W, C).
"""

import math
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
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
    queries = block.norm2(queries + block.cross_attn_token_to_image(q=q, k=k, v=values))
    if record is not None:
        t_o = slice(OUTPUT_MASK_TOKEN, OUTPUT_MASK_TOKEN + 1)
        probs = attention_probs(block.cross_attn_token_to_image, q[:, t_o], k)
        record["attention"] = probs.mean(dim=1)[:, 0]

    queries = block.norm3(queries + block.mlp(queries))

    q = queries + query_pe
    k = keys + key_pe
    keys = block.norm4(keys + block.cross_attn_image_to_token(q=k, k=q, v=queries))
    return queries, keys


def transformer_forward(
    transformer: nn.Module,
    image_embedding: Tensor,
    image_pe: Tensor,
    point_embedding: Tensor,
    keys_fn: Optional[KeysFn] = None,
    record: Optional[Dict[str, Tensor]] = None,
) -> Tuple[Tensor, Tensor]:
    """TwoWayTransformer.forward; layers[PLUGIN_LAYER] runs through `block_forward`.

    image_embedding (N, C, H, W); image_pe (1 or N, C, H, W), broadcast rather than repeated.
    """
    image_tokens = image_embedding.flatten(2).permute(0, 2, 1)
    key_pe = image_pe.flatten(2).permute(0, 2, 1)
    queries, keys = point_embedding, image_tokens
    for index, layer in enumerate(transformer.layers):
        if index == PLUGIN_LAYER:
            queries, keys = block_forward(
                layer, queries, keys, point_embedding, key_pe, keys_fn, record
            )
        else:
            queries, keys = layer(
                queries=queries, keys=keys, query_pe=point_embedding, key_pe=key_pe
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
    src = image_embeddings + dense_prompt_embeddings
    if src.shape[0] != n:
        src = src.expand(n, -1, -1, -1)
    _, c, h, w = src.shape

    hs, image_tokens = transformer_forward(
        decoder.transformer, src, image_pe, tokens, keys_fn, record
    )
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : 1 + decoder.num_mask_tokens, :]

    upscaled = decoder.output_upscaling(image_tokens.transpose(1, 2).reshape(n, c, h, w))
    hyper_in: List[Tensor] = [
        mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)
    ]
    _, cu, hu, wu = upscaled.shape
    masks = (torch.stack(hyper_in, dim=1) @ upscaled.view(n, cu, hu * wu)).view(n, -1, hu, wu)
    return masks, decoder.iou_prediction_head(iou_token_out)
