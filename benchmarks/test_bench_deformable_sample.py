"""pytest-benchmark cases of the fused CPU op and its baselines, plus checks of benchmarks/common.

    pytest benchmarks/test_bench_deformable_sample.py --benchmark-enable   # timings
    pytest benchmarks/test_bench_deformable_sample.py                      # smoke (CI default)

The repository's pytest config passes --benchmark-disable, so in CI every case runs once and
acts as a smoke test of the benchmark code; the table of record is bench_deformable_sample.py.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import stable_sam_ops  # noqa: E402
from common import (  # noqa: E402
    machine_description,
    make_inputs,
    markdown_table,
    median_time_ms,
    op_bytes,
    write_results_section,
)
from stable_sam_ops.reference import deformable_sample_reference  # noqa: E402

TENSORS = ("value", "offset", "amplitude", "residual", "alpha")
needs_cpu_kernel = pytest.mark.skipif(
    "cpu" not in stable_sam_ops.available_backends(), reason="the cpu backend is not built"
)


def fused_cpu(*args):
    return stable_sam_ops.deformable_sample(*args, backend="cpu")


PROVIDERS = {
    "eager": deformable_sample_reference,
    "cpu": pytest.param(fused_cpu, marks=needs_cpu_kernel),
}


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("G", [1, 8])
@pytest.mark.parametrize("provider", PROVIDERS.values(), ids=PROVIDERS.keys())
def test_bench_deformable_sample(benchmark, provider, G, backward):
    inputs = make_inputs(1, 32, 32, 256, G, requires_grad=backward)
    tensors = [inputs[n] for n in TENSORS]
    scale = inputs["offset_scale"]
    grad_out = torch.randn_like(inputs["value"])

    def step():
        out = provider(*tensors, scale)
        return torch.autograd.grad(out, tensors, grad_out) if backward else out

    result = benchmark(step)
    expected = deformable_sample_reference(*[t.detach().double() for t in tensors], scale)
    out = provider(*tensors, scale)
    torch.testing.assert_close(out.detach().double(), expected, rtol=0, atol=2e-5)
    if backward:
        assert len(result) == 5 and all(torch.isfinite(g).all() for g in result)


def test_make_inputs_contract():
    x = make_inputs(2, 5, 6, 16, 4, dtype=torch.float64, requires_grad=True, seed=3)
    assert x["value"].shape == (2, 5, 6, 16) and x["offset"].shape == (2, 5, 6, 4, 2)
    assert x["amplitude"].shape == (2, 5, 6, 4) and x["alpha"].shape == (2, 2)
    assert all(x[n].dtype == torch.float64 and x[n].requires_grad for n in TENSORS)
    assert ((x["amplitude"] > 0) & (x["amplitude"] < 1)).all()
    again = make_inputs(2, 5, 6, 16, 4, dtype=torch.float64, seed=3)
    assert torch.equal(again["value"], x["value"].detach())  # seeded
    with pytest.raises(ValueError, match=r"C \(10\) must be divisible by G \(4\)"):
        make_inputs(1, 2, 2, 10, 4)


def test_op_bytes_counts_every_tensor_once():
    # value + residual + out (C each) and offsets (2) + amplitude (1) per pixel and group
    assert op_bytes(2, 3, 4, 8, 2, torch.float32) == 4 * (24 * 8 * 3 + 24 * 2 * 3)
    assert op_bytes(1, 1, 1, 1, 1, torch.bfloat16) == 2 * 6


def test_median_time_ms_is_a_median():
    calls = []
    ms = median_time_ms(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7 and 0 <= ms < 1000


def test_markdown_table_and_machine():
    table = markdown_table(["a", "b"], [[1, 2.5], ["x", 1234.0]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2.5 |", "| x | 1234 |"]
    assert "torch" in machine_description() and "cores" in machine_description()


def test_write_results_section_replaces_only_its_section(tmp_path):
    path = str(tmp_path / "RESULTS.md")
    write_results_section("GPU op", "gpu table v1", path=path)
    write_results_section("Fused op on CPU", "cpu table v1", path=path)
    write_results_section("Model latency", "model table", path=path)
    write_results_section("Fused op on CPU", "cpu table v2\n\nsecond paragraph", path=path)
    text = open(path).read()
    assert text.startswith("# Benchmark results\n")
    assert "cpu table v1" not in text and "cpu table v2\n\nsecond paragraph" in text
    assert text.count("## Fused op on CPU") == 1
    # order and the other sections kept
    assert text.index("## GPU op") < text.index("## Fused op on CPU") < text.index("## Model")
    assert "gpu table v1" in text and "model table" in text
    assert os.listdir(tmp_path) == ["RESULTS.md"]  # no temp file left behind
    with pytest.raises(ValueError, match="title must be one non-empty line"):
        write_results_section("two\nlines", "x", path=path)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_write_results_section_honours_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_results_section("Fused op on CPU", "table", path=str(tmp_path / "RESULTS.md"))
    finally:
        os.umask(old)
    assert (tmp_path / "RESULTS.md").stat().st_mode & 0o777 == 0o666 & ~umask


def test_runs_under_other_allocator_settings_get_their_own_section():
    # a run with glibc keeping freed memory must not overwrite the table of the default run
    from bench_deformable_sample import allocator_setting, section_title

    assert section_title({}) == "Fused op on CPU"
    assert allocator_setting({"PATH": "/bin"}) == ""
    env = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "1"}
    assert allocator_setting(env) == "MALLOC_MMAP_THRESHOLD_=4294967296, MALLOC_TRIM_THRESHOLD_=1"
    assert section_title(env) == ("Fused op on CPU (freed memory reused: "
                                  "MALLOC_MMAP_THRESHOLD_=4294967296, MALLOC_TRIM_THRESHOLD_=1)")
    thp = {"THP_MEM_ALLOC_ENABLE": "1"}
    assert section_title(thp) == "Fused op on CPU (THP_MEM_ALLOC_ENABLE=1)"


def test_default_is_the_quick_table_and_the_sweep_an_option():
    from bench_deformable_sample import parse_args, section_title, with_compile

    quick, full = parse_args([]), parse_args(["--full"])
    assert quick.batches == [8] and not with_compile(quick)
    assert full.batches == [1, 8, 32] and with_compile(full)
    assert with_compile(parse_args(["--compile"]))
    assert not with_compile(parse_args(["--full", "--no-compile"]))
    # a quick run writes a section of its own, never over the sweep's table of record
    assert section_title({}, batches=quick.batches) == "Fused op on CPU (quick: B=8)"
    assert section_title({}, batches=full.batches) == "Fused op on CPU"


@needs_cpu_kernel
def test_sweep_compiles_every_configuration_without_the_recompile_warning(capfd):
    # 3 batches x 2 groups x (fwd, fwd+bwd) = 12 graphs, past dynamo's default limit of 8;
    # the eager compile backend keeps it fast, the recompile count is the same
    from bench_deformable_sample import parse_args, run

    args = parse_args(["--full", "--batches", "1", "2", "3", "--groups", "1", "2", "--size", "4",
                       "--channels", "8", "--warmup", "0", "--repeats", "1",
                       "--compile-backend", "eager"])
    providers, rows = run(args)
    assert "compiled" in providers and len(rows) == 12
    err = capfd.readouterr().err
    assert "recompile_limit" not in err, err
