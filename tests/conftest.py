"""Shared fixtures: GPT-2 folders on disk (random weights, local tokenizer) and model factories.

Folders are built once per session under pytest's tmp dir, or under $GLASSBOX_TEST_CACHE when set
(then reused across sessions; the folder name carries a hash of the spec).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Keep torch and our OpenMP runtime from oversubscribing the 2-core machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers_models as hm  # noqa: E402


def pytest_configure(config):
    try:
        import torch

        # torch and glassbox share libgomp: keep torch at the same thread count as OMP_NUM_THREADS
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    except Exception:
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:
        pass


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory) -> Path:
    root = hm.cache_root(tmp_path_factory.mktemp("gb-models"))
    root.mkdir(parents=True, exist_ok=True)
    return root


class ModelZoo:
    """Builds each folder / reference model once per session.

    Models handed out are shared: a test that changes flags or adds hooks must undo that
    (use try/finally), or ask for a fresh instance with `fresh=True`."""

    def __init__(self, root: Path):
        self.root = root
        self._folders = {}
        self._hf = {}
        self._tl = {}
        self._gb = {}

    def folder(self, spec: hm.GPT2Spec) -> Path:
        if spec not in self._folders:
            self._folders[spec] = hm.save_gpt2_folder(spec, self.root / spec.key())
        return self._folders[spec]

    def hf(self, spec):
        if spec not in self._hf:
            self._hf[spec] = hm.load_hf(self.folder(spec))
        return self._hf[spec]

    def tl(self, spec, processed=True, fresh=False, padding_side=None, **flags):
        key = (spec, processed, padding_side, tuple(sorted(flags.items())))
        if fresh or key not in self._tl:
            m = hm.load_tl(self.hf(spec), self.folder(spec), processed=processed,
                           padding_side=padding_side, **flags)
            if fresh:
                return m
            self._tl[key] = m
        return self._tl[key]

    def gb(self, spec, processed=True, fresh=False, **kw):
        from glassbox import HookedTransformer

        key = (spec, processed, tuple(sorted(kw.items())))
        if fresh or key not in self._gb:
            path = str(self.folder(spec))
            if processed:
                m = HookedTransformer.from_pretrained(path, **kw)
            else:
                m = HookedTransformer.from_pretrained_no_processing(path, **kw)
            if fresh:
                return m
            self._gb[key] = m
        return self._gb[key]


@pytest.fixture(scope="session")
def zoo(fixture_root) -> ModelZoo:
    return ModelZoo(fixture_root)


@pytest.fixture(scope="session")
def odd_folder(zoo) -> Path:
    return zoo.folder(hm.GPT2_ODD)


@pytest.fixture(scope="session")
def real_folder(zoo) -> Path:
    return zoo.folder(hm.GPT2_REAL)
