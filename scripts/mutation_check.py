"""Plants known bugs in the model, data, training and evaluation code, one at a time, and checks
that the tests guarding each one fail.

    .venv/bin/python scripts/mutation_check.py             # every mutation (about 10 minutes)
    .venv/bin/python scripts/mutation_check.py --only drp_no_gelu eval_drops_a_target
    .venv/bin/python scripts/mutation_check.py --list      # names and what each plants
    .venv/bin/python scripts/mutation_check.py --verify    # each target text occurs exactly once

The working tree is never touched: the tracked files (and the compiled extension) are copied to
a temporary directory, each mutation is written there, its tests run with that copy first on
the import path, and the file is restored. A mutation counts as caught when pytest reports
failed tests (exit status 1); an import or collection error (another status) is reported as an
error, since a planted bug that merely breaks the syntax proves nothing. Exit status: 0 when
every mutation was caught, 1 otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

T = "tests/stable_sam/"
COMPOSITION = T + "plugins/test_plugin_composition.py"
ROUTING = (T + "families/sam/test_stable_sam_model.py::"
           "test_routing_reads_the_output_mask_token_after_layer2_self_attention")
BLEND = T + "plugins/test_plugins.py"
NOISE = T + "data/test_prompts.py"
FIDELITY = T + "training/test_trainer_fidelity.py"
STEP = FIDELITY + "::test_a_training_step_optimises_bce_plus_dice_on_the_sampled_points"
CONFIG = T + "training/test_train_config.py"
OCCLUSION = T + "data/test_occlusion.py"
PROTOCOL = T + "evaluation/test_protocol_fidelity.py"
METRICS = T + "evaluation/test_metrics.py"


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # file to change, relative to the repository root
    old: str  # text that must occur exactly once in it
    new: str  # its replacement: the planted bug
    tests: tuple[str, ...]  # pytest node ids that must fail
    what: str


M = Mutation
MUTATIONS = [
    # ------------------------------------------------------------------ model
    M("dsp_no_gelu", "stable_sam/plugins/dsp.py", "hidden = F.gelu(self.norm(hidden))",
      "hidden = self.norm(hidden)", (COMPOSITION,), "offset net without its activation"),
    M("dsp_no_norm", "stable_sam/plugins/dsp.py", "hidden = F.gelu(self.norm(hidden))",
      "hidden = F.gelu(hidden)", (COMPOSITION,), "offset net without its LayerNorm"),
    M("dsp_reads_x_p", "stable_sam/plugins/dsp.py", "self.dwconv(x_star.permute(",
      "self.dwconv(x_p.permute(", (COMPOSITION,), "offset net fed x_p instead of x*"),
    M("dsp_offset_layout", "stable_sam/plugins/dsp.py",
      "offset = self.offset_proj(hidden).view(n, h, w, self.num_groups, 2)",
      "offset = self.offset_proj(hidden).view(n, h, w, 2, self.num_groups).transpose(-1, -2)",
      (COMPOSITION,), "offset channels read as (xy, group) instead of (group, xy)"),
    M("drp_no_gelu", "stable_sam/plugins/drp.py",
      "self.out(F.gelu(self.norm(self.hidden(output_mask_token))))",
      "self.out(self.norm(self.hidden(output_mask_token)))", (COMPOSITION,),
      "routing MLP without its activation"),
    M("drp_no_scale", "stable_sam/plugins/drp.py",
      "torch.softmax(logits, dim=-1) * self.scale", "torch.softmax(logits, dim=-1)",
      (COMPOSITION,), "routing weights without the learnable scale s"),
    M("drp_sigmoid", "stable_sam/plugins/drp.py", "torch.softmax(logits, dim=-1) * self.scale",
      "torch.sigmoid(logits) * self.scale", (COMPOSITION,), "sigmoid instead of softmax"),
    M("blend_residual_x_star", "stable_sam/plugins/stable_sam_plugins.py",
      "residual=x_p if alpha is not None else None",
      "residual=x_star if alpha is not None else None", (COMPOSITION,),
      "the regular-grid term blends x* instead of x_p"),
    M("routing_reads_iou_token", "stable_sam/families/sam/decoder.py", "OUTPUT_MASK_TOKEN = 1",
      "OUTPUT_MASK_TOKEN = 0", (ROUTING,), "t_o is the IoU token"),
    M("routing_follows_multimask", "stable_sam/families/sam/model.py",
      "queries[:, decoder.OUTPUT_MASK_TOKEN]",
      "queries[:, decoder.OUTPUT_MASK_TOKEN + int(multimask_output)]", (ROUTING,),
      "t_o moves to mask token 1 with multimask_output=True"),
    M("drp_wider", "stable_sam/plugins/stable_sam_plugins.py", "routing_hidden_dim: int = 16",
      "routing_hidden_dim: int = 17", (COMPOSITION,), "a DRP of another size (parameter count)"),
    M("offset_scale_default", "stable_sam/plugins/stable_sam_plugins.py",
      "offset_scale: float = 4.0", "offset_scale: float = 2.0", (COMPOSITION,), "s_p of 2 instead of the documented 4"),
    M("plugin_site_layer_one", "stable_sam/plugins/two_way_site.py", "PLUGIN_LAYER = 1  #",
      "PLUGIN_LAYER = 0  #",
      (T + "families/sam/test_sam_decoder.py", T + "families/sam/test_stable_sam_model.py"),
      "the plugins sit in the first two-way block"),
    M("site_keys_without_pe", "stable_sam/plugins/two_way_site.py", "    k = values + key_pe\n",
      "    k = values\n", (T + "families/sam/test_sam_decoder.py",),
      "the plugin site's keys lose the positional encoding"),
    M("site_values_regular", "stable_sam/plugins/two_way_site.py",
      "v=values.expand(n, -1, -1))",
      "v=keys.expand(n, -1, -1))",
      (T + "families/sam/test_sam_decoder.py",),
      "the plugin site's values stay on the regular grid"),
    # ------------------------------------------------------------------ data
    M("noisy_box_weak_size", "stable_sam/data/prompts.py",
      "w = max(0.0, width + u[2] * noise_scale * width)",
      "w = max(0.0, width + u[2] * noise_scale * width / 2)", (NOISE,),
      "half the width noise"),
    M("noisy_box_weak_centre", "stable_sam/data/prompts.py",
      "cy = centre[1] + u[1] * noise_scale * height / 2",
      "cy = centre[1] + u[1] * noise_scale * height / 4", (NOISE,), "half the centre noise"),
    M("rts_noisy_box_doubled", "stable_sam/data/prompts.py",
      "default_factory=lambda: {kind: 1.0 for kind in PROMPT_KINDS})",
      "default_factory=lambda: {kind: 2.0 if kind == 'noisy_box' else 1.0 "
      "for kind in PROMPT_KINDS})", (FIDELITY,), "noisy boxes drawn twice as often"),
    M("rts_ignores_weights", "stable_sam/data/prompts.py",
      "kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]",
      "kind = kinds[int(rng.choice(len(kinds)))]", (FIDELITY,), "prompt kinds drawn uniformly"),
    M("without_rts_gt_boxes", "stable_sam/data/prompts.py",
      'WITHOUT_RTS: dict = {"weights": {"box": 1.0, "points10": 1.0, "coarse_mask": 1.0},',
      'WITHOUT_RTS: dict = {"weights": {"box": 1.0},', (FIDELITY,),
      '"without RTS" trains on GT boxes only'),
    M("occluder_keeps_covered_pixels", "stable_sam/data/occlusion.py",
      "            return out_image, remaining",
      "            return out_image, mask.copy()", (OCCLUSION, FIDELITY),
      "pasted occluders do not remove the covered target pixels"),
    M("occlusion_target_always_occludee", "stable_sam/data/occlusion.py",
      "paste = paste_occluder if rng.uniform() < occludee_probability else paste_behind",
      "paste = paste_occluder", (OCCLUSION, FIDELITY), "the target is only ever the occludee"),
    M("rts_weak_noise", "stable_sam/data/prompts.py",
      "noise_scale: float = 0.4  # noisy-box noise scale s (paper: 0.4)",
      "noise_scale: float = 0.25  # noisy-box noise scale s (paper: 0.4)", (FIDELITY,),
      "training noisy boxes at scale 0.25"),
    M("rts_loose_iou_filter", "stable_sam/data/prompts.py",
      "noisy_box_iou_range: tuple[float, float] = (0.5, 1.0)",
      "noisy_box_iou_range: tuple[float, float] = (0.3, 1.0)", (FIDELITY,),
      "training noisy boxes down to IoU 0.3"),
    M("pasted_behind_in_front", "stable_sam/data/occlusion.py",
      "region[visible] = resized_image[visible]",
      "region[resized_mask] = resized_image[resized_mask]", (OCCLUSION,),
      "an object pasted 'behind' the target covers it"),
    M("eval_noisy_box_filtered", "stable_sam/evaluation/prompts.py",
      "NOISY_BOX_EVAL_IOU_RANGE = (0.0, 1.0)", "NOISY_BOX_EVAL_IOU_RANGE = (0.5, 1.0)",
      (NOISE,), "evaluation keeps only noisy boxes with IoU >= 0.5"),
    M("eval_noise_scale", "stable_sam/evaluation/prompts.py",
      "seed: int = 0, *, noise_scale: float = 0.4,", "seed: int = 0, *, noise_scale: float = 0.3,",
      (NOISE,), "evaluation noisy boxes at scale 0.3"),
    # ------------------------------------------------------------------ training
    M("config_no_occlusion", "stable_sam/training/config.py",
      '{"occlusion_probability": 0.25}', '{"occlusion_probability": 0.0}', (FIDELITY,),
      "the default training config pastes nothing"),
    M("preset_drops_at_eleven", "stable_sam/training/config.py",
      '"epochs12": dict(epochs=12, lr_drop_epochs=[10])',
      '"epochs12": dict(epochs=12, lr_drop_epochs=[11])', (CONFIG,),
      "the 12-epoch preset drops the lr at epoch 11"),
    M("cli_without_preset", "stable_sam/commands/train.py", 'choices=("epochs12", "tiny")',
      'choices=("tiny",)', (CONFIG,), "stable-sam train does not offer the 12-epoch preset"),
    M("trainer_no_occlusion", "stable_sam/training/samples.py",
      "occlusion_rng.uniform() < self.rts.occlusion_probability",
      "occlusion_rng.uniform() < 0.0 * self.rts.occlusion_probability", (FIDELITY,),
      "the trainer never pastes occluders"),
    M("trainer_loss_no_dice", "stable_sam/training/loop.py", "    loss = bce + dice\n",
      "    loss = bce\n", (STEP,), "the trainer's loss without its dice term"),
    M("trainer_loss_half_dice", "stable_sam/training/loop.py", "    loss = bce + dice\n",
      "    loss = bce + 0.5 * dice\n", (STEP,), "dice weighted 0.5"),
    M("dice_without_factor_two", "stable_sam/training/losses.py",
      "numerator = 2.0 * (probs * targets).sum(1) + smooth",
      "numerator = (probs * targets).sum(1) + smooth", (STEP,), "dice numerator without 2"),
    M("bce_summed", "stable_sam/training/losses.py", "return per_element.flatten(1).mean(1).mean()",
      "return per_element.flatten(1).sum(1).mean()", (STEP,), "BCE summed over points"),
    M("targets_read_elsewhere", "stable_sam/training/losses.py",
      "point_targets = point_sample(targets.to(logits.dtype), coords)",
      "point_targets = point_sample(targets.to(logits.dtype), coords.flip(-1))", (STEP,),
      "targets read at (y, x) instead of (x, y)"),
    M("default_twelve_epochs", "stable_sam/training/config.py", "    epochs: int = 1\n",
      "    epochs: int = 12\n", (CONFIG,), "12 epochs by default"),
    M("pt_sam_no_rts_uses_rts", "stable_sam/training/baselines.py",
      '(False, "_no_rts", "high-quality prompts")', '(True, "_no_rts", "high-quality prompts")',
      (T + "training/test_baselines.py", FIDELITY),
      "DT-SAM / PT-SAM without RTS still train with RTS"),
    # ------------------------------------------------------------------ evaluation
    M("eval_drops_a_prompt", "stable_sam/evaluation/protocol.py",
      'batch = [Prompt.from_json(p) for p in target["prompts"][kind]]',
      'batch = [Prompt.from_json(p) for p in target["prompts"][kind][:-1]] or '
      '[Prompt.from_json(target["prompts"][kind][0])]', (PROTOCOL,),
      "evaluation skips the last prompt of each target"),
    M("eval_drops_an_image", "stable_sam/evaluation/protocol.py",
      "indices = range(rank, len(dataset), world)",
      "indices = range(rank, len(dataset) - 1, world)",
      (PROTOCOL,), "evaluation skips the last image"),
    M("eval_drops_a_target", "stable_sam/evaluation/protocol.py",
      'for target in entry["targets"]:', 'for target in entry["targets"][:1]:', (PROTOCOL,),
      "evaluation reads only each image's first target"),
    M("eval_drops_batch_tail", "stable_sam/evaluation/protocol.py",
      "inputs = _batched_inputs(predictor, prompts[start:start + batch_size])",
      "inputs = _batched_inputs(predictor, prompts[start:start + batch_size][:batch_size - 1])",
      (PROTOCOL,), "batched prediction drops the last prompt of each full batch"),
    M("eval_boundary_width", "stable_sam/evaluation/protocol.py",
      "batch_size: int = 20, dilation_ratio: float = 0.02,",
      "batch_size: int = 20, dilation_ratio: float = 0.01,", (PROTOCOL,),
      "boundary band of 1% of the diagonal"),
    M("eval_threshold_fixed", "stable_sam/evaluation/protocol.py",
      "masks.append((logits[:, 0] > threshold).cpu().numpy())",
      "masks.append((logits[:, 0] >= threshold).cpu().numpy())", (PROTOCOL,),
      "batched masks thresholded with >= instead of >"),
    M("eval_best_prompt", "stable_sam/evaluation/protocol.py",
      '"iou": float(np.mean([mask_iou(m, gt) for m in masks])),',
      '"iou": float(np.max([mask_iou(m, gt) for m in masks])),', (PROTOCOL,),
      "a target's IoU is its best prompt's"),
    M("msf_min", "stable_sam/evaluation/metrics.py", "return float(np.mean(areas / union_area))",
      "return float(np.min(areas / union_area))", (PROTOCOL, METRICS),
      "stability is the worst mask's, not the mean"),
    M("summary_miscounts", "stable_sam/evaluation/metrics.py",
      'out["count"] = len(records)', 'out["count"] = len(records) + 1', (PROTOCOL,),
      "the summary miscounts its targets"),
]


def _copy_tree(dest: Path) -> None:
    """The tracked files, the untracked ones git does not ignore, and the compiled extension."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, check=True, capture_output=True).stdout.split(b"\0")
    extension = [p.relative_to(ROOT) for p in (ROOT / "stable_sam_ops").glob("_C*.so")]
    for rel in [Path(f.decode()) for f in files if f] + extension:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def verify(mutations=MUTATIONS, root: Path = ROOT) -> list[str]:
    """Problems with the list: a target text that is missing or ambiguous, a name used twice,
    a test file that does not exist."""
    problems = []
    names = [m.name for m in mutations]
    problems += [f"{n}: name used twice" for n in sorted({n for n in names if names.count(n) > 1})]
    for m in mutations:
        count = (root / m.path).read_text(encoding="utf-8").count(m.old)
        if count != 1:
            problems.append(f"{m.name}: {m.path} holds the target text {count} times, not once")
        for test in m.tests:
            if not (root / test.split("::")[0]).is_file():
                problems.append(f"{m.name}: test file {test.split('::')[0]} not found")
    return problems


