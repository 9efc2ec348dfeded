"""The worst-case box search on stand-in models whose answer is known: the mask is the prompt box
itself (the worst box sits on the constraint, IoU ~ tau; the best is the GT box), or the box
moved by a planted shift (the best box is the GT box moved back). A brute-force grid over boxes
is the oracle; every reported box is checked against the constraint; a search run the wrong way
(a flipped sign in the objective) misses the oracle."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stable_sam.data.prompts import gt_box
from stable_sam.evaluation.box_constraint import box_ious, clip_boxes, feasible, project
from stable_sam.evaluation.worst_box import WorstBoxConfig, check_taus, search_worst_boxes

IMAGE_SIZE = (96, 120)  # (H, W)
TARGET = (24, 18, 71, 53)  # x0, y0, x1, y1 of the target rectangle (inclusive pixels)
TOLERANCE = 0.02  # of IoU: a grid step of the oracle is worth about 0.01


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The stand-in's tensors are a few thousand pixels: a second thread only adds
    synchronisation (tens of ms a call when another process holds the other core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rectangle(box, image_size=IMAGE_SIZE) -> np.ndarray:
    mask = np.zeros(image_size, bool)
    x0, y0, x1, y1 = box
    mask[y0:y1 + 1, x0:x1 + 1] = True
    return mask


class BoxIsTheMask:
    """A BoxDecoder whose mask is the prompt box moved by `shift` (dx, dy): a pixel's logit is
    `sharpness` x its signed distance into the moved box, whose corner pixels are inside (a GT
    box's convention), so the unmoved GT box gives the target exactly."""

    mask_threshold = 0.0

    def __init__(self, shift=(0.0, 0.0), sharpness=2.0, image_size=IMAGE_SIZE):
        self.image_size = self.low_res_size = image_size
        self.shift = torch.tensor([shift[0], shift[1], shift[0], shift[1]])
        self.sharpness = sharpness
        rows, cols = torch.meshgrid(torch.arange(image_size[0], dtype=torch.float32),
                                    torch.arange(image_size[1], dtype=torch.float32),
                                    indexing="ij")
        self.rows, self.cols = rows, cols

    def low_res(self, boxes):
        x0, y0, x1, y1 = (boxes + self.shift)[:, :, None, None].unbind(1)
        inside = torch.minimum(torch.minimum(self.cols - x0 + 0.5, x1 + 0.5 - self.cols),
                               torch.minimum(self.rows - y0 + 0.5, y1 + 0.5 - self.rows))
        return (self.sharpness * inside)[:, None]

    def resize(self, low_res, size):
        if tuple(size) == tuple(low_res.shape[-2:]):
            return low_res[:, 0]
        return F.interpolate(low_res, size, mode="bilinear", align_corners=False)[:, 0]

    def masks(self, boxes, size):
        with torch.no_grad():
            logits = self.resize(self.low_res(torch.as_tensor(boxes, dtype=torch.float32)), size)
        return (logits > self.mask_threshold).numpy()


def pixel_ious(boxes, shift, target=TARGET):
    """The oracle: the stand-in's mask IoU with the target, in closed form (integer ranges)."""
    boxes = np.asarray(boxes, np.float64) + np.array([shift[0], shift[1]] * 2)
    lo = np.ceil(boxes[:, :2] - 0.5 + 1e-9)  # first pixel with logit > 0 per axis
    hi = np.floor(boxes[:, 2:] + 0.5 - 1e-9)
    lo, hi = np.maximum(lo, 0), np.minimum(hi, np.array(IMAGE_SIZE[::-1]) - 1)
    sides = np.clip(hi - lo + 1, 0, None)
    t_lo, t_hi = np.array(target[:2]), np.array(target[2:])
    inter = np.clip(np.minimum(hi, t_hi) - np.maximum(lo, t_lo) + 1, 0, None).prod(1)
    union = sides.prod(1) + (t_hi - t_lo + 1).prod() - inter
    return inter / union


def oracle_extremes(tau, shift, steps=13):
    """(min, max) of the stand-in's IoU over a grid of feasible boxes around the GT box."""
    gt = np.array(TARGET, np.float64)
    w, h = gt[2] - gt[0], gt[3] - gt[1]
    axes = [gt[i] + np.linspace(-0.45, 0.45, steps) * (w if i % 2 == 0 else h) for i in range(4)]
    grid = clip_boxes(np.array(list(itertools.product(*axes))), IMAGE_SIZE)
    grid = grid[feasible(grid, gt, tau, IMAGE_SIZE)]
    ious = pixel_ious(grid, shift)
    return ious.min(), ious.max()


def test_the_stand_in_is_the_oracle():
    decoder, boxes = BoxIsTheMask((4, -3)), np.array([TARGET, [19.2, 25.7, 58.4, 48.6]])
    target = rectangle(TARGET)
    for box, mask, expected in zip(boxes, decoder.masks(boxes, IMAGE_SIZE),
                                   pixel_ious(boxes, (4, -3))):
        assert (mask & target).sum() / (mask | target).sum() == pytest.approx(expected)
    assert (BoxIsTheMask().masks(boxes[:1], IMAGE_SIZE)[0] == target).all()


SHIFTS = [(0.0, 0.0), (4.0, -3.0), (-3.0, 4.0)]


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("seed", [0, 1])
def test_the_search_finds_the_known_worst_and_best_boxes(shift, seed):
    target = rectangle(TARGET)
    decoder = BoxIsTheMask(shift)
    records = search_worst_boxes(decoder, target, taus=(0.5, 0.7), seed=seed,
                                 config=WorstBoxConfig(steps=10, time_budget_s=None))
    base = pixel_ious(np.array([TARGET]), shift)[0]
    for record in records:
        low, high = oracle_extremes(record["tau"], shift)
        assert record["iou_base"] == pytest.approx(base)
        assert record["iou_min"] <= low + TOLERANCE, record
        assert record["iou_max"] >= high - TOLERANCE, record
        # the values are the boxes' own (scored again through the oracle)
        assert pixel_ious([record["box_min"]], shift)[0] == pytest.approx(record["iou_min"])
        assert pixel_ious([record["box_max"]], shift)[0] == pytest.approx(record["iou_max"])
    if shift != (0.0, 0.0):  # the planted answer: the GT box moved back by the shift
        best = np.array(TARGET) - np.array(shift * 2)
        assert records[0]["iou_max"] >= 0.97
        assert np.abs(np.array(records[0]["box_max"]) - best).max() <= 3
    else:  # the mask is the box: the worst sits on the constraint
        for record in records:
            assert record["iou_min"] == pytest.approx(record["tau"], abs=0.03)
            assert record["iou_max"] == 1.0


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("taus", [(0.5, 0.7), (0.3,), (0.9, 0.6)])
def test_every_reported_box_satisfies_the_constraint(shift, taus):
    target = rectangle(TARGET)
    records = search_worst_boxes(BoxIsTheMask(shift), target, taus=taus, seed=3,
                                 config=WorstBoxConfig(steps=6, starts=4, step_size=0.3,
                                                       time_budget_s=None))
    gt = gt_box(target)
    assert [r["tau"] for r in records] == list(taus)
    for record in records:
        for key in ("box_min", "box_max"):
            box = np.array(record[key])
            assert feasible(box[None], gt, record["tau"], IMAGE_SIZE)[0], (key, record)
            assert record[f"box_iou_{key[4:]}"] == pytest.approx(box_ious(box, gt)[0])
            assert record[f"box_iou_{key[4:]}"] >= record["tau"]
        assert record["iou_min"] <= record["iou_base"] <= record["iou_max"]
        assert record["visited"] > 1 and record["steps"] == 6 and not record["truncated"]


def test_the_same_seed_gives_the_same_boxes_and_another_seed_other_starts():
    target = rectangle(TARGET)
    config = WorstBoxConfig(steps=4, time_budget_s=None)
    runs = [search_worst_boxes(BoxIsTheMask((3, 2)), target, seed=s, config=config)
            for s in (5, 5, 6)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_the_time_budget_stops_the_search_and_says_so():
    records = search_worst_boxes(BoxIsTheMask(), rectangle(TARGET), seed=0,
                                 config=WorstBoxConfig(steps=50, time_budget_s=1e-9))
    # the starts are scored, then the budget is spent
    assert all(r["truncated"] and r["steps"] == 0 for r in records)
    assert all(r["iou_min"] <= r["iou_base"] <= r["iou_max"] for r in records)


def test_a_one_pixel_wide_target_has_only_its_own_box():
    target = np.zeros(IMAGE_SIZE, bool)
    target[20:60, 33] = True
    (record,) = search_worst_boxes(BoxIsTheMask(), target, taus=(0.5,))
    assert record["box_min"] == record["box_max"] == [33.0, 20.0, 33.0, 59.0]
    assert record["iou_min"] == record["iou_base"] == record["iou_max"] == 1.0


@pytest.mark.parametrize("box", [[10.0, 10.0, 300.0, 150.0], [119.0, 89.0, 40.0, 30.0],
                                 [24.0, 18.0, 119.0, 95.0], [-20.0, 0.0, 60.0, 40.0]])
@pytest.mark.parametrize("tau", [0.5, 0.7, 0.95])
def test_the_projection_always_lands_in_the_feasible_set(box, tau):
    gt = np.array(TARGET, np.float64)
    projected = project(np.array([box]), gt, tau, IMAGE_SIZE)
    assert feasible(projected, gt, tau, IMAGE_SIZE)[0]
    # a feasible box is left where it is
    inside = np.array([[26.0, 19.0, 70.0, 55.0]])
    assert np.array_equal(project(inside, gt, 0.5, IMAGE_SIZE), inside)


def test_box_ious_match_the_prompts_box_iou():
    from stable_sam.data.prompts import box_iou

    rng = np.random.default_rng(0)
    gt = np.array([20.0, 30.0, 90.0, 70.0])  # any box: both sides compute continuous IoU
    boxes = np.sort(rng.uniform(0, 120, (50, 2, 2)), axis=1).transpose(0, 2, 1).reshape(50, 4)
    boxes = boxes[:, [0, 2, 1, 3]]
    assert np.allclose(box_ious(boxes, gt), [box_iou(b, gt) for b in boxes])


@pytest.mark.parametrize("bad, message", [
    (dict(steps=-1), "steps must be an integer in 0..1000"),
    (dict(steps=2.5), "steps must be an integer"),
    (dict(starts=0), "starts must be an integer in 1..64"),
    (dict(step_size=0.0), "step_size must be a finite number > 0"),
    (dict(temperature=float("nan")), "temperature must be a finite number > 0"),
    (dict(time_budget_s=-1.0), "time_budget_s must be None or a finite number > 0"),
])
def test_bad_settings_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        WorstBoxConfig(**bad).check()


@pytest.mark.parametrize("taus, message", [((), "at least one tau"), ((0.5, 1.0), r"in \(0, 1\)"),
                                           ((0.7, 0.7), "given twice")])
def test_bad_taus_are_refused(taus, message):
    with pytest.raises(ValueError, match=message):
        check_taus(taus)
