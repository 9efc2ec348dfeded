"""The base SAM trainer of the reproduction: it trains (weights move, loss falls on a batch it
sees again) and writes a file the demo builder loads strictly."""
import pytest
import torch

from stable_sam.build import build_stable_sam
from stable_sam.cli import main
from stable_sam.reproduction.base_sam import BaseTrainConfig, train_base_sam
from stable_sam.families.demo.build import build_demo_sam


def test_trains_and_writes_a_loadable_base(tmp_path):
    path = tmp_path / "base.safetensors"
    summary = train_base_sam(BaseTrainConfig(num_scenes=4, steps=3, images_per_step=2, targets_per_image=2), path,
                             progress=False)
    assert summary["steps"] == 3 and path.is_file()
    model = build_stable_sam("demo", sam_checkpoint=str(path))
    # the file holds float16: compare with the initial weights rounded the same way
    initial = {k: v.half().float() if v.is_floating_point() else v
               for k, v in build_demo_sam(BaseTrainConfig().architecture).state_dict().items()}
    trained = model.sam.state_dict()
    moved = [k for k in initial if not torch.equal(initial[k], trained[k])]
    assert any(k.startswith("image_encoder.") for k in moved)
    assert any(k.startswith("mask_decoder.") for k in moved)


def test_a_foreign_file_is_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    from stable_sam.checkpoint import CheckpointError

    with pytest.raises(CheckpointError):
        build_stable_sam("demo", sam_checkpoint=str(bad))


def test_reproduce_refuses_bad_numbers_before_any_work(tmp_path, capsys):
    assert main(["reproduce", "--out", str(tmp_path / "r"), "--base-steps", "0"]) == 2
    assert "stable-sam reproduce: error: --base-steps must be >= 1, is 0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("below", ["", "sub"])
