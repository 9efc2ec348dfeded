"""SAM 2's mask decoder (sam2 `MaskDecoder.predict_masks` and the mask selection of its
`forward`), re-expressed over its own frozen submodules, with the two-way transformer run by
`stable_sam.plugins.two_way_site` so that layer 2's token-to-image attention can take the
plugins' keys/values.

Nothing here owns parameters: with no keys function the result is SAM 2's, bit for bit (the
site calls SAM 2's attention modules themselves, see `transformer_forward(module_attention=)`).
The output tokens are [object-score token (with pred_obj_scores), IoU token, mask tokens x 4],
followed by the sparse prompt tokens; the high-resolution features (conv_s0 / conv_s1 of the
image encoder's first two levels, applied once per image by SAM2Base.forward_image) are added
during the upscaling.
"""

from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ...plugins.two_way_site import KeysFn, transformer_forward


def first_output_token(mask_decoder: nn.Module) -> int:
    """Index of the IoU token: 1 when the object-score token comes first (pred_obj_scores)."""
    return 1 if mask_decoder.pred_obj_scores else 0


def output_mask_token(mask_decoder: nn.Module) -> int:
    """t_o (paper eq. 5): the single-mask token, right after the IoU token. As on SAM it stays
    t_o with multimask_output and when dynamic_multimask_via_stability swaps in a multimask
    output: the routing weights are one pair per prompt, shared by every output token."""
    return first_output_token(mask_decoder) + 1


def _check_batch(name: str, t: Tensor, n: int) -> None:
    if t.dim() != 4 or t.shape[0] not in (1, n):
        raise ValueError(
            f"{name} must be (1 or N, C, H, W) with N = {n} prompts, got {tuple(t.shape)}"
        )


def predict_masks(
    mask_decoder: nn.Module,
    image_embeddings: Tensor,
    image_pe: Tensor,
    sparse_prompt_embeddings: Tensor,
    dense_prompt_embeddings: Tensor,
    high_res_features: Optional[Sequence[Tensor]] = None,
    keys_fn: Optional[KeysFn] = None,
    record: Optional[Dict[str, Tensor]] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """sam2 MaskDecoder.predict_masks: all mask tokens' logits (N, 4, 4h, 4w), their IoU scores
    (N, 4) and the object-score logits (N, 1).

    image_embeddings, image_pe, dense_prompt_embeddings and each of high_res_features
    ([feat_s0 (C/8, 4h, 4w), feat_s1 (C/4, 2h, 2w)], needed when the decoder uses them) may have
    batch 1 (shared by the N prompts) or batch N (one per prompt); SAM 2's repeat_image
    corresponds to batch 1 here.
    """
    n = sparse_prompt_embeddings.shape[0]
    inputs = [("image_embeddings", image_embeddings), ("image_pe", image_pe),
              ("dense_prompt_embeddings", dense_prompt_embeddings)]
    if mask_decoder.use_high_res_features:
        if high_res_features is None or len(high_res_features) != 2:
            raise ValueError("this SAM 2 decoder adds high-resolution features: pass "
                             "high_res_features = [feat_s0, feat_s1] from the image encoding")
        inputs += [("high_res_features[0]", high_res_features[0]),
                   ("high_res_features[1]", high_res_features[1])]
    for name, t in inputs:
        _check_batch(name, t, n)

    first = first_output_token(mask_decoder)
    weights = [mask_decoder.iou_token.weight, mask_decoder.mask_tokens.weight]
    if mask_decoder.pred_obj_scores:
        weights.insert(0, mask_decoder.obj_score_token.weight)
    output_tokens = torch.cat(weights, dim=0)
    tokens = torch.cat(
        (output_tokens.unsqueeze(0).expand(n, -1, -1), sparse_prompt_embeddings), dim=1
    )
    if image_embeddings.shape[0] != n:
        # SAM 2's repeat_image: a real copy, not a broadcast, since its memory layout (contiguous
        # channels-first, where the encoder's embedding is channels-last) decides the rounding
        # of every attention projection after it (two_way_site._sam2_token_layout)
        image_embeddings = torch.repeat_interleave(image_embeddings, n, dim=0)
    src = image_embeddings + dense_prompt_embeddings
    _, c, h, w = src.shape

    hs, image_tokens = transformer_forward(
        mask_decoder.transformer, src, image_pe, tokens, keys_fn, record,
        output_mask_token(mask_decoder), module_attention=True,
    )
    mask_tokens_out = hs[:, first + 1:first + 1 + mask_decoder.num_mask_tokens, :]

    src = image_tokens.transpose(1, 2).reshape(n, c, h, w)
    if mask_decoder.use_high_res_features:
        up1, norm, act1, up2, act2 = mask_decoder.output_upscaling
        feat_s0, feat_s1 = high_res_features
        upscaled = act2(up2(act1(norm(up1(src) + feat_s1))) + feat_s0)
    else:
        upscaled = mask_decoder.output_upscaling(src)
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :])
         for i, mlp in enumerate(mask_decoder.output_hypernetworks_mlps)], dim=1)
    _, cu, hu, wu = upscaled.shape
    masks = (hyper_in @ upscaled.view(n, cu, hu * wu)).view(n, -1, hu, wu)

    iou_pred = mask_decoder.iou_prediction_head(hs[:, first, :])
    if mask_decoder.pred_obj_scores:
        object_score_logits = mask_decoder.pred_obj_score_head(hs[:, 0, :])
    else:  # SAM 2's constant: the object is present
        object_score_logits = 10.0 * iou_pred.new_ones(iou_pred.shape[0], 1)
    return masks, iou_pred, object_score_logits


def select_masks(mask_decoder: nn.Module, masks: Tensor, iou_pred: Tensor,
                 multimask_output: bool, dynamic_multimask: bool) -> Tuple[Tensor, Tensor]:
    """sam2 MaskDecoder.forward's choice among all tokens' masks (N, 4, ...) and scores (N, 4):
    the three multimask outputs; or the single mask, which with dynamic_multimask (SAM 2's
    dynamic_multimask_via_stability, applied by SAM 2 outside training) falls back, prompt by
    prompt, to the best-scored multimask output when its stability score is below the
    decoder's threshold (SAM 2's own method does the test)."""
    if multimask_output:
        return masks[:, 1:], iou_pred[:, 1:]
    if dynamic_multimask:
        return mask_decoder._dynamic_multimask_via_stability(masks, iou_pred)
    return masks[:, 0:1], iou_pred[:, 0:1]
