"""What the CUDA kernels compile to on sm_90, read from the machine code without a GPU.

nvcc compiles csrc/cuda/deformable_sample_kernel.cu to an object for sm_90 with `-Xptxas -v`
(registers and spills per kernel); `cuobjdump --dump-sass` of the object lists each kernel's
global stores. Runs wherever nvcc and cuobjdump are found (the toolkit, or the cuobjdump that
ships inside the triton package), skipped with the reason otherwise.

    python tests/stable_sam_ops/test_cuda_sass.py   # prints the registers table of RESULTS.md
"""
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE = os.path.join(ROOT, "csrc", "cuda", "deformable_sample_kernel.cu")
ARCH = "sm_90"


def find_tool(name):
    """The toolkit's tool (PATH, CUDA_HOME, /usr/local/cuda), else the copy inside triton."""
    dirs = [os.path.join(d, "bin") for d in (os.environ.get("CUDA_HOME"), "/usr/local/cuda") if d]
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin is not None:
        dirs.append(os.path.join(os.path.dirname(spec.origin), "backends", "nvidia", "bin"))
    found = shutil.which(name)
    for d in dirs:
        if found is None and os.access(os.path.join(d, name), os.X_OK):
            found = os.path.join(d, name)
    return found


NVCC = find_tool("nvcc")
CUOBJDUMP = find_tool("cuobjdump")

pytestmark = pytest.mark.skipif(
    NVCC is None or CUOBJDUMP is None,
    reason=f"needs nvcc and cuobjdump (nvcc: {NVCC}, cuobjdump: {CUOBJDUMP})",
)


def nvcc_command(obj):
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

    site = sysconfig.get_paths()["purelib"]
    # With a pip-installed torch, ATen's CUDA headers include cuBLAS/cuSPARSE headers that live
    # in the nvidia-* wheels rather than the toolkit.
    includes = [os.path.join(ROOT, "csrc")] + include_paths("cuda") + sorted(
        glob.glob(os.path.join(site, "nvidia", "*", "include")))
    return ([NVCC, "-c", f"-arch={ARCH}", "-O3", "-std=c++20", "-Xptxas", "-v"]
            + COMMON_NVCC_FLAGS + [f"-I{d}" for d in includes] + [SOURCE, "-o", obj])


def parse_ptxas(log):
    """{mangled kernel: (registers, spill store bytes, spill load bytes)} from ptxas -v."""
    kernels, current = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for", line)
        if m:
            current = m.group(1)
            kernels[current] = [None, None, None]
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current:
            kernels[current][1:] = [int(m.group(1)), int(m.group(2))]
        m = re.search(r"Used (\d+) registers", line)
        if m and current:
            kernels[current][0] = int(m.group(1))
    return {k: tuple(v) for k, v in kernels.items()}


def parse_sass_stores(sass):
    """{mangled kernel: set of its global store opcodes (STG.E, STG.E.128, ...)}."""
    stores = {}
    for chunk in re.split(r"\n\s*Function : ", sass)[1:]:
        name = chunk.split("\n", 1)[0].strip()
        stores[name] = set(re.findall(r"\b(STG\.E(?:\.[A-Z0-9]+)*)", chunk))
    return stores


def readable(mangled):
    """'forward<float, 4, int>' from the mangled name: kernel, dtype, pack, index type."""
    demangled = subprocess.run(["c++filt"], input=mangled, capture_output=True,
                               text=True).stdout.strip() if shutil.which("c++filt") else mangled
    demangled = re.sub(r"^void |\(.*$|stable_sam_ops::cuda_detail::|c10::", "", demangled)
    return re.sub(r"deformable_sample_|_kernel_impl", "", demangled)


def compile_and_read(out_dir):
    """{readable kernel name: ((registers, spill stores, spill loads), store opcodes)}."""
    obj = os.path.join(out_dir, "deformable_sample_kernel.o")
    env = dict(os.environ, CUDA_HOME=os.path.dirname(os.path.dirname(NVCC)))
    build = subprocess.run(nvcc_command(obj), capture_output=True, text=True, env=env)
    assert build.returncode == 0, build.stderr[-3000:]
    sass = subprocess.run([CUOBJDUMP, "--dump-sass", obj], capture_output=True, text=True,
                          check=True).stdout
    ptxas = parse_ptxas(build.stderr + build.stdout)
    stores = parse_sass_stores(sass)
    assert ptxas and set(ptxas) == set(stores), "ptxas and cuobjdump list different kernels"
    return {readable(k): (ptxas[k], stores[k]) for k in ptxas}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return compile_and_read(str(tmp_path_factory.mktemp("sass")))


def kernels(compiled, kind, packed):
    """The instantiations of one kernel, packed (VEC > 1) or one element per thread."""
    found = {}
    for name, info in compiled.items():
        m = re.fullmatch(rf"{kind}<(\w+), (\d+)(?:, \w+)?>", name)
        if m and (int(m.group(2)) > 1) == packed:
            found[name] = info
    assert found, f"no {kind} kernels ({'packed' if packed else 'scalar'}) in {sorted(compiled)}"
    return found


@pytest.mark.parametrize("kind", ["forward", "backward_gather_value"])
def test_packed_outputs_are_single_16_byte_stores(compiled, kind):
    # Their only global store is the output pack: one STG.E.128, nothing narrower.
    for name, (_, stores) in kernels(compiled, kind, packed=True).items():
        assert stores and all(s.startswith("STG.E.128") for s in stores), (name, stores)


def test_no_kernel_spills_registers(compiled):
    spilling = {n: r for n, (r, _) in compiled.items() if r[1] or r[2]}
    assert not spilling, f"(registers, spill store bytes, spill load bytes): {spilling}"


def test_one_element_backward_query_fits_three_blocks_per_sm(compiled):
    # __launch_bounds__(256, 3) for these: at most 65536 / (3 * 256) = 85, rounded down to a
    # multiple of 8 by the allocator, i.e. 80 registers.
    for name, ((regs, _, _), _) in kernels(compiled, "backward_query", packed=False).items():
        if "double" not in name:
            assert regs <= 80, (name, regs)


def blocks_per_sm(regs, threads=256, sm_registers=65536, max_threads=2048):
    """Resident blocks of `threads` per SM by registers (allocated 8 per thread at a time)."""
    per_block = -(-regs // 8) * 8 * threads
    return min(sm_registers // per_block, max_threads // threads)


def registers_table(compiled):
    lines = ["| kernel<dtype, pack, index> | registers | spill bytes (store/load) | "
             "blocks of 256 / SM |",
             "| --- | --- | --- | --- |"]
    for name in sorted(compiled):
        regs, spill_st, spill_ld = compiled[name][0]
        lines.append(f"| `{name}` | {regs} | {spill_st}/{spill_ld} | {blocks_per_sm(regs)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if NVCC is None or CUOBJDUMP is None:
        sys.exit(f"needs nvcc and cuobjdump (nvcc: {NVCC}, cuobjdump: {CUOBJDUMP})")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(registers_table(compile_and_read(tmp)))
