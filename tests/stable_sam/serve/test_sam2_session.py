"""The demo page's session on SAM 2.1 (the small random type): an image embeds once, predict and
shake answer for both panels through StableSam2ImagePredictor, and an untrained Stable-SAM 2
answers as SAM 2 does; switching between cached images restores each one's embedding."""

import numpy as np
import torch

from model_helpers import make_image, perturb_plugins
from stable_sam.build import build_stable_sam
from stable_sam.serve.session import DemoSession

BOX = [50, 40, 190, 150]


def _session(trained: bool) -> DemoSession:
    model = build_stable_sam("sam2_tiny_random").eval()
    if trained:
        with torch.no_grad():
            perturb_plugins(model, scale=0.2)
    return DemoSession(model)


def test_untrained_panels_agree_and_images_switch():
    session = _session(trained=False)
    first = session.add_image(make_image())
    answer = session.predict(first["image_id"], box=BOX)
    second = session.add_image(make_image(height=100, width=300, seed=1))
    sam, stable = answer["models"]["sam"], answer["models"]["stable_sam"]
    assert (sam["score"], sam["area"], sam["rle"]) == (stable["score"], stable["area"],
                                                       stable["rle"])
    assert len(stable["sampling"]["points"]) == session.top_k
    shaken = session.shake(second["image_id"], box=[50, 20, 190, 80], count=4)
    assert shaken["models"]["sam"]["stability"] == shaken["models"]["stable_sam"]["stability"]
    # back to the first image: its cached embedding, not the second's, answers
    again = session.predict(first["image_id"], box=BOX)["models"]["sam"]
    assert (again["score"], again["rle"]) == (sam["score"], sam["rle"])


def test_trained_plugins_change_the_stable_panel():
    session = _session(trained=True)
    image = session.add_image(make_image())
    models = session.predict(image["image_id"], points=[[120, 90, 1]])["models"]
    assert models["sam"]["rle"] != models["stable_sam"]["rle"]
    assert not np.allclose(models["stable_sam"]["alpha"], [0.5, 0.5])
