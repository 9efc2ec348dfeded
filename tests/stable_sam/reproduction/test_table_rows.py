"""A method's row of the reproduction table: percentages, bootstrap intervals beside mIoU and
mSF, prompt-following, a box on empty background, and the split's box-fill rule and count."""
import numpy as np
import pytest

from stable_sam.data.scenes import VAL_SEED, SceneTargets
from stable_sam.evaluation.ceiling import box_fill_iou
from stable_sam.evaluation.prompts import freeze_prompts
from stable_sam.reproduction.table_rows import evaluate_row, kind_summary, split_summary


def test_kind_summary_percentages_and_intervals():
    records = [{"image": i // 2, "kind": "noisy_box", "iou": 0.2 + 0.1 * (i % 2), "biou": 0.1,
                "sf": 0.8} for i in range(20)] + [
        {"image": 0, "kind": "box", "iou": 0.9, "biou": 0.5, "sf": float("nan")}]
    noisy = kind_summary(records, "noisy_box")
    assert noisy["mIoU"] == 25.0 and noisy["mBIoU"] == 10.0 and noisy["mSF"] == 80.0
    low, high = noisy["mIoU_ci"]
    assert low <= 25.0 <= high and high - low < 5  # every image has mean 0.25
    assert noisy["mSF_ci"] == [80.0, 80.0]
    box = kind_summary(records, "box")
    assert box["mSF"] is None and box["mSF_ci"] is None and box["mIoU_ci"] == [90.0, 90.0]


class FillBox:
    """Fills its box prompt; a box-fill model on the scenes."""

    class model:
        mask_threshold = 0.0

    def set_image(self, image):
        self.shape = image.shape[:2]

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output=False, return_logits=False):
        mask = np.zeros(self.shape, bool)
        if box is not None:
            x0, y0, x1, y1 = np.round(box).astype(int)
            mask[y0:y1 + 1, x0:x1 + 1] = True
        return np.where(mask, 1.0, -1.0)[None], np.array([1.0]), None


def test_a_box_filling_model_scores_the_box_fill_rule():
    dataset = SceneTargets(VAL_SEED, 3, version=2)
    prompts = freeze_prompts(dataset, ["box", "noisy_box"], 2, model_image_size=256)
    row, records = evaluate_row(FillBox(), dataset, prompts, ["box", "noisy_box"])
    split = split_summary(dataset)
    assert split["test_targets"] == len([r for r in records if r["kind"] == "box"])
    assert row["kinds"]["box"]["mIoU"] == pytest.approx(split["box_fill_mIoU"], abs=0.01)
    assert set(row["follow"]["noisy_box"]) == {"cross_agreement", "stable_but_wrong"}
    # boxes on two disjoint objects overlap only where the boxes do
    assert row["follow"]["box"]["cross_agreement"] < 15
    assert row["background_box"] == {"on_objects": 0.0, "images": 3}
    expected = np.mean([box_fill_iou(m) for i in range(3) for m in dataset[i]["masks"]])
    assert split["box_fill_mIoU"] == pytest.approx(100 * expected, abs=0.01)
