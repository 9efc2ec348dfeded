"""`evaluate_masks` against an independent oracle: every record's mIoU, mBIoU and mSF are
recomputed here from the masks the predictor returned, with the boundary written out as a
shifted-AND erosion; the boundary width, the prompts the predictor saw and the targets covered
are pinned, so an evaluation that drops, reorders or reweights part of the data fails."""
import math

import numpy as np
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from stable_sam.data.prompts import Prompt
from stable_sam.evaluation import evaluate_masks, freeze_prompts

KINDS = ["box", "noisy_box", "points1", "points3", "nbox_0.5-0.6"]
PROMPTS_PER_TARGET = 6
SHAPE = (60, 80)  # diagonal 100: the boundary band is round(0.02 * 100) = 2 pixels wide
BAND = 2


class Scenes:
    """Images with several targets each (a COCO-like `masks` list); one target is empty."""

    name = "scenes"

    def __init__(self, count=3):
        self.items = []
        yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
        for i in range(count):
            blob = ((yy - 20 - 3 * i) / 12.0) ** 2 + ((xx - 25 - 4 * i) / 16.0) ** 2 <= 1
            bar = np.zeros(SHAPE, bool)
            bar[35 + i:52, 45:72 - i] = True
            bar[40:44, 50 + i:60] = False  # a hole: the boundary is not just the outline
            masks = [blob, bar] + ([np.zeros(SHAPE, bool)] if i == 1 else [])
            self.items.append({"image": np.full(SHAPE + (3,), 10 * i, np.uint8),
                               "masks": masks, "name": f"scene{i}"})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def _answer(prompt: Prompt) -> np.ndarray:
    """The recording predictor's mask for a prompt (original frame): the box filled, or a
    5-pixel disc around each point; a function of the prompt only. The 1e-3 slack absorbs the
    float error of the batched path's round trip through the model's input frame."""
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        return (xx >= x0 - 1e-3) & (xx <= x1 + 1e-3) & (yy >= y0 - 1e-3) & (yy <= y1 + 1e-3)
    out = np.zeros(SHAPE, bool)
    for x, y in prompt.point_coords:
        out |= (xx - x) ** 2 + (yy - y) ** 2 <= 25.01
    return out


class RecordingPredictor:
    """A SamPredictor stand-in that logs every prompt it is asked about, per image."""

    class model:
        mask_threshold = 0.5

    def __init__(self):
        self.transform = ResizeLongestSide(128)
        self.device = torch.device("cpu")
        self.calls = []  # (image value, Prompt)

    def set_image(self, image):
        self.original_size = image.shape[:2]
        self.image_value = int(image[0, 0, 0])

    def _logits(self, prompt):
        """1 on the answer, exactly the threshold on the ring around it, 0 elsewhere: only
        `logits > model.mask_threshold` gives the answer back."""
        self.calls.append((self.image_value, prompt))
        answer = _answer(prompt)
        ring = np.zeros_like(answer)
        ring[1:] |= answer[:-1]
        ring[:-1] |= answer[1:]
        ring[:, 1:] |= answer[:, :-1]
        ring[:, :-1] |= answer[:, 1:]
        return np.where(answer, 1.0, np.where(ring, 0.5, 0.0)).astype(np.float32)

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output=True, return_logits=False):
        assert not multimask_output and return_logits
        kind = "box" if box is not None else "points1"
        prompt = Prompt(kind, box=box, point_coords=point_coords, point_labels=point_labels)
        return self._logits(prompt)[None], np.array([0.5], np.float32), None


class BatchedRecordingPredictor(RecordingPredictor):
    def predict_torch(self, point_coords, point_labels, boxes=None, mask_input=None,
                      multimask_output=True, return_logits=False):
        assert not multimask_output and return_logits
        scale = 128 / max(self.original_size)  # back from the model's input frame
        n = len(boxes) if boxes is not None else len(point_coords)
        out = []
        for b in range(n):
            if boxes is not None:
                prompt = Prompt("box", box=(boxes[b] / scale).numpy())
            else:
                prompt = Prompt("points1", point_coords=(point_coords[b] / scale).numpy())
            out.append(self._logits(prompt))
        logits = torch.as_tensor(np.stack(out))[:, None]
        return logits, torch.full((n, 1), 0.5), None


# ---------------------------------------------------------------------------- the oracle


def _iou(a, b):
    union = int(np.sum(a | b))
    return 1.0 if union == 0 else int(np.sum(a & b)) / union


