"""Prompts on several images: one decoder pass (predict_across_images) against the per-image loop.

For each model and workload, from precomputed image embeddings (random features of the model's
shapes: the encoder is not timed), prompts -> masks at the image size as numpy, timed two ways
in the same run:

  loop     what a tool does today: one decoder call per image (SamPredictor-style families:
           predict_torch per image; SAM 2: set_image_batch's predict_batch)
  batched  predictor.predict_across_images: one prompt-encoder and one decoder call per prompt
           structure over all images

Medians of repeated runs after warm-up, the two timed in turn (rotating order) within each
repeat. Usage:

    .venv/bin/python benchmarks/bench_batched_prompts.py [--models demo sam2.1_hiera_small]
        [--images 8] [--repeats 7] [--warmup 2] [--no-write]

Writes the table to benchmarks/RESULTS.md (section "Batched prompts across images (cpu)").
"""

import argparse
import os
import sys
import warnings
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_decoder import interleaved_medians_ms  # noqa: E402
from benchmarks.common import (  # noqa: E402
    machine_description,
    markdown_table,
    write_results_section,
)
from benchmarks.other_load import OtherLoad  # noqa: E402

DEFAULT_MODELS = ["demo", "sam2.1_hiera_small"]
WORKLOADS = ("1 box each", "1-6 boxes each", "1-3 clicks each")
HEADER = ["model", "images", "workload", "prompts", "decoder calls (loop / batched)",
          "loop prompts/s", "batched prompts/s", "batched vs loop"]


class UsageError(Exception):
    pass


def check_args(args) -> None:
    if args.images < 1 or args.repeats < 1 or args.warmup < 0:
        raise UsageError(f"images and repeats must be >= 1 and warmup >= 0, got images "
                         f"{args.images}, repeats {args.repeats}, warmup {args.warmup}")
    from stable_sam.families import MODEL_TYPES

    unknown = [m for m in args.models if m not in MODEL_TYPES]
    if unknown:
        raise UsageError(f"--models {unknown} are not model types; known: {sorted(MODEL_TYPES)}")


def image_sizes(model_type: str, count: int) -> List[Tuple[int, int]]:
    """Photo-like sizes for the ViT/Hiera models, the demo's 256 px scenes for the demo."""
    if model_type == "demo":
        return [(256, 256)] * count
    return [((480, 640), (640, 480), (720, 960))[i % 3] for i in range(count)]


def workload(name: str, sizes: Sequence[Tuple[int, int]], seed: int = 0):
    """Each image's ImagePrompts for the named workload (a different count per image where the
    name gives a range; clicks: one prompt of 1-3 clicks, so up to three structures)."""
    from stable_sam.families.batched_prompts import ImagePrompts

    rng = np.random.default_rng(seed)
    prompts = []
    for i, (h, w) in enumerate(sizes):
        if name == "1-3 clicks each":
            clicks = rng.uniform(0, 1, (1, 1 + i % 3, 2)) * (w, h)
            prompts.append(ImagePrompts(point_coords=clicks,
                                        point_labels=np.ones(clicks.shape[:2], int)))
            continue
        k = 1 if name == "1 box each" else 1 + (i * 5) % 6
        xy0 = rng.uniform(0, 0.5, (k, 2)) * (w, h)
        prompts.append(ImagePrompts(boxes=np.concatenate(
            [xy0, xy0 + rng.uniform(0.1, 0.45, (k, 2)) * (w, h)], axis=1)))
    return prompts


def random_images(predictor, sizes, seed: int = 0):
    """EmbeddedImages of random features shaped as the model's encoder gives them."""
    from stable_sam.families.batched_prompts import (
        EmbeddedImages,
        SamStyleBatching,
        family_batching,
    )

    model = predictor.model
    gen = torch.Generator().manual_seed(seed)
    size = model.image_encoder.img_size
    batching = family_batching(model)
    if isinstance(batching, SamStyleBatching):
        grid = model.prompt_encoder.image_embedding_size
        tensors = {"image_embeddings": torch.randn(len(sizes), 256, *grid, generator=gen)}
        input_sizes = [predictor.transform.get_preprocess_shape(h, w, size) for h, w in sizes]
        return EmbeddedImages(tensors, input_sizes, list(sizes))
    s0, s1, grid = model.image_encoder.feature_sizes()
    encoded = {"image_embed": torch.randn(len(sizes), 256, *grid, generator=gen),
               "high_res_feats": [torch.randn(len(sizes), 32, *s0, generator=gen),
                                  torch.randn(len(sizes), 64, *s1, generator=gen)]}
    return EmbeddedImages(batching.encoder_tensors(encoded), [(size, size)] * len(sizes),
                          list(sizes))


