"""How the fused CPU backward scales with threads, batch size 1 included.

The backward's passes split queries and value rows, not batch items or channel blocks, so a
single image should keep every thread busy. This times `torch.autograd.grad` of the fused op
(backend="cpu") with one thread, the baseline, and with each larger thread count asked for, in
the same run on the same inputs, and prints the speed-up over one thread.

    python benchmarks/bench_backward_threads.py                    # writes RESULTS.md
    python benchmarks/bench_backward_threads.py --batches 1 --no-write

A thread count above the machine's cores measures nothing useful and is refused.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from other_load import OtherLoad  # noqa: E402
from common import (  # noqa: E402
    machine_description,
    make_inputs,
    markdown_table,
    median_time_ms,
    write_results_section,
)

import stable_sam_ops  # noqa: E402

TENSORS = ("value", "offset", "amplitude", "residual", "alpha")
TITLE = "Fused CPU backward: threads"


def backward_step(inputs):
    tensors = [inputs[n] for n in TENSORS]
    out = stable_sam_ops.deformable_sample(*tensors, inputs["offset_scale"], backend="cpu")
    grad_out = torch.randn_like(out)
    return lambda: torch.autograd.grad(out, tensors, grad_out, retain_graph=True)


def run(args):
    thread_counts = [1] + [n for n in args.threads if n > 1]
    rows = []
    restore = torch.get_num_threads()
    try:
        for B in args.batches:
            for G in args.groups:
                step = backward_step(make_inputs(B, args.size, args.size, args.channels, G,
                                                 torch.float32, requires_grad=True))
                ms = []
                for n in thread_counts:
                    torch.set_num_threads(n)
                    ms.append(median_time_ms(step, warmup=args.warmup, repeats=args.repeats))
                row = [B, G] + ms + [f"{ms[0] / t:.2f}x" for t in ms[1:]]
                rows.append(row)
                print(markdown_table(header(thread_counts), [row]).splitlines()[-1], flush=True)
    finally:
        torch.set_num_threads(restore)
    return thread_counts, rows


def header(thread_counts):
    return (["B", "G"] + [f"{n} thread{'s' if n > 1 else ''} ms" for n in thread_counts]
            + [f"{n} vs 1" for n in thread_counts[1:]])


def main(argv=None):
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[cores],
                        help="thread counts besides the 1-thread baseline (default: all cores)")
    parser.add_argument("--size", type=int, default=64, help="H = W")
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")
    args = parser.parse_args(argv)
    if "cpu" not in stable_sam_ops.available_backends():
        parser.exit(2, "bench_backward_threads: error: the cpu backend is not built\n")
    sizes = args.batches + args.groups + [args.size, args.channels, args.repeats]
    if min(sizes) < 1 or args.warmup < 0 or any(args.channels % g for g in args.groups):
        parser.exit(2, "bench_backward_threads: error: batches, groups, size, channels and "
                       "repeats must be at least 1, warmup at least 0, and every group count "
                       f"must divide --channels {args.channels}\n")
    if any(n < 1 or n > cores for n in args.threads):
        parser.exit(2, f"bench_backward_threads: error: --threads must be within 1..{cores} "
                       f"(this machine's cores), got {args.threads}\n")
    other_load = OtherLoad()
    thread_counts, rows = run(args)
    body = "\n\n".join([
        f"Machine: {machine_description()}. {other_load.sentence()}",
        f"`torch.autograd.grad` of `deformable_sample(backend=\"cpu\")` with C={args.channels}, "
        f"{args.size}x{args.size}, fp32, offset_scale 4, all optional inputs; median of "
        f"{args.repeats} calls after {args.warmup} warm-up calls at each thread count "
        "(`python benchmarks/bench_backward_threads.py`). The baseline is the same op on one "
        "thread, in the same run.",
        markdown_table(header(thread_counts), rows),
    ])
    print(f"\n{body}")
    if not args.no_write:
        write_results_section(TITLE, body)


if __name__ == "__main__":
    main()
