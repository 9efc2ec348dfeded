"""StableHQSam: a frozen segment_anything_hq `Sam` (HQ-SAM) plus Stable-SAM's plugins at the
same site as on SAM, layer 2's token-to-image attention (paper Table 6, "HQ-SAM + Ours")."""

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..sam.model import StableSam
from . import decoder as hq_decoder


class StableHQSam(StableSam):
    """Stable-SAM around an unmodified HQ-SAM (`segment_anything_hq.modeling.Sam`).

    Everything StableSam says holds: `self.sam` keeps HQ-SAM's modules and state-dict keys (the
    official sam_hq_vit_*.pth load strictly into it) and is frozen, HQ token and HQ feature
    fusion included; `self.plugins` are the only trainable parameters.

    t_o, the token that drives the routing plugin and whose attention is reported, is the HQ
    output token: HQ-SAM's output mask is the HQ token's mask, alone (hq_token_only) or added to
    SAM's, so the HQ token is "the prompt token corresponding to the output mask" in either
    mode (paper eq. 5), whereas SAM's single-mask token is not used by the multimask output.

    The image encoder returns (embeddings, interm_embeddings); `decode` takes both, as
    MaskDecoderHQ does.
    """

    def decode(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
        hq_token_only: bool = False,
        interm_embeddings: Optional[Sequence[Tensor]] = None,
        *,
        use_plugins: bool = True,
        return_extras: bool = False,
    ) -> Union[Tuple[Tensor, Tensor], Tuple[Tensor, Tensor, Dict[str, Tensor]]]:
        """Stable-HQ-SAM's mask decoder; MaskDecoderHQ.forward's arguments and outputs.

        Arguments:
          image_embeddings (Tensor[1 or N, 256, h, w]), image_pe, sparse_prompt_embeddings,
            dense_prompt_embeddings, multimask_output: as StableSam.decode.
          hq_token_only (bool): the HQ token's mask alone instead of SAM's + HQ's.
          interm_embeddings (sequence of Tensor[1 or N, h, w, vit_dim]): the image encoder's
            second output; element 0 (the first global-attention block's output) is used.
          use_plugins, return_extras: as StableSam.decode ("attention" is the HQ token's).

        Returns:
          low_res_masks (Tensor[N, 1, 4h, 4w]) logits: HQ-SAM returns one mask either way (with
          multimask_output, SAM's best-scored multimask mask enters the sum),
          iou_predictions (Tensor[N, 1]), and with return_extras StableSam.decode's dict.
        """
        if interm_embeddings is None or len(interm_embeddings) == 0:
            raise ValueError(
                "StableHQSam.decode needs interm_embeddings, the image encoder's second output "
                "(HQ-SAM's decoder reads the early ViT feature)"
            )
        mask_decoder = self.sam.mask_decoder
        n = sparse_prompt_embeddings.shape[0]
        h, w = image_embeddings.shape[-2:]
        t_o = hq_decoder.hq_token_index(mask_decoder)
        state: Dict[str, Tensor] = {}

        def plugin_keys(x_p: Tensor, queries: Tensor) -> Tensor:
            c = x_p.shape[-1]
            keys, extras = self.plugins(x_p.reshape(n, h, w, c), queries[:, t_o])
            state.update(extras)
            return keys.view(n, h * w, c)

        record: Optional[Dict[str, Tensor]] = {} if return_extras else None
        features = hq_decoder.hq_features(mask_decoder, image_embeddings, interm_embeddings)
        masks, iou_pred = hq_decoder.predict_masks_hq(
            mask_decoder,
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            features,
            keys_fn=plugin_keys if use_plugins else None,
            record=record,
        )
        masks, iou_pred = hq_decoder.select_masks_hq(masks, iou_pred, multimask_output,
                                                     hq_token_only)
        if not return_extras:
            return masks, iou_pred
        return masks, iou_pred, self._extras(state, record, n, h, w, masks)

    def forward(
        self,
        batched_input: List[Dict[str, Any]],
        multimask_output: bool,
        hq_token_only: bool = False,
        *,
        use_plugins: bool = True,
    ) -> List[Dict[str, Tensor]]:
        """segment_anything_hq's Sam.forward input and output format; see StableSam.forward."""
        with torch.no_grad():
            images = torch.stack([self.preprocess(x["image"]) for x in batched_input], dim=0)
            image_embeddings, interm_embeddings = self.image_encoder(images)
        early = interm_embeddings[0]
        outputs = []
        for i, (record, embedding) in enumerate(zip(batched_input, image_embeddings)):
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
                hq_token_only,
                [early[i:i + 1]],
                use_plugins=use_plugins,
            )
            masks = self.postprocess_masks(
                low_res, input_size=record["image"].shape[-2:],
                original_size=record["original_size"],
            )
            outputs.append({"masks": masks > self.mask_threshold,
                            "iou_predictions": iou_predictions, "low_res_logits": low_res})
        return outputs