def loop_fn(predictor, images, prompts, multimask: bool) -> Callable[[], object]:
    """The per-image loop over the same embeddings, through the predictor's public calls."""
    from stable_sam.families.batched_prompts import SamStyleBatching, family_batching

    checked = [p.checked(i) for i, p in enumerate(prompts)]
    if not isinstance(family_batching(predictor.model), SamStyleBatching):  # SAM 2
        t = images.tensors
        predictor._features = {"image_embed": t["image_embeddings"],
                               "high_res_feats": [t["high_res_feats_0"], t["high_res_feats_1"]]}
        predictor._orig_hw = list(images.original_sizes)
        predictor._is_image_set = predictor._is_batch = True
        boxes = [p.boxes for p in checked] if checked[0].boxes is not None else None
        coords = ([p.point_coords for p in checked] if checked[0].point_coords is not None
                  else None)
        labels = None if coords is None else [p.point_labels for p in checked]
        return lambda: predictor.predict_batch(coords, labels, boxes,
                                               multimask_output=multimask)

    def run():
        out = []
        for i, p in enumerate(checked):
            predictor.features = images.tensors["image_embeddings"][i:i + 1]
            predictor.input_size = images.input_sizes[i]
            predictor.original_size = images.original_sizes[i]
            predictor.is_image_set = True
            coords = labels = boxes = None
            if p.point_coords is not None:
                coords = torch.as_tensor(predictor.transform.apply_coords(
                    p.point_coords, predictor.original_size), dtype=torch.float)
                labels = torch.as_tensor(p.point_labels, dtype=torch.int)
            if p.boxes is not None:
                boxes = torch.as_tensor(predictor.transform.apply_boxes(
                    p.boxes, predictor.original_size), dtype=torch.float)
            masks, scores, low_res = predictor.predict_torch(coords, labels, boxes,
                                                             multimask_output=multimask)[:3]
            out.append((masks.numpy(), scores.numpy(), low_res.numpy()))
        return out

    return run


def count_decoder_calls(model, fn) -> int:
    calls = []
    decode = model.decode

    def counting(*args, **kwargs):
        calls.append(1)
        return decode(*args, **kwargs)

    model.decode = counting
    try:
        fn()
    finally:
        del model.decode  # the instance attribute; the class's method shows again
    return len(calls)


def table_row(model_type: str, images: int, name: str, prompts: int, calls: Tuple[int, int],
              loop_ms: float, batched_ms: float) -> List[object]:
    """One row: prompts per second each way and the batched call's speed-up over the loop."""
    loop_rate = prompts / (loop_ms / 1e3)
    batched_rate = prompts / (batched_ms / 1e3)
    return [model_type, images, name, prompts, f"{calls[0]} / {calls[1]}", loop_rate,
            batched_rate, f"{batched_rate / loop_rate:.2f}x"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    try:
        check_args(args)
    except UsageError as exc:
        parser.exit(2, f"bench_batched_prompts: error: {exc}\n")
    other_load = OtherLoad()

    from stable_sam import build_stable_sam
    from stable_sam.families import predictor_for

    rows = []
    with torch.no_grad():
        for model_type in args.models:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # random weights: timing only
                model = build_stable_sam(model_type).eval()
            gen = torch.Generator().manual_seed(0)
            for p in model.plugins.parameters():  # trained-looking plugins
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
            predictor = predictor_for(model)
            sizes = image_sizes(model_type, args.images)
            images = random_images(predictor, sizes)
            for name in WORKLOADS:
                prompts = workload(name, sizes)
                multimask = name.endswith("clicks each")  # as tools use them
                variants: Dict[str, Callable[[], object]] = {
                    "loop": loop_fn(predictor, images, prompts, multimask),
                    "batched": lambda: predictor.predict_across_images(
                        images, prompts, multimask_output=multimask),
                }
                calls = tuple(count_decoder_calls(model, variants[v]) for v in variants)
                times = interleaved_medians_ms(variants, args.warmup, args.repeats,
                                               torch.device("cpu"))
                count = sum(p.checked(i).count for i, p in enumerate(prompts))
                row = table_row(model_type, args.images, name, count, calls, times["loop"],
                                times["batched"])
                rows.append(row)
                print(" | ".join(str(c) for c in row), flush=True)

    body = "\n".join([
        f"Machine: {machine_description('cpu')}. Device: cpu.",
        "",
        "Prompts to masks (at the image size, as numpy) on several images from precomputed "
        "embeddings (random features; the encoder is not timed; random weights, which do not "
        "change the time), per-image loop against one `predict_across_images` call, both in "
        f"the same run: median of {args.repeats} runs after {args.warmup} warm-up runs, timed "
        "in turn (rotating order) within each repeat (`benchmarks/bench_batched_prompts.py`). "
        "The loop is predict_torch per image (demo) or `predict_batch` (SAM 2's drop-in, one "
        "decoder call per image); boxes use the single mask, clicks the multimask output. "
        "Image sizes: the demo's 256 x 256 scenes; for SAM 2, 480x640, 640x480 and 720x960 "
        "in turn. " + other_load.sentence(),
        "",
        markdown_table(HEADER, rows),
    ])
    if not args.no_write:
        write_results_section("Batched prompts across images (cpu)", body)
        print("wrote benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
