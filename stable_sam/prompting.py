"""Prompts in image pixels, and the one-prompt prediction that the commands and the demo server
share: the best-scored mask of a predictor's answer."""

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class Prompts:
    point_coords: Optional[np.ndarray]  # (K, 2) x, y in image pixels
    point_labels: Optional[np.ndarray]  # (K,) 1 foreground, 0 background
    box: Optional[np.ndarray]  # (4,) x0, y0, x1, y1


def predict_best(
    predictor, prompts: Prompts, multimask: bool, *, use_plugins: bool, return_extras: bool = False
):
    """Runs the predictor; with multimask keeps the best-scored of the three masks."""
    out = predictor.predict(
        point_coords=prompts.point_coords,
        point_labels=prompts.point_labels,
        box=prompts.box,
        multimask_output=multimask,
        use_plugins=use_plugins,
        return_extras=return_extras,
    )
    masks, scores = out[0], out[1]
    best = int(np.argmax(scores))
    extras = out[3] if return_extras else None
    # bool for every family: SAM2ImagePredictor returns its masks as 0/1 floats
    return masks[best].astype(bool), float(scores[best]), extras
