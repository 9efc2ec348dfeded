"""Shared pieces of the benchmarks: realistic inputs, the bytes the op must move, timing,
machine description and the RESULTS.md writer (used by the CPU, GPU and model benchmarks)."""
import os
import platform
import re
import statistics
import tempfile
import time
from typing import Callable, Dict, List, Optional

import torch

RESULTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def make_inputs(
    B: int,
    H: int,
    W: int,
    C: int,
    G: int,
    dtype: torch.dtype = torch.float32,
    device="cpu",
    requires_grad: bool = False,
    seed: int = 0,
    offset_scale: float = 4.0,
) -> Dict[str, object]:
    """Inputs of `deformable_sample` with the magnitudes Stable-SAM feeds it.

    Raw offsets ~ N(0, 0.5) (so tanh is far from saturation and most points land inside the
    image), amplitudes in (0, 1) as after a sigmoid, routing weights near the softmax output
    [0.5, 0.5], features ~ N(0, 1). Returns a dict with keys value, offset, amplitude, residual,
    alpha (tensors) and offset_scale (float), ready for `deformable_sample(**inputs)`.
    """
    if C % G != 0:
        raise ValueError(f"make_inputs: C ({C}) must be divisible by G ({G})")
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0, fn=None):
        t = torch.randn(*shape, generator=gen, dtype=torch.float32) * scale + shift
        if fn is not None:
            t = fn(t)
        return t.to(device=device, dtype=dtype).requires_grad_(requires_grad)

    return {
        "value": rand(B, H, W, C),
        "offset": rand(B, H, W, G, 2, scale=0.5),
        "amplitude": rand(B, H, W, G, fn=torch.sigmoid),
        "residual": rand(B, H, W, C),
        "alpha": rand(B, 2, scale=0.1, shift=0.5),
        "offset_scale": float(offset_scale),
    }


def op_bytes(B: int, H: int, W: int, C: int, G: int, dtype: torch.dtype) -> int:
    """Bytes the forward must move at least: read value, residual, offsets, amplitudes; write out."""
    size = torch.empty((), dtype=dtype).element_size()
    pixels = B * H * W
    return size * (pixels * C * 3 + pixels * G * 3)


def median_time_ms(fn: Callable[[], object], warmup: int = 3, repeats: int = 10) -> float:
    """Median wall time of fn() in milliseconds (CPU; synchronises CUDA if it is in use)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def markdown_table(header: List[str], rows: List[List[object]]) -> str:
    def cell(x):
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
        return str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: Optional[str] = None) -> str:
    """One line: CPU model, cores, torch version and threads; the GPU's name when device is CUDA."""
    parts = [
        f"CPU: {_cpu_model()} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"capability {torch.backends.cpu.get_cpu_capability()})",
        f"torch {torch.__version__}",
    ]
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        parts.append(f"GPU: {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})")
    return "; ".join(parts)


def write_text_atomic(path: str, text: str) -> None:
    """Replaces `path` with `text` through a temp file in the same folder and os.replace, so a
    reader (or a killed run) never leaves half a table; the file gets the mode a plain open()
    would give it (mkstemp's is 0600). Standalone on purpose: the GPU machine has no
    segment-anything, so benchmarks of the op must not import stable_sam."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_results_section(title: str, body: str, path: str = RESULTS_PATH) -> None:
    """Replaces the section `## {title}` of RESULTS.md (or appends it), leaving the others intact.

    The file is rewritten atomically (`write_text_atomic`).
    """
    if not title or "\n" in title:
        raise ValueError(f"write_results_section: title must be one non-empty line, got {title!r}")
    text = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    if not text:
        text = "# Benchmark results\n"
    section = f"## {title}\n\n{body.strip()}\n"
    # A section runs from its heading to the next level-2 heading or the end of the file.
    pattern = re.compile(rf"^## {re.escape(title)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    write_text_atomic(path, text)
