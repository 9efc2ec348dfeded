"""Evaluation: frozen prompts, metrics pipeline, COCO mAP, distributed sharding, the command."""
import argparse
import json
import math
import os

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval
from segment_anything import SamPredictor

from stable_sam.data import CocoInstanceDataset, HQSegDataset, Prompt, make_synthetic_dataset
from stable_sam.evaluation import (
    coco_mask_map,
    evaluate_masks,
    freeze_prompts,
    load_prompts,
    predict_prompts,
    results_table,
    save_prompts,
    write_results,
)


def as_text(obj):
    """JSON text, so that NaN (undefined mSF) compares equal to NaN."""
    return json.dumps(obj, sort_keys=True)


class RectDataset:
    """Images whose target is an axis-aligned rectangle: a box-filling predictor is exact."""

    def __init__(self, count=3, name="rects"):
        self.name, self.items = name, []
        for i in range(count):
            mask = np.zeros((40 + i, 50), bool)
            mask[5 + i:25 + i, 8 + 2 * i:40] = True
            self.items.append({"image": np.full((40 + i, 50, 3), i, np.uint8), "mask": mask,
                               "name": f"rect{i}", "index": i})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


class BoxFillPredictor:
    """Only SamPredictor's `predict`: fills the box; for points, a 7x7 square at the first one."""

    class model:
        mask_threshold = 0.0

    def set_image(self, image):
        self.shape = image.shape[:2]

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output=True, return_logits=False):
        assert not multimask_output and return_logits
        logits = np.full((1,) + self.shape, -1.0, np.float32)
        if box is not None:
            x0, y0, x1, y1 = np.round(box).astype(int)
            logits[0, y0:y1 + 1, x0:x1 + 1] = 1.0
        else:
            x, y = point_coords[0].astype(int)
            logits[0, max(0, y - 3):y + 4, max(0, x - 3):x + 4] = 1.0
        return logits, np.array([0.5], np.float32), None


def test_box_fill_predictor_scores(tmp_path):
    ds = RectDataset()
    prompts = freeze_prompts(ds, ["box", "noisy_box", "points1"], prompts_per_image=5, seed=1)
    results = evaluate_masks(BoxFillPredictor(), ds, prompts)
    box = results["kinds"]["box"]
    assert box["miou"] == 1.0 and box["mbiou"] == 1.0 and math.isnan(box["msf"])
    assert box["count"] == 3
    noisy = results["kinds"]["noisy_box"]
    assert 0.3 < noisy["miou"] < 1.0 and noisy["msf"] < 1.0
    assert results["kinds"]["points1"]["miou"] < 0.2
    assert len(results["records"]) == 3 * 3
    # Per record: the mean over its 5 prompts, recomputed here from the frozen boxes.
    record = next(r for r in results["records"] if r["kind"] == "noisy_box" and r["image"] == 1)
    predictor, gt = BoxFillPredictor(), ds[1]["mask"]
    predictor.set_image(ds[1]["image"])
    ious = []
    for p in prompts["images"][1]["targets"][0]["prompts"]["noisy_box"]:
        pred = predictor.predict(box=np.array(p["box"]), multimask_output=False,
                                 return_logits=True)[0][0] > 0
        ious.append((pred & gt).sum() / (pred | gt).sum())
    assert record["iou"] == pytest.approx(np.mean(ious))


def test_prompts_round_trip_and_validation(tmp_path):
    ds = RectDataset()
    frozen = freeze_prompts(ds, ["box", "noisy_box", "points3", "coarse_mask"],
                            prompts_per_image=2, model_image_size=64)
    assert len(frozen["images"][0]["targets"][0]["prompts"]["box"]) == 1
    assert len(frozen["images"][0]["targets"][0]["prompts"]["points3"]) == 2
    path = save_prompts(tmp_path / "p.json", frozen)
    loaded = load_prompts(path)
    assert loaded == {"rects": json.loads(json.dumps(frozen))}
    assert freeze_prompts(ds, ["box", "noisy_box", "points3", "coarse_mask"],
                          prompts_per_image=2, model_image_size=64) == frozen
    a = evaluate_masks(BoxFillPredictor(), ds, frozen, ["box", "noisy_box"])
    b = evaluate_masks(BoxFillPredictor(), ds, loaded, ["box", "noisy_box"])
    assert as_text(a["records"]) == as_text(b["records"])
    with pytest.raises(ValueError, match="not 'other'"):
        evaluate_masks(BoxFillPredictor(), RectDataset(name="other"), loaded)
    with pytest.raises(ValueError, match="cover 3 images"):
        evaluate_masks(BoxFillPredictor(), RectDataset(count=2), frozen)
    with pytest.raises(ValueError, match="were not frozen"):
        evaluate_masks(BoxFillPredictor(), ds, frozen, ["points10"])
    with pytest.raises(ValueError, match="unknown prompt kind"):
        freeze_prompts(ds, ["scribble"])
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="not a stable-sam-prompts"):
        load_prompts(tmp_path / "bad.json")


