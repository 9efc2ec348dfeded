"""SAM's mask decoder (`MaskDecoder.predict_masks`), re-expressed over its own frozen submodules
with the two-way transformer run by `stable_sam.plugins.two_way_site`, so that layer 2's
token-to-image attention can take the plugins' keys/values. Nothing here owns parameters: with no
keys function the result is SAM's. Used by every model built on segment_anything's `Sam` (the
SAM types and the demo model).
"""

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MaskDecoder

from ...plugins.two_way_site import KeysFn, transformer_forward

# t_o (paper eq. 5, "the prompt token feature corresponding to the output mask"): decoder token
# 1, SAM's single-mask token (token 0 is the IoU token). It stays t_o with
# multimask_output=True, whose masks come from tokens 2-4: the routing weights are one pair per
# prompt, shared by every output token's attention, and the DRP is trained on this token only
# (the training loss reads the single mask), so another token would feed it unseen inputs.
OUTPUT_MASK_TOKEN = 1


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
        decoder.transformer, src, image_pe, tokens, keys_fn, record, OUTPUT_MASK_TOKEN
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
