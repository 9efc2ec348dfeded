"""HQ-SAM's mask decoder forward (segment_anything_hq `MaskDecoderHQ`), re-expressed over its own
(frozen) submodules, with the two-way transformer run by `stable_sam.plugins.two_way_site` so that
layer 2's token-to-image attention can take the plugins' keys/values.

Nothing here owns parameters: with no keys function the result is HQ-SAM's. The output tokens are
[IoU token, SAM's mask tokens x 4, HQ token], followed by the sparse prompt tokens.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ...plugins.two_way_site import KeysFn, transformer_forward


def hq_token_index(mask_decoder: nn.Module) -> int:
    """Index of the HQ output token in the decoder's token sequence. MaskDecoderHQ counts it in
    `num_mask_tokens` (SAM's 4 + 1), and the IoU token comes first, so it sits right after
    SAM's mask tokens."""
    return int(mask_decoder.num_mask_tokens)


def hq_features(mask_decoder: nn.Module, image_embeddings: Tensor,
                interm_embeddings: Sequence[Tensor]) -> Tensor:
    """MaskDecoderHQ's fused high-quality features (B, C/8, 4h, 4w) from the final image
    embedding (B, C, h, w) and the early ViT feature `interm_embeddings[0]` (B, h, w, vit_dim)."""
    vit_features = interm_embeddings[0].permute(0, 3, 1, 2)
    return (mask_decoder.embedding_encoder(image_embeddings)
            + mask_decoder.compress_vit_feat(vit_features))


def _check_batch(name: str, t: Tensor, n: int) -> None:
    if t.dim() != 4 or t.shape[0] not in (1, n):
        raise ValueError(
            f"{name} must be (1 or N, C, H, W) with N = {n} prompts, got {tuple(t.shape)}"
        )


def predict_masks_hq(
    mask_decoder: nn.Module,
    image_embeddings: Tensor,
    image_pe: Tensor,
    sparse_prompt_embeddings: Tensor,
    dense_prompt_embeddings: Tensor,
    high_quality_features: Tensor,
    keys_fn: Optional[KeysFn] = None,
    record: Optional[Dict[str, Tensor]] = None,
) -> Tuple[Tensor, Tensor]:
    """MaskDecoderHQ.predict_masks: logits of all 5 mask tokens (N, 5, 4h, 4w), SAM's four
    first and the HQ token's last, and IoU scores of SAM's four (N, 4).

    image_embeddings, dense_prompt_embeddings, image_pe and high_quality_features (from
    `hq_features`) may have batch 1 (shared by the N prompts) or batch N (one per prompt).
    `record`, when given, receives "attention": the HQ token's weights in layer 2's
    token-to-image attention (N, H*W).
    """
    n = sparse_prompt_embeddings.shape[0]
    for name, t in (("image_embeddings", image_embeddings),
                    ("dense_prompt_embeddings", dense_prompt_embeddings),
                    ("image_pe", image_pe),
                    ("high_quality_features", high_quality_features)):
        _check_batch(name, t, n)

    output_tokens = torch.cat([mask_decoder.iou_token.weight, mask_decoder.mask_tokens.weight,
                               mask_decoder.hf_token.weight], dim=0)
    tokens = torch.cat(
        (output_tokens.unsqueeze(0).expand(n, -1, -1), sparse_prompt_embeddings), dim=1
    )
    src = image_embeddings + dense_prompt_embeddings
    if src.shape[0] != n:
        src = src.expand(n, -1, -1, -1)
    _, c, h, w = src.shape

    hs, image_tokens = transformer_forward(
        mask_decoder.transformer, src, image_pe, tokens, keys_fn, record,
        hq_token_index(mask_decoder),
    )
    num_sam_tokens = mask_decoder.num_mask_tokens - 1
    mask_tokens_out = hs[:, 1:1 + mask_decoder.num_mask_tokens, :]

    upscaled_sam = mask_decoder.output_upscaling(image_tokens.transpose(1, 2).reshape(n, c, h, w))
    upscaled_hq = mask_decoder.embedding_maskfeature(upscaled_sam) + high_quality_features
    hyper_sam: List[Tensor] = [
        mlp(mask_tokens_out[:, i, :])
        for i, mlp in enumerate(mask_decoder.output_hypernetworks_mlps)
    ]
    hyper_hq = mask_decoder.hf_mlp(mask_tokens_out[:, num_sam_tokens, :])
    _, cu, hu, wu = upscaled_sam.shape
    masks_sam = torch.stack(hyper_sam, dim=1) @ upscaled_sam.view(n, cu, hu * wu)
    masks_hq = hyper_hq.unsqueeze(1) @ upscaled_hq.reshape(n, cu, hu * wu)
    masks = torch.cat([masks_sam, masks_hq], dim=1).view(n, -1, hu, wu)
    return masks, mask_decoder.iou_prediction_head(hs[:, 0, :])


def select_masks_hq(masks: Tensor, iou_pred: Tensor, multimask_output: bool,
                    hq_token_only: bool) -> Tuple[Tensor, Tensor]:
    """MaskDecoderHQ.forward's output (N, 1, 4h, 4w) logits and (N, 1) scores from all tokens'
    masks (N, 5, ...) and SAM's IoU scores (N, 4).

    SAM's part is its single-mask token, or with multimask_output the best-scored of its three
    multimask tokens; the HQ token's mask is added to it, or replaces it with hq_token_only.
    """
    hq_mask = masks[:, -1:]
    if multimask_output:
        best_iou, best = iou_pred[:, 1:].max(dim=1)
        sam_mask = masks[torch.arange(masks.shape[0], device=masks.device), 1 + best].unsqueeze(1)
        iou = best_iou.unsqueeze(1)
    else:
        sam_mask, iou = masks[:, :1], iou_pred[:, :1]
    return (hq_mask if hq_token_only else sam_mask + hq_mask), iou