def test_write_results_accumulates_models(tmp_path):
    ds = RectDataset()
    prompts = freeze_prompts(ds, ["box", "noisy_box"], prompts_per_image=3)
    results = evaluate_masks(BoxFillPredictor(), ds, prompts)
    write_results(tmp_path, "model A", [results])
    json_path, md_path = write_results(tmp_path, "model B", [results])
    write_results(tmp_path, "model A", [results])  # replaces A's row, keeps B's
    rows = json.loads(json_path.read_text())["rows"]
    assert [r["model"] for r in rows] == ["model B", "model A"]
    table = md_path.read_text()
    assert "| Model | Dataset | GT Box mIoU / mBIoU / mSF | Noisy Box mIoU / mBIoU / mSF |" in table
    assert "| model A | rects | 100.0 / 100.0 / - |" in table
    assert (tmp_path / "records" / "model_A__rects.json").is_file()
    assert not [p for p in tmp_path.rglob(".*")]


@pytest.fixture(scope="module")
def tiny_predictor():
    from stable_sam.families.sam.build import build_tiny_sam

    return SamPredictor(build_tiny_sam())


@pytest.fixture(scope="module")
def synthetic_hqseg(tmp_path_factory):
    root = tmp_path_factory.mktemp("hqseg")
    return HQSegDataset(make_synthetic_dataset(root, num_images=2, image_size=(48, 64)),
                        name="synthetic")


@pytest.mark.parametrize("kind", ["noisy_box", "points3", "coarse_mask"])
def test_batched_prediction_matches_single_prompts(tiny_predictor, synthetic_hqseg, kind):
    frozen = freeze_prompts(synthetic_hqseg, [kind], prompts_per_image=3,
                            model_image_size=tiny_predictor.model.image_encoder.img_size)
    sample = synthetic_hqseg[0]
    tiny_predictor.set_image(sample["image"])
    prompts = [Prompt.from_json(p) for p in frozen["images"][0]["targets"][0]["prompts"][kind]]
    masks, scores = predict_prompts(tiny_predictor, prompts, batch_size=2)
    assert masks.shape == (3, 48, 64) and masks.dtype == bool
    for prompt, mask, score in zip(prompts, masks, scores):
        single, single_score, _ = tiny_predictor.predict(
            prompt.point_coords, prompt.point_labels, prompt.box,
            None if prompt.mask_input is None else prompt.mask_input[None],
            multimask_output=False)
        assert (single[0] != mask).mean() < 1e-3  # batched float sums may flip a pixel
        assert single_score[0] == pytest.approx(score, abs=1e-4)


def test_end_to_end_tiny_sam(tiny_predictor, synthetic_hqseg, tmp_path):
    kinds = ["box", "noisy_box", "points1"]
    frozen = freeze_prompts(synthetic_hqseg, kinds, prompts_per_image=3)
    save_prompts(tmp_path / "prompts.json", frozen)
    loaded = load_prompts(tmp_path / "prompts.json")
    results = evaluate_masks(tiny_predictor, synthetic_hqseg, loaded)
    assert set(results["kinds"]) == set(kinds)
    for kind, summary in results["kinds"].items():
        assert summary["count"] == 2
        assert 0.0 <= summary["miou"] <= 1.0 and 0.0 <= summary["mbiou"] <= 1.0
        assert (kind == "box") == math.isnan(summary["msf"])
    json_path, md_path = write_results(tmp_path / "out", "SAM tiny", [results])
    row = json.loads(json_path.read_text())["rows"][0]
    assert row["kinds"]["box"]["msf"] is None  # strict JSON: NaN is written as null
    assert "| SAM tiny | synthetic |" in md_path.read_text()


# --- COCO ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic_coco(tmp_path_factory):
    root = make_synthetic_dataset(tmp_path_factory.mktemp("coco"), num_images=6,
                                  image_size=(48, 64), layout="coco", seed=2)
    return CocoInstanceDataset(root / "images", root / "annotations.json")


def detections(dataset, transform=lambda mask, i: mask):
    dets = []
    for i in range(len(dataset)):
        sample = dataset[i]
        for t, mask in enumerate(sample["masks"]):
            pred = transform(mask, len(dets))
            rle = mask_utils.encode(np.asfortranarray(pred.astype(np.uint8)))
            dets.append({"image_id": sample["image_id"],
                         "category_id": int(sample["category_ids"][t]),
                         "segmentation": {"size": list(rle["size"]),
                                          "counts": rle["counts"].decode()},
                         "score": 1.0 - 0.01 * len(dets)})
    return dets