def _boundary(mask, width):
    """Mask pixels with a background pixel (outside the image counts) within chessboard
    distance `width`: the mask AND NOT its erosion, written as shifted ANDs."""
    padded = np.pad(mask, width, constant_values=False)
    eroded = np.ones_like(mask)
    h, w = mask.shape
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            eroded &= padded[width + dy:width + dy + h, width + dx:width + dx + w]
    return mask & ~eroded


def _stability(masks):
    union = np.zeros_like(masks[0])
    for m in masks:
        union |= m
    return float(np.mean([_iou(m, union) for m in masks]))


def test_the_band_width_is_two_percent_of_the_diagonal():
    assert round(0.02 * math.hypot(*SHAPE)) == BAND
    ring = np.zeros(SHAPE, bool)
    ring[10:30, 10:40] = True
    assert _boundary(ring, BAND).sum() == 20 * 30 - 16 * 26  # a hand-counted two-pixel ring


@pytest.mark.parametrize("predictor_class", [RecordingPredictor, BatchedRecordingPredictor])
def test_every_record_matches_an_independent_recomputation(predictor_class):
    dataset = Scenes()
    frozen = freeze_prompts(dataset, KINDS, prompts_per_image=PROMPTS_PER_TARGET, seed=4)
    predictor = predictor_class()
    results = evaluate_masks(predictor, dataset, frozen, batch_size=4)

    # targets covered: every non-empty target of every image, once per kind, nothing else
    expected_keys = [(i, t, k) for i in range(len(dataset))
                     for t, m in enumerate(dataset[i]["masks"]) if m.any() for k in sorted(KINDS)]
    records = results["records"]
    assert [(r["image"], r["target"], r["kind"]) for r in records] == expected_keys

    # prompts used: exactly the frozen ones, in order, each on its own image
    seen = [(value, p.kind if p.box is None else "box", p.box, p.point_coords)
            for value, p in predictor.calls]
    wanted = []
    for entry in frozen["images"]:
        for target in entry["targets"]:
            for kind in KINDS:
                for p in target["prompts"].get(kind, []):
                    q = Prompt.from_json(p)
                    wanted.append((10 * entry["index"], q))
    # 3 images x 2 non-empty targets x (one GT box + 4 kinds x 6 prompts)
    assert len(seen) == len(wanted) == 3 * 2 * (1 + 4 * PROMPTS_PER_TARGET)
    for (value, _, box, coords), (want_value, q) in zip(seen, wanted):
        assert value == want_value
        if q.box is not None:
            np.testing.assert_allclose(box, q.box, atol=1e-3)
        else:
            np.testing.assert_allclose(coords, q.point_coords, atol=1e-3)
            assert len(coords) == int(q.kind[len("points"):])

    # each record, recomputed from the masks of its prompts
    by_key = {}
    for entry in frozen["images"]:
        for target in entry["targets"]:
            for kind, prompts in target["prompts"].items():
                by_key[(entry["index"], target["target"], kind)] = prompts
    for r in records:
        gt = dataset[r["image"]]["masks"][r["target"]]
        masks = [_answer(Prompt.from_json(p)) for p in by_key[(r["image"], r["target"], r["kind"])]]
        assert len(masks) == (1 if r["kind"] == "box" else PROMPTS_PER_TARGET)
        assert r["iou"] == pytest.approx(np.mean([_iou(m, gt) for m in masks]), abs=1e-12)
        gt_band = _boundary(gt, BAND)
        assert r["biou"] == pytest.approx(
            np.mean([_iou(_boundary(m, BAND), gt_band) for m in masks]), abs=1e-12)
        if r["kind"] == "box":
            assert math.isnan(r["sf"])
        else:
            assert r["sf"] == pytest.approx(_stability(masks), abs=1e-12)

    # the summary: a plain mean over targets (mSF left out where undefined)
    for kind in KINDS:
        rows = [r for r in records if r["kind"] == kind]
        summary = results["kinds"][kind]
        assert summary["count"] == 6
        assert summary["miou"] == pytest.approx(np.mean([r["iou"] for r in rows]), abs=1e-12)
        assert summary["mbiou"] == pytest.approx(np.mean([r["biou"] for r in rows]), abs=1e-12)
        if kind == "box":
            assert math.isnan(summary["msf"])
        else:
            assert summary["msf"] == pytest.approx(np.mean([r["sf"] for r in rows]), abs=1e-12)
    # the case is not degenerate: the noisy prompts disagree and miss
    assert results["kinds"]["noisy_box"]["msf"] < 0.95
    assert 0.2 < results["kinds"]["noisy_box"]["miou"] < 0.95
