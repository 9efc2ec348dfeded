"""SAM2AutomaticMaskGenerator over Stable-SAM on SAM 2.

sam2's generator builds `SAM2ImagePredictor(model)` itself, which calls SAM 2's own decoder (plain
SAM 2's masks). This subclass swaps in a StableSam2ImagePredictor with the same post-processing
settings, so the plugins take part in every point-grid prediction and mask-to-mask refinement.
"""

from .build import import_sam2
from .model import StableSam2
from .predictor import StableSam2ImagePredictor, quiet_sam2_transforms

SAM2AutomaticMaskGenerator = import_sam2("sam2.automatic_mask_generator").SAM2AutomaticMaskGenerator


class StableSam2AutomaticMaskGenerator(SAM2AutomaticMaskGenerator):
    """SAM2AutomaticMaskGenerator(model, **the same keyword arguments) with Stable-SAM's decoder.

    Arguments:
      model (StableSam2): the model; everything else as SAM2AutomaticMaskGenerator.
    """

    def __init__(self, model: StableSam2, *args, **kwargs) -> None:
        if not isinstance(model, StableSam2):
            raise TypeError(f"{type(self).__name__} needs a StableSam2 model, got "
                            f"{type(model).__name__}; use sam2's SAM2AutomaticMaskGenerator for "
                            "a plain SAM2Base")
        with quiet_sam2_transforms():
            super().__init__(model, *args, **kwargs)
        transforms = self.predictor._transforms  # where sam2 keeps min_mask_region_area
        self.predictor = StableSam2ImagePredictor(
            model, max_hole_area=transforms.max_hole_area,
            max_sprinkle_area=transforms.max_sprinkle_area)
