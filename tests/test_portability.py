"""The kernels build and run without Python, natively and on aarch64 (scalar path).

``tests/c/kernels_smoke.c`` checks a GEMM against a double-precision loop, that attention
pattern rows sum to 1, a gelu_new value, and the int8-activations GEMM on Q4_1 weights against
the fp32 one (within the activation-rounding bound). It is compiled with every
``csrc/kernels/*.c``:
natively with OpenMP and without it, and cross-compiled with ``aarch64-linux-gnu-gcc`` and run
under ``qemu-aarch64`` (Debian packages gcc-aarch64-linux-gnu and qemu-user, which ``.ci/run``
installs). Where the cross tools are missing the aarch64 test is skipped, except under CI.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNELS = sorted(glob.glob(str(ROOT / "csrc" / "kernels" / "*.c")))
SMOKE = str(ROOT / "tests" / "c" / "kernels_smoke.c")
FLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter",
         "-I", str(ROOT / "csrc" / "kernels")]


def _build_and_run(cc, extra, out, runner=(), env=None):
    build = subprocess.run([cc, *FLAGS, *extra, *KERNELS, SMOKE, "-o", str(out), "-lm"],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([*runner, str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


@pytest.mark.parametrize("openmp", [True, False])
def test_native_build(tmp_path, openmp):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    out = _build_and_run(cc, ["-fopenmp"] if openmp else [], tmp_path / "smoke")
    assert "gemm max err" in out
    assert "int8 activations (" in out


def test_aarch64_cross_build_runs_scalar_path(tmp_path):
    cc, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if cc is None or qemu is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have aarch64-linux-gnu-gcc and qemu-aarch64 (see .ci/run)")
        pytest.skip("aarch64 cross compiler or qemu-user not installed")
    env = dict(os.environ, QEMU_LD_PREFIX="/usr/aarch64-linux-gnu")
    out = _build_and_run(cc, ["-fopenmp"], tmp_path / "smoke-aarch64", runner=(qemu,), env=env)
    assert out.splitlines()[0] == "isa scalar"
    assert "int8 activations (scalar)" in out  # the portable int8 reference ran and agreed
