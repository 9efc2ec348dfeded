"""GPU benchmark of the fused deformable-sampling op: eager composition vs torch.compile of it vs
the CUDA kernel vs the Triton kernel, forward and forward+backward.

    python benchmarks/bench_deformable_sample_gpu.py [--budget-s 300] [--out-dir DIR]

Shapes: B in {1, 8, 32, 128}, C = 256, 64 x 64 (SAM's image-token grid), G in {1, 8}, float32
and bfloat16. Times are medians of triton.testing.do_bench; forward GB/s uses the bytes the op
must move (benchmarks/common.op_bytes) and is compared with a device-to-device copy of value
measured in the same run. torch.compile is timed only at --compile-batches (its compile time
dominates otherwise; `--compile-batches` with no value drops it) and is skipped once 60% of the
time budget is spent; no new row starts once all of it is. The table goes to --out-dir after
every row (a run killed midway leaves the rows it measured), to benchmarks/RESULTS.md under the
GPU's name at the end, and to stdout (last).
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    machine_description,
    make_inputs,
    markdown_table,
    median_time_ms,
    op_bytes,
    write_results_section,
    write_text_atomic,
)

from stable_sam_ops import available_backends, deformable_sample  # noqa: E402
from stable_sam_ops.reference import deformable_sample_reference  # noqa: E402

NAMES = ("value", "offset", "amplitude", "residual", "alpha")
H = W = 64
C = 256
TARGETS = (
    "fused CUDA fwd+bwd >= 3x eager and >= 1.5x compiled at B=32 fp32 G=8; "
    "CUDA forward >= 60% of copy bandwidth at B=128; Triton within 1.5x of CUDA"
)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--groups", type=int, nargs="+", default=[8, 1])  # the targets' G first
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--compile-batches", type=int, nargs="*", default=[32])
    p.add_argument("--budget-s", type=float, default=300.0,
                   help="wall time after which no new row starts (torch.compile rows stop at "
                   "60%% of it)")
    p.add_argument("--out-dir", default=os.environ.get("OUT"))
    p.add_argument("--no-results-md", action="store_true", help="do not write RESULTS.md")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu: a smoke test of this script only (the fused column is then the "
                   "CPU kernel, times by wall clock)")
    return p.parse_args()


DEVICE = "cuda"


def bench_ms(fn):
    if DEVICE != "cuda":
        return median_time_ms(fn, warmup=1, repeats=3)
    try:
        from triton.testing import do_bench
    except ImportError:  # no triton on this machine: the same median, by CUDA events
        return _cuda_event_median_ms(fn)
    return do_bench(fn, warmup=10, rep=50, return_mode="median")


def _cuda_event_median_ms(fn, warmup=5, repeats=20):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_gbps(numel, dtype):
    src = torch.empty(numel, dtype=dtype, device=DEVICE).normal_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / ms / 1e6


def providers(compile_ok):
    fns = {"eager": deformable_sample_reference}
    if compile_ok:
        fns["compiled"] = torch.compile(deformable_sample_reference, dynamic=False)
    ok = available_backends()
    fused = {"cuda": "cuda", "triton": "triton"} if DEVICE == "cuda" else {"cuda": "cpu"}
    for column, backend in fused.items():
        if backend in ok:
            fns[column] = (lambda n: lambda **kw: deformable_sample(**kw, backend=n))(backend)
    return fns


def time_provider(fn, inputs, offset_scale, backward):
    args = {k: inputs[k] for k in NAMES}
    if not backward:
        with torch.no_grad():
            return bench_ms(lambda: fn(**args, offset_scale=offset_scale))
    leaves = [args[k] for k in NAMES]
    grad_out = torch.randn_like(args["value"])

    def step():
        out = fn(**args, offset_scale=offset_scale)
        torch.autograd.grad(out, leaves, grad_out)

    return bench_ms(step)


def main():
    global DEVICE
    args = parse_args()
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("bench_deformable_sample_gpu: no CUDA device visible", file=sys.stderr)
        return 2
    # One graph per (shape, dtype, grad mode): more than dynamo's default recompile limit.
    torch._dynamo.config.cache_size_limit = 64
    start = time.time()
    gpu = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "CPU (smoke test)"
    rows, notes = [], []
    copy_bw = {}
    configs = [(dtype_name, G, B) for dtype_name in args.dtypes for G in args.groups
               for B in args.batches]
    full, full_key = None, None
    for done, (dtype_name, G, B) in enumerate(configs):
        if time.time() - start > args.budget_s:
            notes.append(f"stopped at the {args.budget_s:.0f} s budget: "
                         f"{len(configs) - done} of {len(configs)} configurations not run")
            break
        dtype = getattr(torch, dtype_name)
        if full_key != (dtype_name, G):
            full = None  # free the previous inputs before drawing the next
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
            full = make_inputs(max(args.batches), H, W, C, G, dtype, DEVICE)
            offset_scale = full.pop("offset_scale")
            full_key = (dtype_name, G)
        inputs = {k: full[k][:B].detach().requires_grad_(True) for k in NAMES}
        if (B, dtype) not in copy_bw:
            copy_bw[(B, dtype)] = copy_gbps(B * H * W * C, dtype)
        compile_ok = B in args.compile_batches and time.time() - start < args.budget_s * 0.6
        if B in args.compile_batches and not compile_ok:
            notes.append(f"compiled skipped at B={B} {dtype_name} G={G}: time budget")
        fns = providers(compile_ok)
        for backward in (False, True):
            ms = {}
            for name, fn in fns.items():
                try:
                    ms[name] = time_provider(fn, inputs, offset_scale, backward)
                except Exception as exc:  # one provider failing must not lose the table
                    notes.append(f"{name} failed at B={B} {dtype_name} G={G}: {exc!r}"[:300])
            rows.append(make_row(B, G, dtype_name, backward, ms, copy_bw[(B, dtype)], dtype))
            print(f"[{time.time() - start:6.1f}s] B={B} G={G} {dtype_name} "
                  f"{'fwd+bwd' if backward else 'fwd'}: "
                  + ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items()), flush=True)
            if args.out_dir:
                write_out_dir_table(args.out_dir, gpu, report(rows, notes))
    body = report(rows, notes)
    if not args.no_results_md:
        write_results_section(f"GPU: deformable_sample on {gpu}", body)
    if args.out_dir:
        write_out_dir_table(args.out_dir, gpu, body)
    print()
    print(body)
    return 0


def report(rows, notes):
    header = ["B", "G", "dtype", "pass", "eager ms", "compiled ms", "cuda ms", "triton ms",
              "cuda GB/s", "cuda % copy", "cuda x eager", "cuda x compiled", "triton / cuda"]
    return "\n\n".join([
        f"{machine_description(DEVICE)}",
        f"H = W = {H}, C = {C}, offset_scale 4, medians of triton.testing.do_bench. "
        f"GB/s from the bytes the forward must move; copy = device-to-device copy of value "
        f"measured in the same run. Targets: {TARGETS}.",
        markdown_table(header, rows),
        check_targets(rows),
    ] + (["Notes: " + "; ".join(notes)] if notes else []))


def write_out_dir_table(out_dir, gpu, body):
    """bench_deformable_sample_gpu.md in out_dir, replaced atomically after every row."""
    write_text_atomic(os.path.join(out_dir, "bench_deformable_sample_gpu.md"),
                      f"## GPU: deformable_sample on {gpu}\n\n{body}\n")


def make_row(B, G, dtype_name, backward, ms, copy_bw, dtype):
    def get(name):
        return ms.get(name, float("nan"))

    fwd_gbps = op_bytes(B, H, W, C, G, dtype) / get("cuda") / 1e6 if not backward else float("nan")
    return [B, G, dtype_name, "fwd+bwd" if backward else "fwd", get("eager"), get("compiled"),
            get("cuda"), get("triton"), fwd_gbps, 100 * fwd_gbps / copy_bw,
            get("eager") / get("cuda"), get("compiled") / get("cuda"),
            get("triton") / get("cuda")]


def check_targets(rows):
    def find(B, G, dtype, pass_):
        for r in rows:
            if r[:4] == [B, G, dtype, pass_]:
                return r
        return None

    lines = []
    r = find(32, 8, "float32", "fwd+bwd")
    if r is not None:
        lines.append(f"- CUDA fwd+bwd vs eager at B=32 fp32 G=8: {r[10]:.2f}x (target >= 3x)")
        lines.append(f"- CUDA fwd+bwd vs compiled at B=32 fp32 G=8: {r[11]:.2f}x (target >= 1.5x)")
    for dtype in ("float32", "bfloat16"):
        r = find(128, 8, dtype, "fwd")
        if r is not None:
            lines.append(f"- CUDA forward at B=128 G=8 {dtype}: {r[9]:.0f}% of copy bandwidth "
                         "(target >= 60%)")
    worst = max((r[12] for r in rows if r[12] == r[12]), default=float("nan"))
    lines.append(f"- Triton / CUDA time, worst row: {worst:.2f} (target <= 1.5)")
    return "Targets:\n" + "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