def run_one(m: Mutation, tree: Path, timeout: float) -> tuple[str, float]:
    """'caught', 'MISSED' or 'ERROR (...)' and the seconds it took."""
    target = tree / m.path
    original = target.read_text(encoding="utf-8")
    target.write_text(original.replace(m.old, m.new, 1), encoding="utf-8")
    started = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                               *m.tests], cwd=tree, env=env, capture_output=True, text=True,
                              timeout=timeout)
        status = {0: "MISSED", 1: "caught"}.get(
            proc.returncode, f"ERROR (pytest exit {proc.returncode}: "
                             f"{(proc.stdout + proc.stderr).strip().splitlines()[-1:]})")
    except subprocess.TimeoutExpired:
        status = "ERROR (timeout)"
    finally:
        target.write_text(original, encoding="utf-8")
    return status, time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutations only")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--verify", action="store_true",
                        help="check that every target text occurs exactly once, and exit")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per mutation")
    args = parser.parse_args(argv)
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:34s} {m.path:38s} {m.what}")
        return 0
    problems = verify()
    if problems or args.verify:
        print("\n".join(problems) or f"all {len(MUTATIONS)} mutations apply")
        return 1 if problems else 0
    chosen = MUTATIONS
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in MUTATIONS})
        if unknown:
            parser.error(f"unknown mutations {unknown}; see --list")
        chosen = [m for m in MUTATIONS if m.name in args.only]
    results = []
    with tempfile.TemporaryDirectory(prefix="stable-sam-mutants-") as tmp:
        tree = Path(tmp)
        _copy_tree(tree)
        for m in chosen:
            status, seconds = run_one(m, tree, args.timeout)
            results.append((m, status))
            print(f"{status:8s} {seconds:6.1f} s  {m.name:34s} {m.what}", flush=True)
    missed = [m.name for m, status in results if status != "caught"]
    print(f"\n{len(results) - len(missed)} of {len(results)} planted bugs caught"
          + (f"; not caught: {', '.join(missed)}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
