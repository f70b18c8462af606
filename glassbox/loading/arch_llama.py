"""Adapter for the LLaMA family: ``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``.

RMSNorm, rotary positions (HF "rotate_half" layout, i.e. ``rotary_adjacent_pairs=False``), SwiGLU
MLP and grouped-query attention. HF ``nn.Linear`` weights are ``[out, in]``:

================================  ====================================================
TL parameter                      HF tensor (``model.`` prefix optional)
================================  ====================================================
``embed.W_E`` [V, D]              ``embed_tokens.weight``
``blocks.l.ln1.w``                ``layers.l.input_layernorm.weight``
``blocks.l.attn.W_Q`` [H, D, d]   ``layers.l.self_attn.q_proj.weight`` [(H d), D]
``blocks.l.attn.(_)W_K/V``        ``k_proj/v_proj.weight`` [(G d), D] -> [G, D, d]
``blocks.l.attn.b_Q, (_)b_K/V``   ``q/k/v_proj.bias`` when present (Qwen2), else zeros
``blocks.l.attn.W_O`` [H, d, D]   ``o_proj.weight`` [D, (H d)]
``blocks.l.attn.b_O``             ``o_proj.bias`` when present, else zeros
``blocks.l.ln2.w``                ``post_attention_layernorm.weight``
``blocks.l.mlp.W_in/W_gate``      ``mlp.up_proj/gate_proj.weight``^T [D, M]
``blocks.l.mlp.W_out`` [M, D]     ``mlp.down_proj.weight``^T
``blocks.l.mlp.b_in/b_out``       zeros
``ln_final.w``                    ``norm.weight``
``unembed.W_U`` [D, V]            ``lm_head.weight``^T (a copy of ``embed_tokens`` when tied)
``unembed.b_U``                   zeros
================================  ====================================================

The ``_`` prefix (TL's GroupedQueryAttention names) is used iff ``n_key_value_heads`` differs
from ``n_heads``; otherwise ``n_key_value_heads`` is None and the plain names are used.

Deliberate differences from TransformerLens 3.9's converters (where TL is wrong or lossy):
``head_dim`` from config.json is honoured for LLaMA too (TL derives d_head = hidden/heads), and
Llama's optional ``attention_bias`` tensors are loaded rather than dropped. Rotary settings
(``rope_theta``, ``rope_scaling`` of type ``linear`` or ``llama3``) are read from both the
transformers<5 layout (top-level keys) and the 5.x layout (``rope_parameters``).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np

from ..config.validation import FieldReader
from .source import TensorSource
from .stored import StoredMatrix

__all__ = ["ARCHITECTURES", "convert_config", "convert_weights", "rotary_inv_freq"]

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")

_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_new",
                "gelu_pytorch_tanh": "gelu_pytorch_tanh", "relu": "relu", "gelu_fast": "gelu_fast"}

# TL's defaults for the NTK-by-parts fields (HookedTransformerConfig).
_NTK_DEFAULTS = {
    "use_NTK_by_parts_rope": False,
    "NTK_by_parts_low_freq_factor": 1.0,
    "NTK_by_parts_high_freq_factor": 4.0,
    "NTK_by_parts_factor": 8.0,
    "NTK_original_ctx_len": 8192,
}


def _rope(hf: Dict[str, Any]) -> Dict[str, Any]:
    """Collect rope settings from either config layout into one dict (rope_theta, rope_type, ...)."""
    params: Dict[str, Any] = {}
    rp = hf.get("rope_parameters")
    if isinstance(rp, dict):
        # transformers 5.x; Gemma-style per-layer-type dicts are not part of this family
        params.update(rp)
    rs = hf.get("rope_scaling")
    if isinstance(rs, dict):
        params.update(rs)
    if hf.get("rope_theta") is not None:
        params["rope_theta"] = hf["rope_theta"]
    rope_type = str(params.get("rope_type") or params.get("type") or "default").lower()
    params["rope_type"] = rope_type
    params.setdefault("rope_theta", 10000.0)
    return params


def convert_config(hf: Dict[str, Any], where: str = "config.json") -> Dict[str, Any]:
    """HF config.json -> ``HookedTransformerConfig`` fields, following TL's per-architecture branches.

    Every field is type- and range-checked: a missing, null or invalid value is a ``ValueError``
    naming ``where``, the field and the value."""
    r = FieldReader(hf, where)
    arch = (hf.get("architectures") or ["LlamaForCausalLM"])[0]
    D = r.int("hidden_size")
    H = r.int("num_attention_heads")
    G = r.int("num_key_value_heads", H)
    if H % G:
        raise r.fail(f"num_attention_heads={H} is not a multiple of num_key_value_heads={G}")
    head_dim = r.int("head_dim", None, minimum=0)  # 0 or null: derived, as before
    d = head_dim if head_dim else D // H
    if not head_dim and D % H:
        raise r.fail(f"hidden_size={D} is not divisible by num_attention_heads={H}")
    L = r.int("num_hidden_layers", minimum=0)
    act = r.str("hidden_act", "silu")
    if act not in _ACTIVATIONS:
        raise r.fail(f"hidden_act {act!r} is not supported "
                     f"(supported: {', '.join(sorted(_ACTIVATIONS))})")
    if hf.get("mlp_bias"):
        raise r.fail("mlp_bias=True is not supported (TransformerLens's gated MLP has "
                     "no gate bias)")
    partial = r.float("partial_rotary_factor", 1.0, positive=True)
    if partial > 1.0:
        raise r.fail(f"partial_rotary_factor={partial} must be in (0, 1]")
    rotary_dim = int(d * partial + 1e-9)  # HF's int(); the epsilon absorbs float rounding (24/64*64)
    if rotary_dim < 2 or rotary_dim % 2:
        raise r.fail(f"partial_rotary_factor={partial} x head_dim={d} gives rotary_dim={rotary_dim}, "
                     f"which must be even and at least 2")

    cfg: Dict[str, Any] = {
        "d_model": D,
        "d_head": d,
        "n_heads": H,
        "d_mlp": r.int("intermediate_size"),
        "n_layers": L,
        "n_ctx": r.int("max_position_embeddings", 2048),
        "eps": r.float("rms_norm_eps", 1e-6, minimum=0.0),
        "d_vocab": r.int("vocab_size"),
        "act_fn": _ACTIVATIONS[act],
        "n_key_value_heads": G if G != H else None,
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "rotary_adjacent_pairs": False,
        "rotary_dim": rotary_dim,
        "final_rms": True,
        "gated_mlp": True,
        "use_attn_scale": True,
        "use_local_attn": False,
        "window_size": None,
        "attn_types": None,
        "scale_attn_by_inverse_layer_idx": False,
        "tie_word_embeddings": r.bool("tie_word_embeddings", False),
        "rotary_scaling_factor": 1.0,
        **_NTK_DEFAULTS,
    }

    rope = _rope(hf)
    rr = FieldReader(rope, f"{where} (rope settings)")
    cfg["rotary_base"] = rr.float("rope_theta", 10000.0, positive=True)
    rt = rope["rope_type"]
    if rt == "llama3":
        cfg["use_NTK_by_parts_rope"] = True
        cfg["NTK_original_ctx_len"] = (rr.int("original_max_position_embeddings", None)
                                       or r.int("max_position_embeddings", 8192))
        low = rr.float("low_freq_factor", 1.0, positive=True)
        high = rr.float("high_freq_factor", 4.0, positive=True)
        if not high > low:
            raise rr.fail(f"llama3 rope scaling needs high_freq_factor > low_freq_factor, got "
                          f"{high} and {low}")
        cfg["NTK_by_parts_low_freq_factor"] = low
        cfg["NTK_by_parts_high_freq_factor"] = high
        cfg["NTK_by_parts_factor"] = rr.float("factor", 1.0, positive=True)
    elif rt == "linear":
        cfg["rotary_scaling_factor"] = rr.float("factor", 1.0, positive=True)
    elif rt != "default":
        raise r.fail(f"rope scaling type {rt!r} is not supported (supported: default, linear, llama3)")

    if arch == "MistralForCausalLM":
        cfg["n_ctx"] = 2048  # TL caps Mistral's context "due to memory issues"
        cfg["final_rms"] = False  # as TL's Mistral branch (no effect on an RMS model)
        window = r.int("sliding_window", None)
        if window:
            cfg["window_size"] = window
            cfg["use_local_attn"] = True
            cfg["attn_types"] = ["local"] * L
    elif arch == "Qwen2ForCausalLM":
        if hf.get("use_sliding_window"):
            raise r.fail("Qwen2 use_sliding_window=True (per-layer windows) is not supported")
        cfg["default_prepend_bos"] = False
        cfg["tokenizer_prepends_bos"] = True
        if hf.get("initializer_range") is not None:
            cfg["initializer_range"] = r.float("initializer_range", positive=True)
    return cfg


def _prefix(src: TensorSource) -> str:
    return "model." if "model.embed_tokens.weight" in src else ""


def _heads_in(w: np.ndarray, n: int, d: int, D: int) -> np.ndarray:
    """[(n d), D] (nn.Linear, out x in) -> TL [n, D, d]."""
    return np.ascontiguousarray(w.reshape(n, d, D).transpose(0, 2, 1))


def convert_weights(src: TensorSource, cfg: Dict[str, Any], hf: Dict[str, Any],
                    stored: Optional[str] = None) -> Dict[str, Any]:
    """Read the HF tensors and return TL's LLaMA-family state dict.

    ``stored=None``: every entry is a float32 C-contiguous array in TL layout. ``stored="auto"``,
    ``"BF16"`` or ``"F16"``: the matrices (W_E, W_Q, W_K, W_V, W_O, W_in, W_gate, W_out, W_U) are
    :class:`~glassbox.loading.stored.StoredMatrix` objects holding the file's HF rows untouched
    (memory-mapped; see :meth:`TensorSource.stored` for ``keep``), norm weights and biases stay
    float32 arrays. A tied ``lm_head`` shares the embedding's storage.
    """
    D, H, d, M = cfg["d_model"], cfg["n_heads"], cfg["d_head"], cfg["d_mlp"]
    V, L = cfg["d_vocab"], cfg["n_layers"]
    G = cfg["n_key_value_heads"] or H
    kv = "_" if cfg["n_key_value_heads"] is not None else ""
    pre = _prefix(src)
    zeros = lambda *s: np.zeros(s, dtype=np.float32)  # noqa: E731
    sd: Dict[str, Any] = {}
    if stored is not None:
        return _convert_stored(src, cfg, stored, pre, zeros)

    emb = src.get(pre + "embed_tokens.weight", (V, D))
    sd["embed.W_E"] = emb
    for l in range(L):
        h = f"{pre}layers.{l}."
        a = h + "self_attn."
        b = f"blocks.{l}."
        sd[b + "ln1.w"] = src.get(h + "input_layernorm.weight", (D,))
        sd[b + "attn.W_Q"] = _heads_in(src.get(a + "q_proj.weight", (H * d, D)), H, d, D)
        sd[b + f"attn.{kv}W_K"] = _heads_in(src.get(a + "k_proj.weight", (G * d, D)), G, d, D)
        sd[b + f"attn.{kv}W_V"] = _heads_in(src.get(a + "v_proj.weight", (G * d, D)), G, d, D)
        for proj, key, n in (("q_proj", "b_Q", H), ("k_proj", f"{kv}b_K", G), ("v_proj", f"{kv}b_V", G)):
            bias = src.optional(a + proj + ".bias", (n * d,))
            sd[b + "attn." + key] = zeros(n, d) if bias is None else np.ascontiguousarray(bias.reshape(n, d))
        W_O = src.get(a + "o_proj.weight", (D, H * d))
        sd[b + "attn.W_O"] = np.ascontiguousarray(W_O.reshape(D, H, d).transpose(1, 2, 0))
        b_O = src.optional(a + "o_proj.bias", (D,))
        sd[b + "attn.b_O"] = zeros(D) if b_O is None else b_O
        sd[b + "ln2.w"] = src.get(h + "post_attention_layernorm.weight", (D,))
        sd[b + "mlp.W_in"] = np.ascontiguousarray(src.get(h + "mlp.up_proj.weight", (M, D)).T)
        sd[b + "mlp.W_gate"] = np.ascontiguousarray(src.get(h + "mlp.gate_proj.weight", (M, D)).T)
        sd[b + "mlp.b_in"] = zeros(M)
        sd[b + "mlp.W_out"] = np.ascontiguousarray(src.get(h + "mlp.down_proj.weight", (D, M)).T)
        sd[b + "mlp.b_out"] = zeros(D)
    sd["ln_final.w"] = src.get(pre + "norm.weight", (D,))
    lm_head = src.optional("lm_head.weight", (V, D))
    if lm_head is None:
        if not cfg.get("tie_word_embeddings", False):
            src.get("lm_head.weight", (V, D))  # raises: untied model without an LM head
        lm_head = emb
    sd["unembed.W_U"] = np.ascontiguousarray(lm_head.T)
    sd["unembed.b_U"] = zeros(V)
    return sd


def _convert_stored(src: TensorSource, cfg: Dict[str, Any], keep: str, pre: str, zeros) -> Dict[str, Any]:
    """``convert_weights`` with the matrices kept as stored (see there)."""
    D, H, d, M = cfg["d_model"], cfg["n_heads"], cfg["d_head"], cfg["d_mlp"]
    V, L = cfg["d_vocab"], cfg["n_layers"]
    G = cfg["n_key_value_heads"] or H
    kv = "_" if cfg["n_key_value_heads"] is not None else ""
    sd: Dict[str, Any] = {}
    emb = src.stored(pre + "embed_tokens.weight", (V, D), "table", keep=keep)
    sd["embed.W_E"] = emb
    for l in range(L):
        h = f"{pre}layers.{l}."
        a = h + "self_attn."
        b = f"blocks.{l}."
        sd[b + "ln1.w"] = src.get(h + "input_layernorm.weight", (D,))
        sd[b + "attn.W_Q"] = src.stored(a + "q_proj.weight", (H * d, D), "heads_in", H, keep=keep)
        sd[b + f"attn.{kv}W_K"] = src.stored(a + "k_proj.weight", (G * d, D), "heads_in", G, keep=keep)
        sd[b + f"attn.{kv}W_V"] = src.stored(a + "v_proj.weight", (G * d, D), "heads_in", G, keep=keep)
        for proj, key, n in (("q_proj", "b_Q", H), ("k_proj", f"{kv}b_K", G), ("v_proj", f"{kv}b_V", G)):
            bias = src.optional(a + proj + ".bias", (n * d,))
            sd[b + "attn." + key] = zeros(n, d) if bias is None else np.ascontiguousarray(bias.reshape(n, d))
        sd[b + "attn.W_O"] = src.stored(a + "o_proj.weight", (D, H * d), "heads_out", H, keep=keep)
        b_O = src.optional(a + "o_proj.bias", (D,))
        sd[b + "attn.b_O"] = zeros(D) if b_O is None else b_O
        sd[b + "ln2.w"] = src.get(h + "post_attention_layernorm.weight", (D,))
        sd[b + "mlp.W_in"] = src.stored(h + "mlp.up_proj.weight", (M, D), "transposed", keep=keep)
        sd[b + "mlp.W_gate"] = src.stored(h + "mlp.gate_proj.weight", (M, D), "transposed", keep=keep)
        sd[b + "mlp.b_in"] = zeros(M)
        sd[b + "mlp.W_out"] = src.stored(h + "mlp.down_proj.weight", (D, M), "transposed", keep=keep)
        sd[b + "mlp.b_out"] = zeros(D)
    sd["ln_final.w"] = src.get(pre + "norm.weight", (D,))
    if "lm_head.weight" in src:
        sd["unembed.W_U"] = src.stored("lm_head.weight", (V, D), "transposed", keep=keep)
    else:
        if not cfg.get("tie_word_embeddings", False):
            src.get("lm_head.weight", (V, D))  # raises: untied model without an LM head
        sd["unembed.W_U"] = StoredMatrix(emb.storage, emb.dtype, V, D, "transposed")
    sd["unembed.b_U"] = zeros(V)
    return sd


def rotary_inv_freq(cfg: Any) -> np.ndarray:
    """RoPE inverse frequencies ``[rotary_dim // 2]`` (float32), computed in float32 as Hugging Face
    computes them (``1 / base ** (arange(0, R, 2) / R)``; bit-identical to torch's float32 result
    on the usual bases and widths), then Llama-3 NTK-by-parts ("llama3" rope_type) or linear
    scaling (``rotary_scaling_factor``: ``inv_freq / factor``). The glassbox engine takes this
    array as the ``rotary_inv_freq`` weight.
    """
    get = (lambda k, dflt=None: cfg.get(k, dflt)) if isinstance(cfg, dict) else (
        lambda k, dflt=None: getattr(cfg, k, dflt))
    R = int(get("rotary_dim") or get("d_head"))
    base = np.float32(get("rotary_base", 10000))
    exps = np.arange(0, R, 2, dtype=np.int64).astype(np.float32) / np.float32(R)
    inv = (np.float32(1.0) / np.power(base, exps)).astype(np.float32)
    if get("use_NTK_by_parts_rope", False):
        factor = np.float32(get("NTK_by_parts_factor"))
        lo = np.float32(get("NTK_by_parts_low_freq_factor"))
        hi = np.float32(get("NTK_by_parts_high_freq_factor"))
        old = np.float32(get("NTK_original_ctx_len"))
        wavelen = np.float32(2 * math.pi) / inv
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        inv = np.where(medium, smoothed, scaled)
    else:
        factor = float(get("rotary_scaling_factor", 1.0) or 1.0)
        if factor != 1.0:
            inv = inv / np.float32(factor)
    return np.ascontiguousarray(inv, dtype=np.float32)