def pycocotools_stats(dataset, dets):
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(dataset.coco, dataset.coco.loadRes(dets), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[0], evaluator.stats[1]


def test_coco_map_perfect_predictions(synthetic_coco):
    assert coco_mask_map(synthetic_coco, detections(synthetic_coco)) == {"map": 1.0, "map50": 1.0}


def test_coco_map_partial_predictions_match_pycocotools(synthetic_coco):
    def degrade(mask, i):
        if i % 3 == 0:  # a third of the objects: half of the mask only
            rows = np.flatnonzero(mask.any(1))
            return mask & (np.arange(mask.shape[0])[:, None] < rows[len(rows) // 2])
        return mask

    dets = detections(synthetic_coco, degrade)
    ours = coco_mask_map(synthetic_coco, dets)
    expected = pycocotools_stats(synthetic_coco, dets)
    assert (ours["map"], ours["map50"]) == pytest.approx(expected)
    assert ours["map"] < 1.0
    assert math.isnan(coco_mask_map(synthetic_coco, [])["map"])


def test_coco_evaluation_reports_map(synthetic_coco, tiny_predictor):
    kinds = ["nbox_0.5-0.6", "points1"]
    frozen = freeze_prompts(synthetic_coco, kinds, prompts_per_image=2)
    for image in frozen["images"]:
        for target in image["targets"]:
            assert "ann_id" in target
    results = evaluate_masks(tiny_predictor, synthetic_coco, frozen)
    assert set(results["coco"]) == {"nbox_0.5-0.6"}
    coco = results["coco"]["nbox_0.5-0.6"]
    assert 0.0 <= coco["map"] <= 1.0 and 0.0 <= coco["map50"] <= 1.0
    targets = sum(len(i["targets"]) for i in frozen["images"])
    assert sum(1 for r in results["records"] if "coco" in r) == targets
    table = results_table([dict(results, model="tiny")])
    assert "N-Box 0.5-0.6 mAP / mAP50" in table


# --- distributed --------------------------------------------------------------------------

def _distributed_worker(rank, world, init_file, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world)
    try:
        ds = RectDataset(count=5)  # 5 images on 2 ranks: uneven shards, no padding
        prompts = freeze_prompts(ds, ["box", "noisy_box"], prompts_per_image=4)
        results = evaluate_masks(BoxFillPredictor(), ds, prompts)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
    finally:
        torch.distributed.destroy_process_group()


def test_distributed_eval_counts_each_image_once(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2,
             join=True)
    ds = RectDataset(count=5)
    single = evaluate_masks(BoxFillPredictor(), ds,
                            freeze_prompts(ds, ["box", "noisy_box"], prompts_per_image=4))
    single = json.loads(json.dumps(single))
    for rank in range(2):
        gathered = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert as_text(gathered["records"]) == as_text(single["records"])
        assert as_text(gathered["kinds"]) == as_text(single["kinds"])
    assert len(single["records"]) == 5 * 2


# --- the command --------------------------------------------------------------------------

def parse(argv):
    from stable_sam.commands import evaluate as command

    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers(dest="command"))
    return command, parser.parse_args(["evaluate"] + argv)


def test_command_runs_and_accumulates(tmp_path, synthetic_hqseg, capsys):
    data = str(make_synthetic_dataset(tmp_path / "toy", num_images=2, image_size=(48, 64)))
    common = ["--model-type", "tiny", "--data", "hqseg", data, "--prompts",
              str(tmp_path / "prompts.json"), "--out", str(tmp_path / "out"), "--kinds", "box",
              "points1", "--prompts-per-image", "2", "--device", "cpu"]
    command, args = parse(common)
    assert command.run(args) == 0
    assert load_prompts(tmp_path / "prompts.json")["toy"]["kinds"] == ["box", "points1"]
    command, args = parse(common + ["--no-plugins"])
    assert command.run(args) == 0
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| Stable-SAM tiny | toy |" in table and "| SAM tiny | toy |" in table
    assert "1 Point mIoU / mBIoU / mSF" in table
    assert "| SAM tiny | toy |" in capsys.readouterr().out


def test_command_errors(tmp_path):
    from stable_sam.commands import CliError

    command, args = parse(["--model-type", "tiny", "--data", "voc", "x", "--prompts",
                           str(tmp_path / "p.json"), "--out", str(tmp_path)])
    with pytest.raises(CliError, match="--data must be one of"):
        command.run(args)
    data = str(make_synthetic_dataset(tmp_path / "a", num_images=1, image_size=(32, 32)))
    save_prompts(tmp_path / "other.json", freeze_prompts(RectDataset(), ["box"]))
    command, args = parse(["--model-type", "tiny", "--data", "hqseg", data, "--prompts",
                           str(tmp_path / "other.json"), "--out", str(tmp_path / "o")])
    with pytest.raises(CliError, match=r"has no prompts for \['a'\]"):
        command.run(args)


def test_coarse_masks_of_the_wrong_size_are_refused(tiny_predictor, synthetic_hqseg):
    frozen = freeze_prompts(synthetic_hqseg, ["coarse_mask"], prompts_per_image=1,
                            model_image_size=1024)
    with pytest.raises(ValueError, match=r"\(256, 256\) logits but the model takes \(64, 64\)"):
        evaluate_masks(tiny_predictor, synthetic_hqseg, frozen)
