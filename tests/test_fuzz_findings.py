"""Regression tests for what fuzzing found (docs/fuzzing.md): each was an unclear exception
(or a MemoryError) instead of a ValueError naming the field."""
from __future__ import annotations

import numpy as np
import pytest

import glassbox._C as _C
from glassbox import HookedTransformer, HookedTransformerConfig
from glassbox.loading.pretrained import convert_hf_config

GPT2 = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 16, "n_head": 4,
        "n_layer": 2, "n_ctx": 32, "n_positions": 32, "vocab_size": 50,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}


@pytest.mark.parametrize("value", [1e30, 2**63, 2**80, -(2**70)])
def test_config_size_beyond_int64_is_a_value_error(value):
    """n_embd=1e30 (an integral float) used to pass as a Python int of 10**30 and fail in
    HookedTransformerConfig with numpy's 'TypeError: loop of ufunc does not support argument 0'."""
    with pytest.raises(ValueError, match=r"field 'n_embd' must be a positive integer( that fits in int64)?, got"):
        convert_hf_config(dict(GPT2, n_embd=value))
    with pytest.raises(ValueError, match=r"d_model must be a positive integer( that fits in int64)?, got"):
        HookedTransformerConfig(d_model=value, d_head=4, n_layers=1, n_ctx=8, d_vocab=11, act_fn="relu")


def test_engine_layer_count_not_backed_by_weights_is_a_value_error():
    """n_layers = 2**63 - 1 used to end in a bare MemoryError (per-layer tables allocated first)."""
    cfg = HookedTransformerConfig(d_model=16, d_head=4, n_layers=2, n_ctx=8, d_vocab=11, act_fn="gelu_new")
    m = HookedTransformer(cfg)
    ecfg, w = m._engine_cfg(), m._engine_weights()
    for L in (2**63 - 1, 2**40, len(w) + 1):
        with pytest.raises(ValueError, match=rf"Model: n_layers = {L} but weights holds only {len(w)} entries"):
            _C.Model(dict(ecfg, n_layers=L), w)
    with pytest.raises(ValueError, match=r"weight 'blocks.2.ln1.w' is missing"):
        _C.Model(dict(ecfg, n_layers=3), w)  # within the bound: the missing weight is named
    out = _C.Model(ecfg, w).forward(np.array([[1, 2, 3]]))
    np.testing.assert_allclose(out, m(np.array([[1, 2, 3]])), rtol=1e-5, atol=1e-5)
