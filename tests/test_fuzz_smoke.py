"""Smoke runs of the fuzz harnesses in ``tests/fuzz/`` (see docs/fuzzing.md).

Each harness runs its seed corpus plus 200 deterministic random byte mutations of it (the plain
driver of ``tests/fuzz/_common.py``, seed 0: no atheris needed) in a subprocess of its own, so
a crash (a signal), a hang (the timeout) or an exception outside the harness's allowed classes
fails the test instead of killing pytest. The address space is capped at 4 GiB in the child.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"
HARNESSES = ["safetensors", "gguf", "config", "tokenizer", "c_entry"]


@pytest.mark.parametrize("name", HARNESSES)
def test_fuzz_harness_smoke(name):
    if name in ("gguf", "tokenizer"):
        pytest.importorskip("gguf")
    if name == "tokenizer":
        pytest.importorskip("tokenizers")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("GLASSBOX_FUZZ_ROOT", None)  # fuzz this checkout
    seeds = sorted((FUZZ / "corpus" / name).iterdir())
    assert len(seeds) >= 4, f"the {name} seed corpus is missing"
    proc = subprocess.run([sys.executable, str(FUZZ / f"fuzz_{name}.py"), "--random", "200",
                           "--seed", "0", "--stats"],
                          cwd=str(FUZZ.parents[1]), env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, (f"fuzz harness {name} found a problem (exit {proc.returncode})\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    assert f"{name}: {len(seeds) + 200} inputs, 0 findings" in proc.stdout, proc.stdout
    # the harness must reach the success path, not only the error paths
    ok = [line for line in proc.stdout.splitlines() if "outcomes:" in line]
    assert ok and " ok " in ok[0] + " ", proc.stdout


def test_fuzz_driver_reports_a_finding(tmp_path):
    """The plain driver fails (exit 1, the input saved) on an exception outside the allowed
    classes: the smoke test above can fail."""
    script = tmp_path / "fuzz_bad.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(FUZZ)!r})\n"
        "from _common import main\n"
        "def one_input(data):\n"
        "    if len(data) > 3:\n"
        "        raise KeyError('boom')\n"
        "    raise ValueError('fine')\n"
        "main('bad', one_input)\n")
    crash_dir = tmp_path / "crashes"
    env = dict(os.environ, GLASSBOX_FUZZ_CRASH_DIR=str(crash_dir))
    inp = tmp_path / "input"
    inp.write_bytes(b"abcdef")
    proc = subprocess.run([sys.executable, str(script), str(inp)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert "FINDING in bad" in proc.stderr and "KeyError: 'boom'" in proc.stderr
    assert [p.read_bytes() for p in crash_dir.iterdir()] == [b"abcdef"]
    inp.write_bytes(b"ab")
    proc = subprocess.run([sys.executable, str(script), str(inp)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "0 findings" in proc.stdout
