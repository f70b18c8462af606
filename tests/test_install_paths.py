"""The README's commands and every install path, as a newcomer would run them (issue 8).

Each case starts from a fresh ``git clone`` of this repository's committed HEAD and a fresh
virtual environment that installs glassbox's runtime dependencies from PyPI (no torch, no test
extras), so a missing file in the sdist, a missing dependency or a source tree that shadows the
installed package fails here rather than on a user's machine:

- the README's main-job command, verbatim, from the clone's root:
  ``pip install -e . && python -m glassbox demo``
- ``pip install .`` (a regular install), smoke-tested from outside the source tree;
- ``python -m build`` (sdist, and a wheel built from that sdist), then the ``.tar.gz`` installed
  into a fresh venv and the wheel into another, each smoke-tested from outside the source tree.

These take a few minutes (four builds of the C extension); set ``GLASSBOX_SKIP_INSTALL_TESTS=1``
to skip them locally. CI runs them.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("GLASSBOX_SKIP_INSTALL_TESTS") == "1", reason="GLASSBOX_SKIP_INSTALL_TESTS=1"),
    pytest.mark.skipif(shutil.which("git") is None, reason="git is needed to clone the repository"),
    pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout"),
]

# A smoke test run from outside any source tree: import, the C engine, a shipped model, the CLI.
SMOKE = """
import os, sys, glassbox
assert "site-packages" in glassbox.__file__, glassbox.__file__
from glassbox import HookedTransformer
import glassbox._C as C
m = HookedTransformer.from_pretrained("glassbox/tiny-gpt2-ioi")
logits, cache = m.run_with_cache("When Mary and John went to the store, John gave a drink to")
assert logits.shape[-1] == m.cfg.d_vocab_out and len(cache) > 10
print("smoke ok", C.isa(), type(logits).__name__)
"""


def _run(cmd, cwd, env=None, timeout=900, shell=False):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, shell=shell)
    if res.returncode != 0:
        raise AssertionError(f"{cmd!r} in {cwd} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    return res


def _clean_env(venv: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_"))}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_PROGRESS_BAR"] = "off"
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("GLASSBOX_TEST_CACHE", None)
    return env


def _base_python() -> str:
    """The interpreter the test venv was made from (a fresh venv must not see the test extras)."""
    return getattr(sys, "_base_executable", None) or sys.executable


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("clone") / "glassbox"
    _run(["git", "clone", "-q", str(ROOT), str(dest)], cwd=str(ROOT.parent))
    return dest


def _venv(tmp_path_factory, name: str) -> Path:
    venv = tmp_path_factory.mktemp(name) / "venv"
    _run([_base_python(), "-m", "venv", str(venv)], cwd="/")
    return venv


def test_readme_main_job_command_from_clone_root(clone, tmp_path_factory):
    m = re.search(r"### Main job\s*```bash\s*\n(.+?)\n```", README, re.S)
    assert m, "README.md has no '### Main job' bash block"
    command = m.group(1).strip()
    assert "\n" not in command, f"the main job must be one command line, got {command!r}"
    venv = _venv(tmp_path_factory, "venv-main")
    env = _clean_env(venv)
    res = _run(command, cwd=str(clone), env=env, shell=True, timeout=1200)
    out = res.stdout
    assert "Next token" in out and "Logit lens" in out and "Induction heads" in out and "patching" in out.lower(), out
    written = re.findall(r"wrote (\S+\.(?:html|png|json))", out, re.I)
    kinds = {Path(w).suffix for w in written}
    assert {".html", ".png"} <= kinds, f"the demo did not say where it wrote its files: {out[-2000:]}"
    for w in written:
        p = Path(w) if Path(w).is_absolute() else clone / w
        assert p.exists() and p.stat().st_size > 0, p
    summary = [Path(w) for w in written if w.endswith(".json")]
    assert summary, "no JSON summary written"
    data = json.loads((summary[0] if summary[0].is_absolute() else clone / summary[0]).read_text())
    print(f"main job: {data['seconds']:.1f} s")  # reported, not asserted: timings are not tests


def _smoke(venv: Path, where: Path) -> str:
    env = _clean_env(venv)
    res = _run([str(venv / "bin" / "python"), "-c", SMOKE], cwd=str(where), env=env)
    assert "smoke ok" in res.stdout
    help_ = _run([str(venv / "bin" / "glassbox"), "--help"], cwd=str(where), env=env)
    assert "demo" in help_.stdout
    return res.stdout


def test_pip_install_dot(clone, tmp_path_factory):
    venv = _venv(tmp_path_factory, "venv-install")
    _run([str(venv / "bin" / "pip"), "install", "-q", str(clone)], cwd=str(clone), env=_clean_env(venv))
    _smoke(venv, tmp_path_factory.mktemp("elsewhere"))


def test_sdist_and_wheel(clone, tmp_path_factory):
    builder = _venv(tmp_path_factory, "venv-build")
    env = _clean_env(builder)
    _run([str(builder / "bin" / "pip"), "install", "-q", "build"], cwd=str(clone), env=env)
    dist = tmp_path_factory.mktemp("dist")
    _run([str(builder / "bin" / "python"), "-m", "build", "--outdir", str(dist), str(clone)], cwd=str(clone), env=env,
         timeout=1200)
    sdists, wheels = glob.glob(str(dist / "*.tar.gz")), glob.glob(str(dist / "*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, os.listdir(dist)
    listing = _run(["tar", "tzf", sdists[0]], cwd=str(dist)).stdout
    for needed in ("csrc/engine.h", "csrc/kernels/kernels.h", "LICENSE", "glassbox/cli.py"):
        assert needed in listing, f"{needed} missing from the sdist"
    assert "/tests/" not in listing
    for artefact, name in ((sdists[0], "venv-sdist"), (wheels[0], "venv-wheel")):
        venv = _venv(tmp_path_factory, name)
        _run([str(venv / "bin" / "pip"), "install", "-q", artefact], cwd=str(dist), env=_clean_env(venv), timeout=1200)
        _smoke(venv, tmp_path_factory.mktemp("elsewhere"))
