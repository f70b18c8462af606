"""Fuzz harness: config parsing (``config.json`` -> TL config -> ``HookedTransformerConfig``
-> a randomly initialised ``HookedTransformer`` and its C engine).

Each input is used twice. (1) Written as ``config.json`` and read the way ``from_pretrained``
reads it (``pretrained._read_config``). (2) As a list of edits to one of two valid configs
(GPT-2, LLaMA-GQA): the input seeds up to 3 random edits, each setting a known HF field to a hostile value (0, -1, 2**63,
NaN, a string, a list, a dict, None, ...), so every field's validation is reached even though
random bytes rarely form JSON. Each dict is converted by ``convert_hf_config`` (the GPT-2 /
LLaMA adapters), turned into a ``HookedTransformerConfig`` and, when the model it describes is
small, a model with random weights is built and run on 3 tokens.

Allowed: success, ``ValueError`` naming the field, ``NotImplementedError`` for a config
feature the engine does not implement (a documented, clear refusal). Run:
``python tests/fuzz/fuzz_config.py --atheris -max_total_time=360 tests/fuzz/corpus/config``
"""
from __future__ import annotations

import random

import numpy as np

from _common import ALLOWED, instrumented, main, write_input

with instrumented():
    from glassbox import HookedTransformer, HookedTransformerConfig
    from glassbox.loading import pretrained

NAME = "config"
_MAX_PARAMS = 1_000_000


_BASES = [
    {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 16, "n_head": 4,
     "n_layer": 2, "n_ctx": 32, "n_positions": 32, "vocab_size": 50, "n_inner": None,
     "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5},
    {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16,
     "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
     "intermediate_size": 24, "max_position_embeddings": 64, "rms_norm_eps": 1e-6,
     "vocab_size": 40, "hidden_act": "silu", "rope_theta": 10000.0, "tie_word_embeddings": False},
]
_KEYS = sorted({k for b in _BASES for k in b} | {
    "head_dim", "rope_scaling", "rope_parameters", "partial_rotary_factor", "sliding_window",
    "use_sliding_window", "attention_bias", "mlp_bias", "n_ctx", "scale_attn_by_inverse_layer_idx",
    "tie_word_embeddings", "max_window_layers", "torch_dtype", "reorder_and_upcast_attn"})
_VALUES = [0, 1, 2, 3, 4, 7, 8, -1, -4, 2**31, 2**63, 2**80, 0.0, 0.5, -0.5, 1.5, 1e30, 1e-30,
           float("nan"), float("inf"), float("-inf"), True, False, None, "", "4", "gelu", "silu",
           "relu", "bogus", [], [1], ["LlamaForCausalLM"], ["GPT2LMHeadModel"], ["Bogus"], {},
           {"rope_type": "linear", "factor": 2.0}, {"type": "linear", "factor": 0},
           {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16},
           {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 0},
           {"rope_type": "yarn", "factor": 2.0}, {"rope_type": "default", "rope_theta": -1}]


def _edited(data: bytes) -> dict:
    rng = random.Random(data)  # the input picks the edits (deterministically)
    hf = dict(rng.choice(_BASES))
    for _ in range(rng.randrange(4)):
        key = rng.choice(_KEYS)
        if rng.random() < 0.1:
            hf.pop(key, None)
        else:
            hf[key] = rng.choice(_VALUES)
    return hf


def one_input(data: bytes) -> None:
    try:
        _run(pretrained._read_config(write_input("config.json", data)))
    except ALLOWED + (NotImplementedError,):
        pass
    _run(_edited(data))


def _run(hf: dict) -> None:
    cfg = pretrained.convert_hf_config(hf, model_name="fuzz")
    # no tokenizer: HookedTransformer(cfg) would load cfg.tokenizer_name, as TransformerLens does
    tl = HookedTransformerConfig.from_dict(dict(cfg, init_weights=True, tokenizer_name=None))
    n_params = tl.d_vocab * tl.d_model * 2 + tl.n_layers * (
        4 * tl.d_model * tl.n_heads * tl.d_head + 3 * tl.d_model * (tl.d_mlp or 0))
    if n_params > _MAX_PARAMS or tl.n_ctx > 4096:
        return
    model = HookedTransformer(tl)
    V = tl.d_vocab
    logits = model(np.array([[0, (V - 1) // 2, V - 1]]))
    assert logits.shape == (1, 3, tl.d_vocab_out)


if __name__ == "__main__":
    main(NAME, one_input, ALLOWED + (NotImplementedError,))
