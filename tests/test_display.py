"""Jupyter reprs and text reprs (glassbox.display): what a notebook cell shows for the model, the
cache and the config, and the config's report of how the weights are stored."""
from __future__ import annotations

import re

import numpy as np
import pytest

import helpers_models as hm
from helpers_models import GPT2_ODD, GPT2_REAL


def test_model_html_lists_the_architecture(zoo):
    m = zoo.gb(GPT2_ODD)
    html = m._repr_html_()
    for needed in ("family", "layers", "heads", "d_model", "vocabulary", "normalization", "positions", "MLP",
                   "weights stored as", "weight bytes", "SIMD path", "threads", "GPT2LMHeadModel"):
        assert needed in html, needed
    assert "<script" not in html
    assert m.cfg.weight_dtype == "float32"


def test_cache_repr_is_compact(zoo):
    m = zoo.gb(GPT2_REAL)
    toks = hm.random_tokens(GPT2_REAL.vocab_size, (1, 8), seed=1)
    _, cache = m.run_with_cache(toks)
    text, html = repr(cache), cache._repr_html_()
    assert len(cache) > 200
    assert len(text) < 600, len(text)
    assert len(html) < 6000, len(html)
    # one row per hook group, with the layers folded: blocks.0..11 resid_pre -> "0-11"
    assert re.search(r"<th>hook_resid_pre</th><td>0-11</td><td>\[1, 8, 768\]</td>", html), html[:2000]
    total = sum(v.nbytes for v in cache.values())
    from glassbox.display import format_bytes

    assert format_bytes(total) in html


def test_config_repr_has_plain_values_and_storage_dtype(zoo):
    m = zoo.gb(GPT2_ODD)
    r = repr(m.cfg)
    assert "np.float" not in r and "np.int" not in r, r
    html = m.cfg._repr_html_()
    assert "weight_dtype=float32" in html and "n_layers=3" in html


def test_stored_weights_report_their_dtype(smollm2_model):
    m = smollm2_model
    assert m.cfg.weight_dtype.split("+")[0] == "Q4_1", m.cfg.weight_dtype
    html = m._repr_html_()
    assert "Q4_1" in html and "Q8_0" in html and "GQA" in html and "rotary" in html


@pytest.fixture(scope="module")
def smollm2_model():
    from glassbox import HookedTransformer

    try:
        from glassbox.demo_models import smollm2_path

        path = smollm2_path()
    except Exception as exc:  # pragma: no cover - no PyPI access
        pytest.skip(f"SmolLM2 GGUF not available: {exc}")
    return HookedTransformer.from_pretrained(path)
