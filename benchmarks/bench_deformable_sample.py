"""The fused deformable-sampling op on CPU against the stock-PyTorch composition it replaces.

Providers, timed in the same run on the same inputs:
  eager     stable_sam_ops.reference.deformable_sample_reference (grid_sample composition)
  compiled  torch.compile of that composition (inductor)
  cpu       the fused C++ kernel (backend="cpu")
plus a copy (dst.copy_(src) of op_bytes / 2 bytes, all threads) as the machine's bandwidth
yardstick: achieved GB/s = op_bytes / time, and its share of the copy's GB/s. The fused op's
outputs of 2 MiB or more come from buffers kept from its freed outputs (csrc/cpu/output_cache.h),
so after the warm-up it pays no page faults for those that fit in the kept cap, as a decoder
serving prompt after prompt would not; eager and compiled get theirs from PyTorch's allocator, which maps every large tensor
fresh. "fresh copy" (src.clone(), same bytes) shows what fresh pages cost in the run: on the
EPYC VM that swung by 10x between runs.

    python benchmarks/bench_deformable_sample.py          # quick: the B=8 rows, eager vs cpu
    python benchmarks/bench_deformable_sample.py --full   # the sweep B = 1, 8, 32, + compiled
    python benchmarks/bench_deformable_sample.py --batches 1 8 --groups 8 --repeats 5 --no-write

The sweep writes the table of record, RESULTS.md's "Fused op on CPU"; other runs write a section
of their own ("... (quick: B=8)"), so a quick run never replaces the sweep's table. The quick
run leaves out the compiled column (`--compile` adds it): inductor's first compile of the four
graphs costs more CPU time than all the quick rows' timed calls together.

Large allocations page-fault on every call unless PyTorch backs them with huge pages; set
THP_MEM_ALLOC_ENABLE=1 (read by PyTorch at start-up) to measure with them. The setting is
printed with the results.
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
    op_bytes,
    write_results_section,
)

import stable_sam_ops  # noqa: E402
from stable_sam_ops.reference import deformable_sample_reference  # noqa: E402

TENSORS = ("value", "offset", "amplitude", "residual", "alpha")


def fused_cpu(value, offset, amplitude, residual, alpha, offset_scale):
    return stable_sam_ops.deformable_sample(
        value, offset, amplitude, residual, alpha, offset_scale, backend="cpu"
    )


def make_step(fn, inputs, backward):
    """A no-argument callable running one forward (and backward, without accumulating .grad)."""
    tensors = [inputs[n] for n in TENSORS]
    scale = inputs["offset_scale"]
    if not backward:
        def step():
            with torch.no_grad():
                return fn(*tensors, scale)
        return step
    grad_out = torch.randn_like(inputs["value"])

    def step():
        out = fn(*tensors, scale)
        return torch.autograd.grad(out, tensors, grad_out)

    return step


def copy_gbps(nbytes, dtype, warmup, repeats):
    """GB/s of a copy of nbytes into an existing tensor, and into a fresh one (src.clone())."""
    src = torch.randn(max(1, nbytes // torch.empty((), dtype=dtype).element_size()), dtype=dtype)
    dst = torch.empty_like(src)
    ms = median_time_ms(lambda: dst.copy_(src), warmup=warmup, repeats=repeats)
    fresh_ms = median_time_ms(src.clone, warmup=warmup, repeats=repeats)
    return 2 * src.nbytes / ms / 1e6, 2 * src.nbytes / fresh_ms / 1e6


FULL_BATCHES = [1, 8, 32]
QUICK_BATCHES = [8]


def with_compile(args) -> bool:
    """The compiled column: always with --compile, by default in the --full sweep."""
    return args.compile or (args.full and not args.no_compile)


def configurations(args) -> int:
    """Shapes the compiled provider sees: one graph each (B, G, with or without gradients)."""
    return len(args.batches) * len(args.groups) * 2


def run(args):
    # dynamic=False compiles one graph per configuration; past dynamo's recompile limit (8) it
    # would warn and fall back to eager for the rest, so the limit is this run's count
    torch._dynamo.reset()  # the count starts at zero however often this process compiled before
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit,
                                               configurations(args))
    compiled_ref = torch.compile(deformable_sample_reference, dynamic=False,
                                 backend=args.compile_backend)
    providers = {"eager": deformable_sample_reference, "compiled": compiled_ref, "cpu": fused_cpu}
    if not with_compile(args):
        del providers["compiled"]
    H = W = args.size
    C, dtype = args.channels, torch.float32
    rows = []
    for B in args.batches:
        bytes_ = op_bytes(B, H, W, C, max(args.groups), dtype)
        copy, fresh = copy_gbps(bytes_ // 2, dtype, args.warmup, args.repeats)
        for G in args.groups:
            for backward in (False, True):
                inputs = make_inputs(B, H, W, C, G, dtype, requires_grad=backward)
                ms = {}
                for name, fn in providers.items():
                    ms[name] = median_time_ms(
                        make_step(fn, inputs, backward), warmup=args.warmup,
                        repeats=args.repeats,
                    )
                gbps = op_bytes(B, H, W, C, G, dtype) / ms["cpu"] / 1e6
                row = [B, G, "fwd+bwd" if backward else "fwd"]
                row += [ms[name] for name in providers]
                row += [f"{ms['eager'] / ms['cpu']:.1f}x"]
                if "compiled" in ms:
                    row += [f"{ms['compiled'] / ms['cpu']:.1f}x"]
                row += ["" if backward else f"{gbps:.1f}",
                        "" if backward else f"{100 * gbps / copy:.0f}%", f"{copy:.1f}",
                        "" if backward else f"{100 * gbps / fresh:.0f}%", f"{fresh:.1f}"]
                rows.append(row)
                print(markdown_table(header(providers), [row]).splitlines()[-1], flush=True)
    return providers, rows


def header(providers):
    cols = ["B", "G", "pass"] + [f"{name} ms" for name in providers] + ["cpu vs eager"]
    if "compiled" in providers:
        cols.append("cpu vs compiled")
    return cols + ["cpu GB/s", "% of copy", "copy GB/s", "% of fresh copy", "fresh copy GB/s"]


# glibc's malloc settings that decide whether a large tensor gets fresh pages from mmap (and pays a
# page fault per page on first write) or reuses memory an earlier tensor freed
ALLOCATOR_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
DEFAULT_ALLOCATOR = ("defaults (a block above the mmap threshold, 128 KiB growing to at most "
                     "32 MiB, gets fresh pages)")


def allocator_setting(environ=os.environ) -> str:
    """The glibc malloc variables set for this run, as `NAME=value, ...`; "" for the defaults."""
    return ", ".join(f"{name}={environ[name]}" for name in ALLOCATOR_ENV if name in environ)


def section_title(environ=os.environ, batches=None) -> str:
    """Runs under other allocator settings, and runs other than the sweep (`batches` other than
    FULL_BATCHES), land in sections of their own, not over the sweep's table."""
    title = "Fused op on CPU"
    if batches is not None and list(batches) != FULL_BATCHES:
        title += f" (quick: B={' '.join(str(b) for b in batches)})"
    if environ.get("THP_MEM_ALLOC_ENABLE", "0") == "1":
        title += " (THP_MEM_ALLOC_ENABLE=1)"
    allocator = allocator_setting(environ)
    if allocator:
        title += f" (freed memory reused: {allocator})"
    return title


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help=f"the sweep B = {FULL_BATCHES} (minutes) instead of the quick B = "
                             f"{QUICK_BATCHES} rows")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="batch sizes (default: the quick rows, or the sweep's with --full)")
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--size", type=int, default=64, help="H = W")
    parser.add_argument("--channels", type=int, default=256)
    # Ten calls: with 2 threads, the first ten or so backward calls of a process ran 4x slower
    # on the EPYC VM (same page-fault counts, 30 huge-page faults a call; see RESULTS.md), so
    # fewer warm-up calls measured that start, not the steady state a decoder serving prompts
    # runs in. The baselines get the same warm-up.
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=10)
    compile_choice = parser.add_mutually_exclusive_group()
    compile_choice.add_argument("--compile", action="store_true",
                                help="add the torch.compile column to a quick run")
    compile_choice.add_argument("--no-compile", action="store_true",
                                help="skip the torch.compile column in the --full sweep")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of the compiled column (default inductor)")
    args = parser.parse_args(argv)
    if args.batches is None:
        args.batches = FULL_BATCHES if args.full else QUICK_BATCHES
    return args


