"""Mask-decoder latency, Stable-SAM vs SAM, from a precomputed image embedding.

Times prompt encoder + mask decoder of vit_b (the decoder is the same for vit_l/h) on a random
1x256x64x64 embedding with 1 and 16 box prompts per image, in one run and one process:

  sam                   segment_anything's MaskDecoder (baseline)
  stable-sam (<backend>) StableSam.decode with the plugins, deformable_sample on <backend>
  stable-sam, no plugins StableSam.decode(use_plugins=False): cost of the re-expressed decoder

Medians of repeated runs after warm-up, under torch.inference_mode. Usage:

    .venv/bin/python benchmarks/bench_decoder.py [--repeats 20] [--device cpu] [--no-write]

Writes the table to benchmarks/RESULTS.md (section "Mask decoder latency (...)").
"""

import argparse
import os
import statistics
import sys
import time
import warnings
from functools import partial
from typing import Callable, Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (  # noqa: E402
    machine_description,
    markdown_table,
    write_results_section,
)
from benchmarks.other_load import OtherLoad  # noqa: E402


def _boxes(n: int, gen: torch.Generator, device) -> torch.Tensor:
    xy0 = torch.rand(n, 2, generator=gen) * 600
    return torch.cat([xy0, xy0 + 50 + torch.rand(n, 2, generator=gen) * 350], dim=1).to(device)


def interleaved_medians_ms(fns: Dict[str, Callable[[], object]], warmup: int, repeats: int, device):
    """Median ms of each fn, timing them in turn within every repeat, so that load from other
    processes on a shared machine hits all variants alike (an overhead needs the same conditions).
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        # rotate the order: the first call after another variant pays for page faults and cold
        # caches, and that must not always fall on the same variant
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = fns[name]
            sync()
            start = time.perf_counter()
            fn()
            sync()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(ts) for name, ts in samples.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    other_load = OtherLoad()

    import stable_sam_ops
    from stable_sam import build_stable_sam
    from stable_sam_ops import _backends

    device = torch.device(args.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random SAM weights: timing only
        model = build_stable_sam("vit_b").to(device).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained-looking plugins: offsets of a few pixels
        for p in model.plugins.parameters():
            p.add_(torch.randn(p.shape, generator=gen).to(device) * 0.05)
    embedding = torch.randn(1, 256, 64, 64, generator=gen).to(device)
    pe = model.prompt_encoder.get_dense_pe()

    probe = torch.zeros(1, 1, 1, 8, device=device)
    backends = [
        name
        for name in stable_sam_ops.available_backends()
        if not _backends.BACKENDS[name].not_supported_reasons(probe) and name != "triton"
    ]

    def sam_fn(boxes):
        sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
        return model.mask_decoder(embedding, pe, sparse, dense, False)

    def stable_fn(boxes, backend=None, use_plugins=True):
        if backend is not None:
            model.plugins.op_backend = backend
        sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
        return model.decode(embedding, pe, sparse, dense, False, use_plugins=use_plugins)

    rows = []
    with torch.inference_mode():
        for n in args.prompts:
            boxes = _boxes(n, gen, device)
            variants = {"sam": lambda: sam_fn(boxes)}
            variants["stable-sam, no plugins"] = lambda: stable_fn(boxes, use_plugins=False)
            for backend in backends:
                variants[f"stable-sam ({backend} op)"] = partial(stable_fn, boxes, backend)
            times = interleaved_medians_ms(variants, args.warmup, args.repeats, device)
            base, unplugged = times["sam"], times["stable-sam, no plugins"]
            for name, ms in times.items():
                overhead = "baseline" if name == "sam" else f"{100 * (ms / base - 1):+.1f}%"
                # what the plugins themselves cost on Stable-SAM's decoder pass
                plugins = f"{100 * (ms / unplugged - 1):+.1f}%" if "op)" in name else ""
                rows.append([n, name, ms, ms / n, overhead, plugins])
                print(f"{n:3d} prompts  {name:28s} {ms:9.2f} ms  {overhead} {plugins}", flush=True)

    header = ["prompts", "variant", "ms", "ms / prompt", "overhead vs SAM", "vs no plugins"]
    body = "\n".join(
        [
            f"Machine: {machine_description(str(device))}. Device: {device}.",
            "",
            "Prompt encoder + mask decoder of vit_b from a precomputed 1x256x64x64 embedding, "
            f"box prompts, single-mask output; median of {args.repeats} runs after {args.warmup} "
            "warm-up runs, the variants timed in turn (rotating order) within each repeat "
            f"(`benchmarks/bench_decoder.py`). Overhead is relative to SAM in the same run; "
            "\"vs no plugins\" is the plugins' own cost on Stable-SAM's decoder pass, which "
            "re-expresses SAM's (layer 0's image side projected once for all prompts, the "
            "pixel-local output upscaling as matrix products: `stable_sam/families/sam/decoder.py`). "
            + other_load.sentence(),
            "",
            markdown_table(header, rows),
        ]
    )
    if not args.no_write:
        write_results_section(f"Mask decoder latency ({device.type})", body)
        print("wrote benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
