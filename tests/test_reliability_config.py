"""Unhelpful exceptions turned into ValueErrors that name the field and the bad value.

``n_head = 0`` used to be a ZeroDivisionError, ``vocab_size: null`` a bare TypeError from
``int(None)``, ``rotary_dim = 2**31`` a 12 GB allocation. The HF ``config.json`` adapters (GPT-2,
LLaMA family), the GGUF metadata reader (tests/test_reliability_files.py) and
``HookedTransformerConfig`` itself now check every field in one place
(glassbox/config/validation.py).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from glassbox import HookedTransformer, HookedTransformerConfig
from glassbox.config.validation import InvalidConfigError
from glassbox.loading.pretrained import load_pretrained_parts
from glassbox.loading.safetensors_io import save_safetensors
from helpers_files import llama_config, write_llama_folder

GPT2 = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 64, "n_head": 4,
        "n_layer": 2, "n_positions": 32, "vocab_size": 50, "activation_function": "gelu_new"}

# (case, config.json changes (None = remove), message regex)
GPT2_CASES = [
    ("n_head_zero", {"n_head": 0}, r"field 'n_head' must be a positive integer, got 0"),
    ("n_head_negative", {"n_head": -4}, r"field 'n_head' must be a positive integer, got -4"),
    ("vocab_null", {"vocab_size": None}, r"field 'vocab_size' is null; it is required"),
    ("vocab_missing", {"vocab_size": "__drop__"}, r"field 'vocab_size' is missing; it is required"),
    ("n_embd_string", {"n_embd": "64"}, r"field 'n_embd' must be a positive integer, got '64' \(str\)"),
    ("n_embd_fraction", {"n_embd": 64.5}, r"field 'n_embd' must be a positive integer, got 64.5"),
    ("n_embd_bool", {"n_embd": True}, r"field 'n_embd' must be a positive integer, got True"),
    ("not_divisible", {"n_embd": 66}, r"n_embd=66 is not divisible by n_head=4"),
    ("n_inner_negative", {"n_inner": -1}, r"field 'n_inner' must be a non-negative integer, got -1"),
    ("eps_negative", {"layer_norm_epsilon": -1e-5}, r"field 'layer_norm_epsilon' must be >= 0.0"),
    ("eps_nan", {"layer_norm_epsilon": float("nan")}, r"field 'layer_norm_epsilon' must be a finite number"),
    ("layers_negative", {"n_layer": -1}, r"field 'n_layer' must be a non-negative integer, got -1"),
    ("positions_zero", {"n_positions": 0}, r"field 'n_positions' must be a positive integer, got 0"),
    ("architectures_bad", {"architectures": "GPT2LMHeadModel"}, r"no valid 'architectures' entry"),
]

LLAMA_CASES = [
    ("kv_not_divisor", {"num_key_value_heads": 3}, r"num_attention_heads=4 is not a multiple of num_key_value_heads=3"),
    ("kv_zero", {"num_key_value_heads": 0}, r"field 'num_key_value_heads' must be a positive integer, got 0"),
    ("heads_zero", {"num_attention_heads": 0}, r"field 'num_attention_heads' must be a positive integer, got 0"),
    ("hidden_fraction", {"hidden_size": 64.5}, r"field 'hidden_size' must be a positive integer, got 64.5"),
    ("not_divisible", {"hidden_size": 66}, r"hidden_size=66 is not divisible by num_attention_heads=4"),
    ("intermediate_negative", {"intermediate_size": -96}, r"field 'intermediate_size' must be a positive integer"),
    ("layers_missing", {"num_hidden_layers": "__drop__"}, r"field 'num_hidden_layers' is missing"),
    ("vocab_null", {"vocab_size": None}, r"field 'vocab_size' is null"),
    ("ctx_zero", {"max_position_embeddings": 0}, r"field 'max_position_embeddings' must be a positive integer"),
    ("rope_theta_negative", {"rope_theta": -10000.0}, r"rope settings\): field 'rope_theta' must be positive"),
    ("rope_factor_zero", {"rope_scaling": {"rope_type": "linear", "factor": 0.0}},
     r"field 'factor' must be positive, got 0.0"),
    ("llama3_equal_factors", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0,
                                               "high_freq_factor": 2.0, "original_max_position_embeddings": 64}},
     r"needs high_freq_factor > low_freq_factor, got 2.0 and 2.0"),
    ("partial_rotary_odd", {"partial_rotary_factor": 0.3}, None),  # 16 * 0.3 = 4.8: int() gives 4, as HF
    ("partial_rotary_big", {"partial_rotary_factor": 2.0}, r"partial_rotary_factor=2.0 must be in \(0, 1\]"),
    ("head_dim_zero_is_default", {"head_dim": 0}, None),  # 0/null mean "derive", as in HF
    ("eps_string", {"rms_norm_eps": "1e-5"}, r"field 'rms_norm_eps' must be a finite number, got '1e-5'"),
    ("tie_string", {"tie_word_embeddings": "yes"}, r"field 'tie_word_embeddings' must be true or false"),
    ("window_negative", {"architectures": ["MistralForCausalLM"], "sliding_window": -3},
     r"field 'sliding_window' must be a positive integer, got -3"),
]


def _with(base, changes):
    cfg = dict(base)
    for k, v in changes.items():
        if v == "__drop__":
            cfg.pop(k, None)
        else:
            cfg[k] = v
    return cfg


def _check(err, folder, match):
    msg = str(err.value)
    assert str(folder / "config.json") in msg, msg
    assert not isinstance(err.value, (ZeroDivisionError, TypeError, OverflowError, KeyError))


@pytest.mark.parametrize("case,changes,match", GPT2_CASES, ids=[c[0] for c in GPT2_CASES])
def test_gpt2_config_fields_checked(tmp_path, case, changes, match):
    folder = tmp_path / case
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(_with(GPT2, changes)))
    save_safetensors(folder / "model.safetensors", {"wte.weight": np.zeros((50, 64), np.float32)})
    with pytest.raises(ValueError, match=match) as err:
        load_pretrained_parts(str(folder))
    _check(err, folder, match)


@pytest.mark.parametrize("case,changes,match", LLAMA_CASES, ids=[c[0] for c in LLAMA_CASES])
def test_llama_config_fields_checked(tmp_path, case, changes, match):
    folder = write_llama_folder(tmp_path / case, dtype="F32")
    (folder / "config.json").write_text(json.dumps(_with(llama_config(), changes)))
    if case == "partial_rotary_odd":
        cfg = load_pretrained_parts(str(folder)).config  # 16 * 0.3 = 4.8 -> HF's int() = 4
        assert cfg["rotary_dim"] == 4
        return
    if match is None:
        assert load_pretrained_parts(str(folder)).config["d_head"] == 16
        return
    with pytest.raises(ValueError, match=match) as err:
        load_pretrained_parts(str(folder))
    _check(err, folder, match)


def test_from_pretrained_overrides_checked(tmp_path):
    folder = write_llama_folder(tmp_path / "m", dtype="F32")
    with pytest.raises(ValueError, match=r"first_n_layers must be an integer in \[1, 2\], got 3"):
        HookedTransformer.from_pretrained(str(folder), first_n_layers=3)
    with pytest.raises(ValueError, match=r"first_n_layers must be an integer in \[1, 2\], got 1.5"):
        HookedTransformer.from_pretrained(str(folder), first_n_layers=1.5)
    with pytest.raises(ValueError, match=r"n_ctx must be a positive integer, got 0"):
        HookedTransformer.from_pretrained(str(folder), n_ctx=0)


BASE = dict(d_model=64, d_head=16, n_layers=2, n_ctx=32, d_vocab=50, act_fn="gelu_new")

HTC_CASES = [
    ({"n_heads": 0}, r"n_heads must be a positive integer, got 0"),
    ({"d_head": 0}, r"d_head must be a positive integer, got 0"),
    ({"d_head": 24}, r"d_model \(64\) must be divisible by d_head \(24\) when n_heads is not given"),
    ({"d_model": None}, r"d_model must be a positive integer, got None"),
    ({"d_model": "64"}, r"d_model must be a positive integer, got '64' \(str\)"),
    ({"n_layers": -1}, r"n_layers must be a non-negative integer, got -1"),
    ({"n_ctx": 0}, r"n_ctx must be a positive integer, got 0"),
    ({"d_mlp": 0}, r"d_mlp must be a positive integer, got 0"),
    ({"d_vocab": 0}, r"d_vocab \(-1 when unset\) must be a positive integer, got 0"),
    ({"d_vocab": None}, r"d_vocab \(-1 when unset\) must be a positive integer, got None"),
    ({"n_key_value_heads": 3}, r"n_heads=4 must be a multiple of n_key_value_heads=3"),
    ({"n_key_value_heads": 0}, r"n_key_value_heads must be a positive integer, got 0"),
    ({"positional_embedding_type": "rotary", "rotary_dim": 2**31},
     r"rotary_dim must be an integer in \[2, 16\], got 2147483648"),
    ({"positional_embedding_type": "rotary", "rotary_dim": 7}, r"rotary_dim=7 must be even"),
    ({"positional_embedding_type": "rotary", "rotary_base": 0}, r"rotary_base must be positive, got 0"),
    ({"use_local_attn": True, "window_size": 0, "attn_types": ["local"] * 2},
     r"window_size must be a positive integer, got 0"),
    ({"use_local_attn": True, "attn_types": ["local"] * 2}, r"window_size must be specified for local attention"),
    ({"eps": -1.0}, r"eps must be >= 0.0, got -1.0"),
    ({"act_fn": "swiglu"}, r"act_fn=swiglu must be one of"),
]


@pytest.mark.parametrize("changes,match", HTC_CASES, ids=[str(c[0]) for c in HTC_CASES])
def test_hooked_transformer_config_fields_checked(changes, match):
    with pytest.raises(ValueError, match=match) as err:
        HookedTransformerConfig(**{**BASE, **changes})
    assert isinstance(err.value, InvalidConfigError)
    assert isinstance(err.value, AssertionError)  # what TransformerLens raises for its asserts


def test_valid_configs_normalised_and_unchanged():
    c = HookedTransformerConfig(**{**BASE, "d_model": np.int64(64), "n_ctx": 32.0})
    assert type(c.d_model) is int and type(c.n_ctx) is int and c.n_heads == 4
    assert c.d_mlp == 256 and c.d_vocab_out == 50
    attn_only = HookedTransformerConfig(**{**BASE, "attn_only": True, "d_mlp": None})
    assert attn_only.n_params == 2 * 64 * 16 * 4 * 4
    zero_layers = HookedTransformerConfig(**{**BASE, "n_layers": 0})
    model = HookedTransformer(zero_layers)
    assert model(np.array([[1, 2, 3]])).shape == (1, 3, 50)
    gqa = HookedTransformerConfig(**{**BASE, "n_heads": 4, "n_key_value_heads": 2,
                                     "positional_embedding_type": "rotary", "rotary_dim": 8})
    assert gqa.rotary_dim == 8 and gqa.n_key_value_heads == 2
