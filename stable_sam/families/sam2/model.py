"""StableSam2: a frozen SAM 2.1 (sam2 `SAM2Base`) plus Stable-SAM's plugins at the same site as
on SAM, layer 2's token-to-image attention of its mask decoder."""

from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...plugins import PluginConfig, StableSamPlugins
from ...plugins.two_way_site import PLUGIN_LAYER
from . import decoder as sam2_decoder

# SAM2Transforms' normalisation, on the 0-255 scale of the training pipeline's images
_PIXEL_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_PIXEL_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


class Sam2ImageEncoding:
    """SAM 2's image encoding as SAM2ImagePredictor.set_image does it, callable like a SAM image
    encoder: images (B, 3, S, S), normalised -> {"image_embed": (B, C, S/16, S/16),
    "high_res_feats": [(B, C/8, S/4, S/4), (B, C/4, S/8, S/8)]} (the last two through the
    decoder's conv_s0 / conv_s1, no_mem_embed added to the embedding when the model does so).
    `img_size` is the square input side S. It holds no parameters (the model's own are used)."""

    def __init__(self, sam2_model: nn.Module) -> None:
        self.sam2_model = sam2_model
        self.img_size = int(sam2_model.image_size)

    def feature_sizes(self) -> List[Tuple[int, int]]:
        """(h, w) of high_res_feats[0], high_res_feats[1] and image_embed."""
        stride = int(self.sam2_model.backbone_stride)
        return [(self.img_size * 4 // stride,) * 2, (self.img_size * 2 // stride,) * 2,
                (self.img_size // stride,) * 2]

    def __call__(self, images: Tensor) -> Dict[str, Union[Tensor, List[Tensor]]]:
        model = self.sam2_model
        backbone_out = model.forward_image(images)
        _, vision_feats, _, _ = model._prepare_backbone_features(backbone_out)
        if model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
        b = images.shape[0]
        feats = [feat.permute(1, 2, 0).view(b, -1, *size)
                 for feat, size in zip(vision_feats, self.feature_sizes())]
        return {"image_embed": feats[-1], "high_res_feats": feats[:-1]}


class StableSam2(nn.Module):
    """Stable-SAM around an unmodified SAM 2.1 (`sam2.modeling.sam2_base.SAM2Base`).

    `self.sam` keeps SAM 2's modules and state-dict keys (the official sam2.1_hiera_*.pt load
    strictly into it, memory modules included) and is frozen; `self.plugins` are the only
    trainable parameters. The mask decoder runs through `stable_sam.families.sam2.decoder`,
    which calls SAM 2's own submodules.

    t_o, the token that drives the routing plugin and whose attention is reported, is SAM 2's
    single-mask token: decoder token 1, or 2 when the object-score token comes first
    (pred_obj_scores, as in every SAM 2.1 config).

    dynamic_multimask_via_stability (on in build_sam2) is applied as SAM 2's frozen (eval-mode)
    decoder applies it, on the single-mask output; `decode(dynamic_multimask=False)` returns the
    single-mask token's mask regardless, as SAM 2 trains and as RTS training reads it.

    Arguments:
      sam (SAM2Base): a SAM 2 model (decoder width must be config.embed_dim).
      plugin_config (PluginConfig or None): plugin hyper-parameters; None for the defaults.
      model_type (str or None): registry name ("sam2.1_hiera_large", ...).
      op_backend (str): backend of stable_sam_ops.deformable_sample.
    """

    def __init__(self, sam: nn.Module, plugin_config: Optional[PluginConfig] = None, *,
                 model_type: Optional[str] = None, op_backend: str = "auto") -> None:
        super().__init__()
        config = plugin_config if plugin_config is not None else PluginConfig()
        mask_decoder = sam.sam_mask_decoder
        if len(mask_decoder.transformer.layers) <= PLUGIN_LAYER:
            raise ValueError(
                f"SAM 2's decoder transformer needs at least {PLUGIN_LAYER + 1} layers for "
                f"the plugin site, has {len(mask_decoder.transformer.layers)}")
        if mask_decoder.transformer_dim != config.embed_dim:
            raise ValueError(
                f"plugin_config.embed_dim ({config.embed_dim}) must equal SAM 2's decoder "
                f"width ({mask_decoder.transformer_dim})")
        self.sam = sam
        self.plugins = StableSamPlugins(config, op_backend=op_backend)
        self.model_type = model_type
        self.sam.requires_grad_(False)
        self.sam.eval()
        self.register_buffer("pixel_mean", torch.tensor(_PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(_PIXEL_STD).view(-1, 1, 1), False)

    # -- SAM 2's parts, and the SAM-style names the training and command code reads -------------
    @property
    def image_encoder(self) -> Sam2ImageEncoding:
        """SAM 2's image encoding as its image predictor runs it (see Sam2ImageEncoding)."""
        return Sam2ImageEncoding(self.sam)

    @property
    def prompt_encoder(self) -> nn.Module:
        return self.sam.sam_prompt_encoder

    @property
    def mask_decoder(self) -> nn.Module:
        """SAM 2's own decoder: calling it directly gives SAM 2's masks (no plugins)."""
        return self.sam.sam_mask_decoder

    @property
    def image_size(self) -> int:
        return int(self.sam.image_size)

    @property
    def mask_threshold(self) -> float:
        return 0.0  # SAM2ImagePredictor's default

    @property
    def image_format(self) -> str:
        return "RGB"

    @property
    def device(self) -> torch.device:
        return self.sam.device

    @property
    def plugin_config(self) -> PluginConfig:
        return self.plugins.config

    def encode_prompts(self, points: Optional[Tuple[Tensor, Tensor]] = None,
                       boxes: Optional[Tensor] = None,
                       masks: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """SAM 2's prompt encoder as SAM2ImagePredictor calls it: boxes (B, 4) become two points
        labelled 2 and 3 ahead of the clicks (its `boxes` argument would embed them without
        the padding point, another input than SAM 2 sees from its predictor)."""
        if boxes is not None:
            box_points = boxes.reshape(-1, 2, 2)
            box_labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device)
            box_labels = box_labels.repeat(box_points.shape[0], 1)
            points = (box_points, box_labels) if points is None else (
                torch.cat([box_points, points[0]], dim=1),
                torch.cat([box_labels, points[1].to(box_labels.dtype)], dim=1))
        return self.prompt_encoder(points=points, boxes=None, masks=masks)

    def preprocess(self, x: Tensor) -> Tensor:
        """Images of the training pipeline (0-255, longest side resized to image_size) ->
        SAM2Transforms' normalisation, padded bottom/right to the square input. (SAM 2's own
        predictor stretches the image to the square instead; see the README.)"""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.image_size - w, 0, self.image_size - h))

    def postprocess_masks(self, masks: Tensor, input_size: Tuple[int, ...],
                          original_size: Tuple[int, ...]) -> Tensor:
        """Low-res logits of a padded input (see preprocess) -> logits at original_size."""
        masks = F.interpolate(masks, (self.image_size, self.image_size), mode="bilinear",
                              align_corners=False)
        masks = masks[..., :input_size[0], :input_size[1]]
        return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)

    # -- training helpers ------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "StableSam2":
        super().train(mode)
        self.sam.eval()  # frozen SAM 2, as SAM's
        return self

    def plugin_parameters(self) -> Iterator[nn.Parameter]:
        return self.plugins.parameters()

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def extra_repr(self) -> str:
        return (f"model_type={self.model_type!r}, "
                f"trainable_parameters={self.num_trainable_parameters():,}")

    # -- decoding --------------------------------------------------------------------------------
    def decode(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
        high_res_features: Optional[Sequence[Tensor]] = None,
        *,
        dynamic_multimask: Optional[bool] = None,
        use_plugins: bool = True,
        return_extras: bool = False,
    ) -> Union[Tuple[Tensor, Tensor], Tuple[Tensor, Tensor, Dict[str, Tensor]]]:
        """Stable-SAM's mask decoder on SAM 2: sam2 MaskDecoder.forward's masks and scores.

        Arguments:
          image_embeddings (Tensor[1 or N, 256, h, w]): "image_embed" of the image encoding,
            one shared by the N prompts or one per prompt.
          image_pe (Tensor[1, 256, h, w]): prompt_encoder.get_dense_pe().
          sparse_prompt_embeddings (Tensor[N, S, 256]), dense_prompt_embeddings
            (Tensor[1 or N, 256, h, w]): SAM 2's prompt encoder's outputs (a box is two points
            labelled 2 and 3, as SAM2ImagePredictor passes it).
          multimask_output (bool): the three multimask outputs instead of the single mask.
          high_res_features (list of 2 Tensors, batch 1 or N): "high_res_feats" of the encoding.
          dynamic_multimask (bool or None): the single mask falls back to the best multimask
            output when unstable; None: the decoder's dynamic_multimask_via_stability.
          use_plugins (bool): False runs plain SAM 2 (the same decoder code path).
          return_extras (bool): also return a dict of layer 2's plug-in state ("alpha",
            "sampling_locations", "amplitude", "attention"; see StableSam.decode).

        Returns:
          low_res_masks (Tensor[N, M, 4h, 4w]) logits, M = 3 or 1, iou_predictions
          (Tensor[N, M]), and with return_extras the dict.
        """
        mask_decoder = self.sam.sam_mask_decoder
        n = sparse_prompt_embeddings.shape[0]
        h, w = image_embeddings.shape[-2:]
        t_o = sam2_decoder.output_mask_token(mask_decoder)
        state: Dict[str, Tensor] = {}

        def plugin_keys(x_p: Tensor, queries: Tensor) -> Tensor:
            c = x_p.shape[-1]
            keys, extras = self.plugins(x_p.reshape(-1, h, w, c), queries[:, t_o])
            state.update(extras)
            return keys.view(n, h * w, c)

        record: Optional[Dict[str, Tensor]] = {} if return_extras else None
        masks, iou_pred, _ = sam2_decoder.predict_masks(
            mask_decoder, image_embeddings, image_pe, sparse_prompt_embeddings,
            dense_prompt_embeddings, high_res_features,
            keys_fn=plugin_keys if use_plugins else None, record=record,
        )
        dynamic = (bool(mask_decoder.dynamic_multimask_via_stability)
                   if dynamic_multimask is None else dynamic_multimask)
        masks, iou_pred = sam2_decoder.select_masks(mask_decoder, masks, iou_pred,
                                                    multimask_output, dynamic)
        if not return_extras:
            return masks, iou_pred
        return masks, iou_pred, self._extras(state, record, n, h, w, masks)

    def _extras(self, state: Dict[str, Tensor], record: Dict[str, Tensor], n: int, h: int,
                w: int, like: Tensor) -> Dict[str, Tensor]:
        if state:
            alpha, offset, amplitude = state["alpha"], state["offset"], state["amplitude"]
            if alpha.shape[0] != n:  # x_p of one shared image: the same for every prompt
                alpha = alpha.expand(n, -1)
        else:  # plain SAM 2: regular grid, all weight on x_p
            g = self.plugins.config.num_groups
            alpha = like.new_tensor([0.0, 1.0]).expand(n, 2)
            offset = like.new_zeros(1, h, w, g, 2)
            amplitude = like.new_ones(1, h, w, g)
        return {
            "alpha": alpha,
            "sampling_locations": self.plugins.sampling_locations(offset).expand(n, -1, -1, -1, -1),
            "amplitude": amplitude.expand(n, -1, -1, -1),
            "attention": record["attention"].reshape(n, h, w),
        }