def test_reproduce_refuses_a_work_folder_that_is_a_file(tmp_path, capsys, below):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / below if below else blocker
    assert main(["reproduce", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stable-sam reproduce: error: --out") and "is not a folder" in err
    assert blocker.read_text() == "not a folder"


def test_reproduce_refuses_fewer_training_scenes_than_one_batch(tmp_path, capsys):
    assert main(["reproduce", "--out", str(tmp_path / "r"), "--train-scenes", "3"]) == 2
    assert ("stable-sam reproduce: error: --train-scenes must be >= 4 (one training batch), is 3"
            in capsys.readouterr().err)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("steps", [1, 2, 20])
def test_base_trains_for_any_step_count_and_fewer_scenes_than_a_step_takes(tmp_path, steps):
    summary = train_base_sam(BaseTrainConfig(num_scenes=2, steps=steps, images_per_step=3,
                                             targets_per_image=2), tmp_path / "b.safetensors",
                             progress=False)
    assert summary["steps"] == steps


def test_the_schedule_warms_up_and_keeps_learning_in_its_last_third():
    from stable_sam.reproduction.base_sam import lr_at

    config = BaseTrainConfig(steps=300, lr=1e-3, min_lr_ratio=0.1)
    lrs = [lr_at(step, config) for step in range(config.steps)]
    assert lrs[0] < lrs[14] == pytest.approx(1e-3)  # 5 % warm-up to the peak
    assert all(a >= b for a, b in zip(lrs[15:], lrs[16:]))  # then only down
    assert min(lrs[200:]) >= 1e-4 and lrs[-1] == pytest.approx(1e-4, rel=1e-3)
    assert max(lrs[200:]) > 2e-4  # the last third is not spent at the floor either


def test_every_target_of_a_scene_is_drawn():
    import numpy as np

    from stable_sam.data.scenes import TRAIN_SEED, make_scene, scene_targets
    from stable_sam.reproduction.base_sam import _pick_targets

    targets = scene_targets(make_scene(TRAIN_SEED, 0, version=2))
    rng = np.random.default_rng(0)
    drawn = {id(m) for _ in range(50) for m in _pick_targets(targets, 4, rng)}
    assert drawn == {id(m) for m in targets} and len(targets) >= 3
    assert len({id(m) for m in _pick_targets(targets, 3, rng)}) == 3  # no repeats when enough
    assert len(_pick_targets(targets[:1], 4, rng)) == 4


def test_the_base_trains_the_configured_architecture_and_scenes(tmp_path):
    from stable_sam.families.demo.build import read_architecture

    for architecture, version in (("demo-sam/1", 1), ("demo-sam/2", 2)):
        path = tmp_path / f"{version}.safetensors"
        train_base_sam(BaseTrainConfig(num_scenes=2, steps=1, images_per_step=2,
                                       targets_per_image=2, architecture=architecture,
                                       scene_version=version), path, progress=False)
        assert read_architecture(path) == architecture


class _StopAfter:
    """StopRequest's interface: `requested` turns true once `steps` steps have run."""

    def __init__(self, steps: int):
        self.steps, self.calls = steps, 0

    @property
    def requested(self) -> bool:
        self.calls += 1
        return self.calls >= self.steps


def test_a_stopped_base_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    config = BaseTrainConfig(num_scenes=3, steps=5, images_per_step=2, targets_per_image=2)
    whole = train_base_sam(config, tmp_path / "whole.safetensors", progress=False)
    assert whole["stopped"] is False
    ckpt, cut_path = tmp_path / "base_checkpoint.pt", tmp_path / "cut.safetensors"
    cut = train_base_sam(config, cut_path, progress=False, checkpoint_path=ckpt,
                         stop=_StopAfter(2))
    assert cut == {"stopped": True, "step": 2, "checkpoint": str(ckpt)}
    assert ckpt.is_file() and not cut_path.exists()
    again = train_base_sam(config, cut_path, progress=False, checkpoint_path=ckpt)
    assert again["stopped"] is False and not ckpt.exists()
    a, b = load_file(str(tmp_path / "whole.safetensors")), load_file(str(cut_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again["final_loss"] == whole["final_loss"]


def test_a_damaged_or_foreign_base_checkpoint_is_refused(tmp_path):
    from stable_sam.reproduction.base_sam import BaseCheckpointError

    config = BaseTrainConfig(num_scenes=2, steps=3, images_per_step=2, targets_per_image=2)
    ckpt = tmp_path / "base_checkpoint.pt"
    train_base_sam(config, tmp_path / "b.safetensors", progress=False, checkpoint_path=ckpt,
                   stop=_StopAfter(1))
    other = BaseTrainConfig(num_scenes=2, steps=4, images_per_step=2, targets_per_image=2)
    with pytest.raises(BaseCheckpointError, match="written with other settings"):
        train_base_sam(other, tmp_path / "b.safetensors", progress=False, checkpoint_path=ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(BaseCheckpointError, match="could not be read.*delete it"):
        train_base_sam(config, tmp_path / "b.safetensors", progress=False, checkpoint_path=ckpt)


@pytest.mark.parametrize("box_share", [0.0, 0.25, 0.5, 1.0])
def test_the_box_share_of_the_steps_is_the_configured_one(box_share):
    import numpy as np

    from stable_sam.reproduction.base_sam import _pick_kind

    rng = np.random.default_rng(0)
    kinds = [_pick_kind(BaseTrainConfig(box_share=box_share), rng) for _ in range(4000)]
    assert np.mean([k == "box" for k in kinds]) == pytest.approx(box_share, abs=0.03)
    points = [k for k in kinds if k != "box"]
    if points:  # the rest: 3, 5 or 10 points, uniformly; never one point or a loose box
        assert set(points) == {"points3", "points5", "points10"}
        assert max(points.count(k) for k in set(points)) < 1.15 * min(points.count(k)
                                                                      for k in set(points))


@pytest.mark.parametrize("grad_clip, calls", [(1.0, [1.0, 1.0]), (0.0, [])])
def test_gradients_are_clipped_at_the_configured_norm(tmp_path, monkeypatch, grad_clip, calls):
    seen = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda params, max_norm: seen.append(max_norm) or real(params, max_norm))
    train_base_sam(BaseTrainConfig(num_scenes=2, steps=2, grad_clip=grad_clip),
                   tmp_path / "b.safetensors", progress=False)
    assert seen == calls


# -- SAM's own recipe (issue 31): box jitter, one click under the ambiguity loss, correction
# rounds; each off by default ------------------------------------------------------------------

def _scene_masks(count: int = 4):
    import numpy as np

    from stable_sam.data.scenes import TRAIN_SEED, make_scene, scene_targets

    targets = scene_targets(make_scene(TRAIN_SEED, 0, version=2))
    return [np.asarray(m) for m in targets[:count]]


def test_jittered_boxes_move_by_sams_noise_within_the_cap():
    import numpy as np

    from stable_sam.data.prompts import gt_box
    from stable_sam.reproduction.base_prompts import BOX_JITTER_MAX_PX, jitter_boxes
    from stable_sam.reproduction.base_sam import _prompt_tensors

    rng = np.random.default_rng(0)
    # a 100 x 50 box far from the borders: each coordinate's noise has std 10 % of its side
    box = np.array([[60, 80, 160, 130]], np.float32)
    moved = jitter_boxes(np.repeat(box, 4000, 0), (256, 256), 0.1, rng)
    assert np.std(moved - box, axis=0) == pytest.approx([10, 5, 10, 5], rel=0.06)
    assert np.abs(np.mean(moved - box, axis=0)).max() < 0.5
    # a box almost the image: std 0.5 x 250 px, every move capped, the box clipped and ordered
    big = np.array([[3, 3, 253, 253]], np.float32)
    moved = jitter_boxes(np.repeat(big, 2000, 0), (256, 256), 0.5, rng)
    assert np.abs(moved - big).max() <= BOX_JITTER_MAX_PX
    assert np.abs(moved - big).max() > 0.9 * BOX_JITTER_MAX_PX  # the cap is reached, not less
    assert moved.min() >= 0 and moved.max() <= 255
    assert (moved[:, 2] >= moved[:, 0]).all() and (moved[:, 3] >= moved[:, 1]).all()
    # through the trainer's prompts: jittered training boxes are near the tight ones, not them
    masks = _scene_masks()
    tight = np.stack([gt_box(m) for m in masks])
    _, boxes = _prompt_tensors("box", masks, rng, box_jitter=0.1)
    assert np.abs(boxes.numpy() - tight).max() <= BOX_JITTER_MAX_PX
    assert not np.array_equal(boxes.numpy(), tight)
    before = rng.bit_generator.state
    _, boxes = _prompt_tensors("box", masks, rng)  # off: the tight box, no draw
    assert np.array_equal(boxes.numpy(), tight) and rng.bit_generator.state == before


@pytest.mark.parametrize("box_share, click_share", [(0.25, 0.25), (0.0, 1.0), (0.5, 0.0)])
def test_the_click_share_of_the_steps_is_one_positive_click(box_share, click_share):
    import numpy as np

    from stable_sam.reproduction.base_sam import _pick_kind, _prompt_tensors

    rng = np.random.default_rng(0)
    config = BaseTrainConfig(box_share=box_share, click_share=click_share)
    kinds = [_pick_kind(config, rng) for _ in range(4000)]
    assert np.mean([k == "box" for k in kinds]) == pytest.approx(box_share, abs=0.03)
    assert np.mean([k == "click" for k in kinds]) == pytest.approx(click_share, abs=0.03)
    masks = _scene_masks()
    (coords, labels), boxes = _prompt_tensors("click", masks, rng)
    assert boxes is None and coords.shape == (len(masks), 1, 2) and labels.tolist() == [[1]] * 4
    x, y = coords[:, 0].long().T
    assert all(m[int(r), int(c)] for m, r, c in zip(masks, y, x))  # inside its object


def _planted_ambiguity():
    """Two prompts, three outputs each: prompt 0's output 2 and prompt 1's output 0 are close
    to their targets, the others are noise."""
    torch.manual_seed(0)
    gt = (torch.rand(2, 1, 12, 12) > 0.6).float()
    logits = torch.randn(2, 3, 12, 12)
    logits[0, 2] = 6 * (2 * gt[0, 0] - 1) + 0.5 * torch.randn(12, 12)
    logits[1, 0] = 3 * (2 * gt[1, 0] - 1) + 0.5 * torch.randn(12, 12)
    return logits.requires_grad_(True), torch.rand(2, 3, requires_grad=True), gt


def test_the_ambiguity_loss_backpropagates_only_the_best_of_the_three_outputs():
    import torch.nn.functional as F

    from stable_sam.reproduction.base_sam import _actual_iou, _ambiguity_loss, _dice

    logits, iou_pred, gt = _planted_ambiguity()
    with torch.no_grad():
        per_output = torch.tensor([[float(F.binary_cross_entropy_with_logits(logits[i, k],
                                                                             gt[i, 0])
                                          + _dice(logits[i:i + 1, k:k + 1], gt[i:i + 1]))
                                    for k in range(3)] for i in range(2)])
    assert per_output.argmin(1).tolist() == [2, 0]  # the planted best outputs
    iou = _actual_iou(logits, gt)
    mse = ((iou_pred - iou) ** 2).mean().item()
    loss, kept_iou = _ambiguity_loss(logits, iou_pred, gt)
    assert loss.item() == pytest.approx(float(per_output.min(1).values.mean()) + mse, rel=1e-5)
    assert float(per_output.mean()) + mse > loss.item() + 0.3  # a mean would be far larger
    assert kept_iou.tolist() == [iou[0, 2].item(), iou[1, 0].item()]
    loss.backward()
    moved = logits.grad.flatten(2).abs().sum(2) > 0  # which outputs the mask loss reaches
    assert moved.tolist() == [[False, False, True], [True, False, False]]
    # the IoU head learns all three outputs' actual IoUs
    assert torch.allclose(iou_pred.grad, 2 * (iou_pred - iou).detach() / 6)


def test_a_correction_click_is_drawn_from_the_larger_error_region_with_its_label():
    import numpy as np

    from stable_sam.reproduction.base_prompts import NO_CLICK, correction_clicks

    gt = np.zeros((4, 16, 24), bool)
    pred = np.zeros_like(gt)
    gt[0, 2:4, :] = True  # 0: missed a strip (48 false negatives): a positive click on it
    gt[1, 10:14, 4:8], pred[1, 10:14, 4:20] = True, True  # 1: 48 false positives, negative
    gt[2, :8, :], pred[2, 4:12, :] = True, True  # 2: 96 missed and 96 extra: the tie is positive
    gt[3, 5:9, 5:9], pred[3, 5:9, 5:9] = True, True  # 3: no error, no click
    missed, extra = gt & ~pred, pred & ~gt
    rng = np.random.default_rng(0)
    seen = [set(), set()]
    for _ in range(300):
        coords, labels = correction_clicks(pred, gt, rng)
        assert coords.shape == (4, 1, 2) and labels.tolist() == [[1], [0], [1], [NO_CLICK]]
        x, y = coords[:, 0].astype(int).T  # (x, y) = (column, row), the prompts' frame
        assert missed[0, y[0], x[0]] and extra[1, y[1], x[1]] and missed[2, y[2], x[2]]
        seen[0].add((x[0], y[0]))
        seen[1].add((x[1], y[1]))
    assert len(seen[0]) > 40 and len(seen[1]) > 40  # uniform over the region, not one pixel


def test_each_correction_round_adds_a_click_and_feeds_the_previous_logits(monkeypatch):
    import numpy as np
    import torch.nn.functional as F

    from stable_sam.families.sam import StableSam
    from stable_sam.reproduction import base_sam

    model = StableSam(build_demo_sam(BaseTrainConfig().architecture), None, model_type="demo")
    model.sam.requires_grad_(True)  # as the trainer does: the rounds see logits with a graph
    masks = _scene_masks(2)
    gt = torch.as_tensor(np.stack(masks)[:, None], dtype=torch.float32)
    points, _ = base_sam._prompt_tensors("click", masks, np.random.default_rng(0))
    embeddings = torch.randn(2, 256, 16, 16)
    calls, preds = [], []
    real_decode, real_clicks = base_sam._decode, base_sam.correction_clicks

    def decode(model, embeddings, points, boxes, mask_input, multimask):
        out = real_decode(model, embeddings, points, boxes, mask_input, multimask)
        calls.append((points, mask_input, multimask, out))
        return out

    monkeypatch.setattr(base_sam, "_decode", decode)
    monkeypatch.setattr(base_sam, "correction_clicks",
                        lambda pred, g, rng: preds.append(pred) or real_clicks(pred, g, rng))
    loss, first_iou = base_sam._step_loss(model, embeddings, points, None, gt, True, 2,
                                          np.random.default_rng(1))
    assert [c[2] for c in calls] == [True, False, False]  # three masks for the one click only
    assert calls[0][1] is None
    rows = torch.arange(2)
    for before, after, pred in zip(calls, calls[1:], preds):
        low_res, iou_pred = before[3]
        kept = iou_pred.argmax(1)  # SAM: the output with the highest predicted IoU goes on
        assert after[1].shape == (2, 1, 64, 64) and not after[1].requires_grad
        assert torch.equal(after[1], low_res[rows, kept][:, None])  # the previous logits
        full = F.interpolate(low_res, size=(256, 256), mode="bilinear", align_corners=False)
        assert np.array_equal(pred, (full[rows, kept] > 0).numpy())  # its error is clicked on
        assert torch.equal(after[0][0][:, :-1], before[0][0])  # earlier clicks kept, one added
        assert torch.equal(after[0][1][:, :-1], before[0][1])
    assert calls[2][0][0].shape == (2, 3, 2)
    # the loss is the mean over the three predictions
    rounds = [base_sam._ambiguity_loss(F.interpolate(calls[0][3][0], size=(256, 256),
                                                     mode="bilinear", align_corners=False),
                                       calls[0][3][1], gt)[0]]
    rounds += [base_sam._mask_loss(F.interpolate(c[3][0], size=(256, 256), mode="bilinear",
                                                 align_corners=False), c[3][1], gt)[0]
               for c in calls[1:]]
    assert loss.item() == pytest.approx(torch.stack(rounds).mean().item(), rel=1e-6)
    assert loss.requires_grad and first_iou.shape == (2,)
    assert torch.equal(first_iou, base_sam._ambiguity_loss(
        F.interpolate(calls[0][3][0], size=(256, 256), mode="bilinear", align_corners=False),
        calls[0][3][1], gt)[1])


# final_loss of BaseTrainConfig(num_scenes=3, steps=4, images_per_step=2, targets_per_image=2,
# box_share=0.5) (steps: 5 points, 3 points, box, box) written by the trainer before SAM's recipe
# was added. One extra draw of the generator (box_jitter=1e-9) moves it by 3e-4 of itself
DEFAULT_RECIPE_FINAL_LOSS = 1.6580449640750885


def test_the_default_recipe_is_todays_and_never_runs_sams_additions(tmp_path, monkeypatch):
    from stable_sam.reproduction import base_sam

    def refuse(*args, **kwargs):
        raise AssertionError("the default recipe ran one of SAM's additions")

    for name in ("jitter_boxes", "correction_clicks", "_ambiguity_loss"):
        monkeypatch.setattr(base_sam, name, refuse)
    kinds, decodes = [], []
    real_kind, real_decode = base_sam._pick_kind, base_sam._decode
    monkeypatch.setattr(base_sam, "_pick_kind", lambda c, r: kinds.append(real_kind(c, r))
                        or kinds[-1])
    monkeypatch.setattr(base_sam, "_decode", lambda *a: decodes.append(a[4:]) or real_decode(*a))
    config = BaseTrainConfig(num_scenes=3, steps=4, images_per_step=2, targets_per_image=2,
                             box_share=0.5)
    summary = train_base_sam(config, tmp_path / "b.safetensors", progress=False)
    assert kinds == ["points5", "points3", "box", "box"]
    assert decodes == [(None, False)] * 4  # one single-mask prediction a step, no mask prompt
    assert summary["final_loss"] == pytest.approx(DEFAULT_RECIPE_FINAL_LOSS, rel=2e-5)


def test_sams_recipe_trains_and_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path,
                                                                                  monkeypatch):
    from safetensors.torch import load_file

    from stable_sam.reproduction import base_sam

    kinds = []
    real_kind = base_sam._pick_kind
    monkeypatch.setattr(base_sam, "_pick_kind", lambda c, r: kinds.append(real_kind(c, r))
                        or kinds[-1])
    config = BaseTrainConfig(num_scenes=3, steps=4, images_per_step=2, targets_per_image=2,
                             box_share=0.3, click_share=0.4, box_jitter=0.1, correction_rounds=1)
    whole = train_base_sam(config, tmp_path / "whole.safetensors", progress=False)
    assert sorted(set(kinds)) == ["box", "click", "points5"]  # each kind of step ran
    ckpt, cut_path = tmp_path / "ckpt.pt", tmp_path / "cut.safetensors"
    train_base_sam(config, cut_path, progress=False, checkpoint_path=ckpt, stop=_StopAfter(2))
    again = train_base_sam(config, cut_path, progress=False, checkpoint_path=ckpt)
    a, b = load_file(str(tmp_path / "whole.safetensors")), load_file(str(cut_path))
    assert all(torch.equal(a[k], b[k]) for k in a) and all(v.isfinite().all() for v in a.values())
    assert again["final_loss"] == whole["final_loss"]
    assert kinds[4:] == kinds[:4]  # the resumed run drew the same steps


def test_a_checkpoint_written_before_sams_recipe_resumes_at_its_defaults(tmp_path):
    from stable_sam.reproduction.base_sam import ADDED_FIELDS, BaseCheckpointError

    config = BaseTrainConfig(num_scenes=2, steps=2, images_per_step=2, targets_per_image=2)
    ckpt = tmp_path / "ckpt.pt"
    train_base_sam(config, tmp_path / "b.safetensors", progress=False, checkpoint_path=ckpt,
                   stop=_StopAfter(1))
    state = torch.load(ckpt, weights_only=True)
    for name in ADDED_FIELDS:  # as the trainer before these fields wrote it
        del state["config"][name]
    torch.save(state, ckpt)
    with pytest.raises(BaseCheckpointError, match="written with other settings"):
        train_base_sam(BaseTrainConfig(num_scenes=2, steps=2, images_per_step=2,
                                       targets_per_image=2, click_share=0.25),
                       tmp_path / "b.safetensors", progress=False, checkpoint_path=ckpt)
    summary = train_base_sam(config, tmp_path / "b.safetensors", progress=False,
                             checkpoint_path=ckpt)
    assert summary["stopped"] is False and not ckpt.exists()


@pytest.mark.parametrize("fields, message", [
    ({"box_jitter": -0.1}, "box_jitter must be >= 0, is -0.1"),
    ({"box_share": 0.25, "click_share": 0.8},
     r"click_share must be in \[0, 1 - box_share = 0.75\], is 0.8"),
    ({"click_share": -0.1}, "click_share must be in"),
    ({"correction_rounds": -1}, "correction_rounds must be >= 0, is -1"),
])
def test_bad_recipe_settings_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        BaseTrainConfig(**fields)
