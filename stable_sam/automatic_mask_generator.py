"""SamAutomaticMaskGenerator over Stable-SAM.

segment_anything's generator builds `SamPredictor(model)` itself, and SamPredictor calls
`model.mask_decoder` directly, which for a StableSam is SAM's plain decoder. This subclass
swaps in a StableSamPredictor (StableHQSamPredictor on HQ-SAM), so the plugins take part.
"""

from segment_anything import SamAutomaticMaskGenerator

from .families import family_of_model, predictor_for
from .families.sam import StableSam


class StableSamAutomaticMaskGenerator(SamAutomaticMaskGenerator):
    """SamAutomaticMaskGenerator(model, **same keyword arguments) with Stable-SAM's decoder."""

    def __init__(self, model: StableSam, *args, **kwargs) -> None:
        if family_of_model(model).name == "sam2":  # SAM 2's generator takes other arguments
            raise TypeError("StableSamAutomaticMaskGenerator is for SAM, HQ-SAM and the demo "
                            "model; for a SAM 2 model use "
                            "stable_sam.StableSam2AutomaticMaskGenerator")
        super().__init__(model, *args, **kwargs)
        self.predictor = predictor_for(model)  # StableHQSamPredictor for an HQ model
