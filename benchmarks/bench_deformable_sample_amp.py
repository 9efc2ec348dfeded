"""The op under CPU autocast (bfloat16): the chosen policy against float32 and the alternative.

Rows, timed in turns in the same run on the same inputs (what autocast hands the op in the
model: value, offset and amplitude from linear layers in bfloat16, residual and alpha in
float32):
  float32            no autocast, every input float32 (the baseline)
  bfloat16           no autocast, every input bfloat16: the kernel alone, without casts
  lower precision    autocast: every input cast to bfloat16, the op runs in bfloat16 (chosen)
  float32 compute    the alternative: every input cast to float32, output cast to bfloat16
Error: ||out - oracle|| / ||oracle|| (L2), oracle = the op in float64 on the float32 inputs;
likewise for the offset gradient (the one that moves the sampling points). A norm, not the
largest error: a point that bfloat16 rounding moves across a pixel edge changes its offset
gradient by O(1), as it would with any rounding of the inputs.

    python benchmarks/bench_deformable_sample_amp.py [--batch 8] [--repeats 7]
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine_description, make_inputs, markdown_table  # noqa: E402

from stable_sam_ops import deformable_sample  # noqa: E402

NAMES = ("value", "offset", "amplitude", "residual", "alpha")
AMP = torch.bfloat16


def run_plain(inputs, scale):
    return deformable_sample(**inputs, offset_scale=scale, backend="cpu")


def run_lower_precision(inputs, scale):
    with torch.autocast("cpu", dtype=AMP):
        return deformable_sample(**inputs, offset_scale=scale, backend="cpu")


def run_float32_compute(inputs, scale):
    up = {k: t.float() for k, t in inputs.items()}
    return deformable_sample(**up, offset_scale=scale, backend="cpu").to(inputs["value"].dtype)


def forward_backward(fn, inputs, scale):
    leaves = {k: t.detach().requires_grad_(True) for k, t in inputs.items()}
    out = fn(leaves, scale)
    out.backward(torch.ones_like(out))
    return out, leaves["offset"].grad


def interleaved_median_ms(calls, repeats):
    """Median ms of each call, the calls taking turns so that a busy machine slows all alike."""
    for fn in calls.values():
        fn()  # warm-up
    samples = {key: [] for key in calls}
    for _ in range(repeats):
        for key, fn in calls.items():
            start = time.perf_counter()
            fn()
            samples[key].append((time.perf_counter() - start) * 1e3)
    return {key: statistics.median(ts) for key, ts in samples.items()}


def relative_error(got, want):
    return ((got.double() - want).norm() / want.norm()).item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    B, H, W, C, G = args.batch, 64, 64, 256, 8
    made = make_inputs(B, H, W, C, G)
    scale = made.pop("offset_scale")
    linear_outputs = ("value", "offset", "amplitude")
    mixed = {k: (t.to(AMP) if k in linear_outputs else t) for k, t in made.items()}
    oracle_out, oracle_grad = forward_backward(
        run_plain, {k: t.double() for k, t in made.items()}, scale
    )
    everything_bf16 = {k: t.to(AMP) for k, t in made.items()}
    policies = [("float32", run_plain, made),
                ("bfloat16", run_plain, everything_bf16),
                ("lower precision (chosen)", run_lower_precision, mixed),
                ("float32 compute, bfloat16 out", run_float32_compute, mixed)]
    calls = {}
    for name, fn, inputs in policies:
        calls[name, "forward"] = lambda fn=fn, inputs=inputs: fn(inputs, scale)
        calls[name, "both"] = lambda fn=fn, inputs=inputs: forward_backward(fn, inputs, scale)
    times = interleaved_median_ms(calls, args.repeats)
    rows = []
    for name, fn, inputs in policies:
        out, grad = forward_backward(fn, inputs, scale)
        rows.append([name, str(out.dtype)[6:], relative_error(out, oracle_out),
                     relative_error(grad, oracle_grad), times[name, "forward"],
                     times[name, "both"]])
    print(machine_description())
    print(f"B={B}, {H}x{W}, C={C}, G={G}, offset_scale={scale}")
    print(markdown_table(["policy", "out dtype", "out rel. error", "d offset rel. error",
                          "forward ms", "forward+backward ms"], rows))


if __name__ == "__main__":
    main()
