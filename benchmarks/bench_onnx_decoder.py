"""Exported-decoder latency on the CPU: onnxruntime against PyTorch, SAM and Stable-SAM, one run.

Exports vit_b's decoder (random weights: the decoder is the size of the real one; plugins moved
off their identity init) twice, plain SAM and Stable-SAM, with segment_anything's default
options (all four masks, upscaled to the original image size), then times the same call in
PyTorch (the export wrapper, eager, torch.inference_mode, fused op on the cpu backend) and in
onnxruntime's CPU provider with as many threads as torch uses. Points are clicks plus SAM's
padding point, or clicks plus a box's two corners. Usage:

    .venv/bin/python benchmarks/bench_onnx_decoder.py [--repeats 20] [--no-write]

Writes the table to benchmarks/RESULTS.md (section "ONNX decoder latency (cpu)").
"""

import argparse
import os
import sys
import tempfile
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_decoder import interleaved_medians_ms  # noqa: E402
from benchmarks.common import (  # noqa: E402
    machine_description,
    markdown_table,
    write_results_section,
)

ORIG_SIZE = (1200, 1600)  # a 2-megapixel photo: the masks are upscaled to it


def _feeds(num_clicks: int, with_box: bool, gen: torch.Generator):
    clicks = torch.rand(1, num_clicks, 2, generator=gen) * torch.tensor([1024.0, 768.0])
    if with_box:
        extra, extra_labels = torch.tensor([[[100.0, 80.0], [700.0, 600.0]]]), [2.0, 3.0]
    else:
        extra, extra_labels = torch.zeros(1, 1, 2), [-1.0]
    labels = torch.cat([torch.ones(1, num_clicks), torch.tensor([extra_labels])], dim=1)
    return {
        "image_embeddings": torch.randn(1, 256, 64, 64, generator=gen),
        "point_coords": torch.cat([clicks, extra], dim=1),
        "point_labels": labels,
        "mask_input": torch.zeros(1, 1, 256, 256),
        "has_mask_input": torch.zeros(1),
        "orig_im_size": torch.tensor(ORIG_SIZE, dtype=torch.float32),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    load_at_start = os.getloadavg()[0]

    import onnxruntime as ort

    from stable_sam import build_stable_sam
    from stable_sam.export import StableSamOnnxModel, export_decoder_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random SAM weights: timing only
        model = build_stable_sam("vit_b", op_backend="cpu").eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained-looking plugins: offsets of a few pixels
        for p in model.plugins.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    variants = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, use_plugins in (("SAM", False), ("Stable-SAM", True)):
            path = os.path.join(folder, f"{name}.onnx")
            export_decoder_onnx(model, path, return_single_mask=False, use_plugins=use_plugins)
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            wrapper = StableSamOnnxModel(model, return_single_mask=False, use_plugins=use_plugins)
            variants[name] = (wrapper.eval(), session)

    rows = []
    with torch.inference_mode():
        for num_clicks, with_box in ((1, False), (5, True), (10, False)):
            feeds = _feeds(num_clicks, with_box, gen)
            arrays = {k: v.numpy() for k, v in feeds.items()}
            fns, errors = {}, {}
            for name, (wrapper, session) in variants.items():
                fns[f"{name} pytorch"] = lambda w=wrapper: w(**feeds)
                fns[f"{name} onnxruntime"] = lambda s=session: s.run(None, arrays)
                low_res = session.run(None, arrays)[2]
                errors[name] = float(np.abs(low_res - wrapper(**feeds)[2].numpy()).max())
            times = interleaved_medians_ms(fns, args.warmup, args.repeats, torch.device("cpu"))
            prompt = f"{num_clicks} click(s)" + (" + box" if with_box else "")
            for name in variants:
                torch_ms, ort_ms = times[f"{name} pytorch"], times[f"{name} onnxruntime"]
                speedup = f"{torch_ms / ort_ms:.2f}x"
                rows.append([prompt, name, torch_ms, ort_ms, speedup, f"{errors[name]:.1e}"])
                print(f"{prompt:18s} {name:10s} pytorch {torch_ms:8.2f} ms  onnxruntime "
                      f"{ort_ms:8.2f} ms  max abs diff {errors[name]:.1e}", flush=True)
    load_at_end = os.getloadavg()[0]

    body = "\n".join(
        [
            f"Machine: {machine_description('cpu')}; onnxruntime {ort.__version__} (CPU "
            f"provider, {options.intra_op_num_threads} threads).",
            "",
            "vit_b decoder (random weights, plugins off their identity init) exported with the "
            "default options (opset 18, gather form of the fused op, four masks upscaled to "
            f"{ORIG_SIZE[0]}x{ORIG_SIZE[1]}); the same call in eager PyTorch (inference_mode, "
            "fused op on the cpu backend) and in onnxruntime; median of "
            f"{args.repeats} runs after {args.warmup} warm-up runs, variants timed in turn "
            "(`benchmarks/bench_onnx_decoder.py`). max abs diff: largest low-res logit difference "
            "between the two. **The machine was shared with other jobs while this ran** (load "
            f"average {load_at_start:.1f} at the start, {load_at_end:.1f} at the end, on "
            f"{os.cpu_count()} cores): the ratios mean more than the absolute times.",
            "",
            markdown_table(
                ["prompt", "model", "pytorch ms", "onnxruntime ms", "speed-up", "max abs diff"],
                rows,
            ),
        ]
    )
    if not args.no_write:
        write_results_section("ONNX decoder latency (cpu)", body)
        print("wrote benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
