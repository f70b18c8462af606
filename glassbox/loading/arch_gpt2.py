"""Adapter for ``GPT2LMHeadModel`` checkpoints (GPT-2 small/medium/large/xl, distilgpt2, ...).

HF GPT-2 uses ``Conv1D`` layers whose weights are stored ``[in, out]`` (TL's orientation already):

=============================  ==========================================================
TL parameter                   HF tensor (``transformer.`` prefix optional)
=============================  ==========================================================
``embed.W_E`` [V, D]           ``wte.weight``
``pos_embed.W_pos`` [N, D]     ``wpe.weight`` (rows beyond ``n_ctx`` dropped)
``blocks.l.ln1.w/b``           ``h.l.ln_1.weight/bias``
``blocks.l.attn.W_Q/K/V``      ``h.l.attn.c_attn.weight`` [D, 3D] -> 3 x [D, (H d)] -> [H, D, d]
``blocks.l.attn.b_Q/K/V``      ``h.l.attn.c_attn.bias`` [3D] -> [3, H, d]
``blocks.l.attn.W_O`` [H,d,D]  ``h.l.attn.c_proj.weight`` [(H d), D]
``blocks.l.attn.b_O``          ``h.l.attn.c_proj.bias``
``blocks.l.ln2.w/b``           ``h.l.ln_2.weight/bias``
``blocks.l.mlp.W_in/b_in``     ``h.l.mlp.c_fc.weight`` [D, M] / ``.bias``
``blocks.l.mlp.W_out/b_out``   ``h.l.mlp.c_proj.weight`` [M, D] / ``.bias``
``ln_final.w/b``               ``ln_f.weight/bias``
``unembed.W_U`` [D, V]         ``lm_head.weight``^T (a separate copy; ``wte`` when tied/absent)
``unembed.b_U``                zeros
=============================  ==========================================================
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

from ..config.validation import FieldReader
from .source import TensorSource

__all__ = ["ARCHITECTURES", "convert_config", "convert_weights"]

ARCHITECTURES = ("GPT2LMHeadModel",)

#: HF ``activation_function`` -> TL ``act_fn`` (those the glassbox engine implements).
_ACTIVATIONS = {
    "gelu_new": "gelu_new",
    "gelu": "gelu",
    "relu": "relu",
    "gelu_fast": "gelu_fast",
    "gelu_pytorch_tanh": "gelu_pytorch_tanh",
    "silu": "silu",
    "swish": "silu",
}


def convert_config(hf: Dict[str, Any], where: str = "config.json") -> Dict[str, Any]:
    """HF GPT-2 ``config.json`` -> ``HookedTransformerConfig`` fields (TL's GPT-2 branch).

    Every field is type- and range-checked: a missing, null or invalid value is a ``ValueError``
    naming ``where``, the field and the value."""
    r = FieldReader(hf, where)
    D = r.int("n_embd")
    H = r.int("n_head")
    if D % H:
        raise r.fail(f"n_embd={D} is not divisible by n_head={H}")
    act = r.str("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise r.fail(f"activation_function {act!r} is not supported "
                     f"(supported: {', '.join(sorted(_ACTIVATIONS))})")
    n_inner = r.int("n_inner", None, minimum=0)  # 0 or null: 4 * n_embd, as before
    n_ctx = r.int("n_ctx", None) or r.int("n_positions")
    return {
        "d_model": D,
        "d_head": D // H,
        "n_heads": H,
        "d_mlp": n_inner if n_inner else 4 * D,
        "n_layers": r.int("n_layer", minimum=0),
        "n_ctx": n_ctx,
        "eps": r.float("layer_norm_epsilon", 1e-5, minimum=0.0),
        "d_vocab": r.int("vocab_size"),
        "act_fn": _ACTIVATIONS[act],
        "use_attn_scale": r.bool("scale_attn_weights", True),
        "use_local_attn": False,
        "scale_attn_by_inverse_layer_idx": r.bool("scale_attn_by_inverse_layer_idx", False),
        "normalization_type": "LN",
        "positional_embedding_type": "standard",
        "n_key_value_heads": None,
        "gated_mlp": False,
        "final_rms": False,
        "tie_word_embeddings": r.bool("tie_word_embeddings", True),
    }


def _prefix(src: TensorSource) -> str:
    return "transformer." if "transformer.wte.weight" in src else ""


def convert_weights(src: TensorSource, cfg: Dict[str, Any], hf: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """Read the HF tensors and return TL's GPT-2 state dict (float32, C-contiguous)."""
    D, H, d, M = cfg["d_model"], cfg["n_heads"], cfg["d_head"], cfg["d_mlp"]
    V, L, N = cfg["d_vocab"], cfg["n_layers"], cfg["n_ctx"]
    pre = _prefix(src)
    sd: Dict[str, np.ndarray] = {}

    wte = src.get(pre + "wte.weight", (V, D))
    sd["embed.W_E"] = wte
    n_pos = int(hf.get("n_positions") or hf.get("n_ctx") or N)
    wpe = src.get(pre + "wpe.weight", (n_pos, D))
    if N > n_pos:
        raise ValueError(f"n_ctx={N} exceeds the {n_pos} learned positions in {pre}wpe.weight")
    sd["pos_embed.W_pos"] = wpe[:N] if N < n_pos else wpe

    for l in range(L):
        h = f"{pre}h.{l}."
        b = f"blocks.{l}."
        sd[b + "ln1.w"] = src.get(h + "ln_1.weight", (D,))
        sd[b + "ln1.b"] = src.get(h + "ln_1.bias", (D,))
        W = src.get(h + "attn.c_attn.weight", (D, 3 * D))
        # [D, 3, H, d] -> [3, H, D, d]
        qkv = W.reshape(D, 3, H, d).transpose(1, 2, 0, 3)
        bias = src.get(h + "attn.c_attn.bias", (3 * D,)).reshape(3, H, d)
        for i, n in enumerate("QKV"):
            sd[b + f"attn.W_{n}"] = np.ascontiguousarray(qkv[i])
            sd[b + f"attn.b_{n}"] = np.ascontiguousarray(bias[i])
        sd[b + "attn.W_O"] = src.get(h + "attn.c_proj.weight", (D, D)).reshape(H, d, D)
        sd[b + "attn.b_O"] = src.get(h + "attn.c_proj.bias", (D,))
        sd[b + "ln2.w"] = src.get(h + "ln_2.weight", (D,))
        sd[b + "ln2.b"] = src.get(h + "ln_2.bias", (D,))
        sd[b + "mlp.W_in"] = src.get(h + "mlp.c_fc.weight", (D, M))
        sd[b + "mlp.b_in"] = src.get(h + "mlp.c_fc.bias", (M,))
        sd[b + "mlp.W_out"] = src.get(h + "mlp.c_proj.weight", (M, D))
        sd[b + "mlp.b_out"] = src.get(h + "mlp.c_proj.bias", (D,))

    sd["ln_final.w"] = src.get(pre + "ln_f.weight", (D,))
    sd["ln_final.b"] = src.get(pre + "ln_f.bias", (D,))
    lm_head = src.optional("lm_head.weight", (V, D))
    if lm_head is None:
        if not cfg.get("tie_word_embeddings", True):
            src.get("lm_head.weight", (V, D))  # raises: untied model without an LM head
        lm_head = wte
    sd["unembed.W_U"] = np.ascontiguousarray(lm_head.T)
    sd["unembed.b_U"] = np.zeros(V, dtype=np.float32)
    return sd