def main(argv=None):
    args = parse_args(argv)
    if "cpu" not in stable_sam_ops.available_backends():
        sys.exit("the cpu backend is not built: pip install --no-build-isolation -e .")

    other_load = OtherLoad()
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "0")
    cache_cap = os.environ.get("STABLE_SAM_OPS_CPU_OUTPUT_CACHE_MB") or "256, the default"
    providers, rows = run(args)
    table = markdown_table(header(providers), rows)
    command = "python benchmarks/bench_deformable_sample.py" + " --full" * args.full + (
        " --compile" * args.compile)
    body = "\n\n".join([
        f"Machine: {machine_description()}. THP_MEM_ALLOC_ENABLE={thp}. "
        f"glibc malloc: {allocator_setting() or DEFAULT_ALLOCATOR}. " + other_load.sentence(),
        f"`deformable_sample` with C={args.channels}, {args.size}x{args.size}, fp32, offset_scale 4, "
        "all optional inputs; median of repeated runs after warm-up "
        f"(`{command}`). eager = the grid_sample composition "
        "(`deformable_sample_reference`), compiled = torch.compile of it, cpu = the fused kernel. "
        "GB/s counts the bytes the forward must move (`benchmarks/common.op_bytes`); "
        "copy = `dst.copy_(src)` of the same number of bytes; fresh copy = `src.clone()`, which "
        "writes a new tensor and so pays its page faults, as eager and compiled do for theirs. "
        "The cpu kernel's outputs reuse the buffers of its freed outputs "
        f"(STABLE_SAM_OPS_CPU_OUTPUT_CACHE_MB={cache_cap}), so after the warm-up it pays none "
        "while a step's outputs fit in that cap (at B=32 forward+backward, three outputs of "
        "128 MiB do not: one comes fresh each step).",
        table,
    ])
    print(f"\n{body}")
    if not args.no_write:
        write_results_section(section_title(batches=args.batches), body)


if __name__ == "__main__":
    main()
