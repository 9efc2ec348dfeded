"""StableSam: a frozen segment_anything `Sam` plus the DSP/DRP plugins in their own namespace."""

from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from segment_anything.modeling import Sam

from ...plugins import PluginConfig, StableSamPlugins
from ...plugins.two_way_site import PLUGIN_LAYER
from . import decoder


class StableSam(nn.Module):
    """Stable-SAM (arXiv 2311.15776) around an unmodified SAM.

    `self.sam` keeps SAM's modules and state-dict keys (an official checkpoint loads strictly into
    it); it is frozen (no parameter requires grad) and stays in eval mode when the model is
    `.train()`-ed. `self.plugins` holds the only trainable parameters. The mask decoder runs
    through `stable_sam.families.sam.decoder`, which calls SAM's own submodules and swaps the keys/values of
    `transformer.layers[1]`'s token-to-image attention for the plugins' output.

    Arguments:
      sam (Sam): a segment_anything SAM (any backbone; decoder width must be config.embed_dim).
      plugin_config (PluginConfig, dict of its fields, or None): None for the defaults.
      model_type (str or None): registry name ("vit_b", ...), checked when plugins are loaded.
      op_backend (str): backend of stable_sam_ops.deformable_sample ("auto", "cpu", ...).
    """

    def __init__(
        self,
        sam: Sam,
        plugin_config: Optional[PluginConfig] = None,
        *,
        model_type: Optional[str] = None,
        op_backend: str = "auto",
    ) -> None:
        super().__init__()
        config = PluginConfig.of(plugin_config)  # None: the defaults; a dict: its fields
        transformer = sam.mask_decoder.transformer
        if len(transformer.layers) <= PLUGIN_LAYER:
            raise ValueError(
                f"SAM's decoder transformer needs at least {PLUGIN_LAYER + 1} layers for "
                f"the plugin site, has {len(transformer.layers)}"
            )
        if sam.mask_decoder.transformer_dim != config.embed_dim:
            raise ValueError(
                f"plugin_config.embed_dim ({config.embed_dim}) must equal SAM's decoder width "
                f"({sam.mask_decoder.transformer_dim})"
            )
        self.sam = sam
        self.plugins = StableSamPlugins(config, op_backend=op_backend)
        self.model_type = model_type
        self.sam.requires_grad_(False)
        self.sam.eval()

    # -- SAM's interface, delegated, so SamPredictor-style code works ----------------------------
    @property
    def image_encoder(self) -> nn.Module:
        return self.sam.image_encoder

    @property
    def prompt_encoder(self) -> nn.Module:
        return self.sam.prompt_encoder

    @property
    def mask_decoder(self) -> nn.Module:
        """SAM's own decoder: calling it directly gives SAM's masks (no plugins)."""
        return self.sam.mask_decoder

    @property
    def mask_threshold(self) -> float:
        return self.sam.mask_threshold

    @property
    def image_format(self) -> str:
        return self.sam.image_format

    @property
    def device(self) -> torch.device:
        return self.sam.device

    @property
    def plugin_config(self) -> PluginConfig:
        return self.plugins.config

    def preprocess(self, x: Tensor) -> Tensor:
        return self.sam.preprocess(x)

    def postprocess_masks(
        self, masks: Tensor, input_size: Tuple[int, ...], original_size: Tuple[int, ...]
    ) -> Tensor:
        return self.sam.postprocess_masks(masks, input_size, original_size)

    # -- training helpers ------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "StableSam":
        super().train(mode)
        self.sam.eval()  # frozen SAM: dropout-free anyway, but keep its eval semantics
        return self

    def plugin_parameters(self) -> Iterator[nn.Parameter]:
        """The trainable parameters (give these to the optimiser)."""
        return self.plugins.parameters()

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def extra_repr(self) -> str:
        return (
            f"model_type={self.model_type!r}, "
            f"trainable_parameters={self.num_trainable_parameters():,}"
        )

    # -- decoding --------------------------------------------------------------------------------
    def decode(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
        *,
        use_plugins: bool = True,
        return_extras: bool = False,
    ) -> Union[Tuple[Tensor, Tensor], Tuple[Tensor, Tensor, Dict[str, Tensor]]]:
        """Stable-SAM's mask decoder; MaskDecoder.forward's arguments and outputs.

        Arguments:
          image_embeddings (Tensor[1 or N, 256, h, w]): one embedding shared by the N prompts, or
            one per prompt (batched training over several images).
          image_pe (Tensor[1, 256, h, w]): prompt_encoder.get_dense_pe().
          sparse_prompt_embeddings (Tensor[N, S, 256]), dense_prompt_embeddings (Tensor[N, 256, h, w]).
          multimask_output (bool): the three multimask outputs instead of the single mask.
          use_plugins (bool): False runs plain SAM (the same decoder code path, regular keys).
          return_extras (bool): also return a dict of layer 2's plug-in state.

        Returns:
          low_res_masks (Tensor[N, M, 4h, 4w]) logits, M = 3 or 1 (256x256 for a 1024 input),
          iou_predictions (Tensor[N, M]), and with return_extras a dict:
            "alpha" (N, 2): routing weights [deformable, regular] ([0, 1] without plugins,
              [1, 0] without DRP);
            "sampling_locations" (N, h, w, G, 2): (x, y) sampled per query pixel and group, in
              embedding-grid pixels (the regular grid without plugins);
            "amplitude" (N, h, w, G): modulation (ones without plugins or amplitudes);
            "attention" (N, h, w): the output mask token's attention over image tokens in that
              layer, averaged over heads.
        """
        n = sparse_prompt_embeddings.shape[0]
        h, w = image_embeddings.shape[-2:]
        state: Dict[str, Tensor] = {}

        def plugin_keys(x_p: Tensor, queries: Tensor) -> Tensor:
            c = x_p.shape[-1]
            keys, extras = self.plugins(
                x_p.reshape(n, h, w, c), queries[:, decoder.OUTPUT_MASK_TOKEN]
            )
            state.update(extras)
            return keys.view(n, h * w, c)

        record: Optional[Dict[str, Tensor]] = {} if return_extras else None
        masks, iou_pred = decoder.predict_masks(
            self.sam.mask_decoder,
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            keys_fn=plugin_keys if use_plugins else None,
            record=record,
        )
        mask_slice = slice(1, None) if multimask_output else slice(0, 1)
        masks, iou_pred = masks[:, mask_slice], iou_pred[:, mask_slice]
        if not return_extras:
            return masks, iou_pred
        return masks, iou_pred, self._extras(state, record, n, h, w, masks)

    def _extras(
        self,
        state: Dict[str, Tensor],
        record: Dict[str, Tensor],
        n: int,
        h: int,
        w: int,
        like: Tensor,
    ) -> Dict[str, Tensor]:
        g = self.plugins.config.num_groups
        if state:
            alpha = state["alpha"]
            offset = state["offset"]
            amplitude = state["amplitude"]
        else:  # plain SAM: regular grid, all weight on x_p
            alpha = like.new_tensor([0.0, 1.0]).expand(n, 2)
            offset = like.new_zeros(n, h, w, g, 2)
            amplitude = like.new_ones(n, h, w, g)
        return {
            "alpha": alpha,
            "sampling_locations": self.plugins.sampling_locations(offset),
            "amplitude": amplitude,
            "attention": record["attention"].reshape(n, h, w),
        }

    def forward(
        self,
        batched_input: List[Dict[str, Any]],
        multimask_output: bool,
        *,
        use_plugins: bool = True,
    ) -> List[Dict[str, Tensor]]:
        """Sam.forward's input and output format (see segment_anything.modeling.Sam.forward).

        The image encoder runs without gradients (it is frozen); decoding follows the ambient
        grad mode, so the plugins can be trained through this call.
        """
        with torch.no_grad():
            images = torch.stack([self.preprocess(x["image"]) for x in batched_input], dim=0)
            image_embeddings = self.image_encoder(images)
        outputs = []
        for record, embedding in zip(batched_input, image_embeddings):
            points = (
                (record["point_coords"], record["point_labels"])
                if "point_coords" in record
                else None
            )
            sparse, dense = self.prompt_encoder(
                points=points, boxes=record.get("boxes"), masks=record.get("mask_inputs")
            )
            low_res, iou_predictions = self.decode(
                embedding.unsqueeze(0),
                self.prompt_encoder.get_dense_pe(),
                sparse,
                dense,
                multimask_output,
                use_plugins=use_plugins,
            )
            masks = self.postprocess_masks(
                low_res,
                input_size=record["image"].shape[-2:],
                original_size=record["original_size"],
            )
            outputs.append(
                {
                    "masks": masks > self.mask_threshold,
                    "iou_predictions": iou_predictions,
                    "low_res_logits": low_res,
                }
            )
        return outputs
