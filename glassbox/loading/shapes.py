"""Which parameters a ``HookedTransformer(cfg)`` has, and their shapes (TransformerLens names).

This is the one place that knows TL's parameter set: the loader validates converted state dicts
against it and :func:`glassbox.loading.init.init_weights` creates exactly these arrays.
``cfg`` may be a plain dict of ``HookedTransformerConfig`` field values or any object with those
attributes (glassbox's or TransformerLens's config).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

__all__ = ["cfg_get", "param_shapes", "norm_params", "check_state_dict"]

Shape = Tuple[int, ...]


def cfg_get(cfg: Any, name: str, default: Any = None) -> Any:
    """Read a config field from a dict or a config object (``default`` when absent)."""
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def norm_params(normalization_type: Optional[str], d_model: int) -> Dict[str, Shape]:
    """Parameters of one TL norm module: LN has w and b, RMS has w, the *Pre variants none."""
    if normalization_type == "LN":
        return {"w": (d_model,), "b": (d_model,)}
    if normalization_type == "RMS":
        return {"w": (d_model,)}
    return {}


def _d_vocab_out(cfg: Any) -> int:
    v = cfg_get(cfg, "d_vocab_out", -1)
    return int(cfg_get(cfg, "d_vocab")) if v is None or v == -1 else int(v)


def param_shapes(cfg: Any) -> Dict[str, Shape]:
    """``{name: shape}`` of every parameter TransformerLens's ``HookedTransformer(cfg)`` holds.

    GQA (``n_key_value_heads`` set) uses TL's underscored names ``_W_K``, ``_W_V``, ``_b_K``,
    ``_b_V`` with ``n_key_value_heads`` heads. ``final_rms`` makes ``ln_final`` an RMSNorm (only
    ``w``) under LN models, as in TL.
    """
    D = int(cfg_get(cfg, "d_model"))
    H = int(cfg_get(cfg, "n_heads"))
    d = int(cfg_get(cfg, "d_head"))
    L = int(cfg_get(cfg, "n_layers"))
    V = int(cfg_get(cfg, "d_vocab"))
    G = cfg_get(cfg, "n_key_value_heads")
    norm = cfg_get(cfg, "normalization_type", "LN")
    pos = cfg_get(cfg, "positional_embedding_type", "standard")
    attn_only = bool(cfg_get(cfg, "attn_only", False))
    gated = bool(cfg_get(cfg, "gated_mlp", False))
    kv = "" if G is None else "_"
    Gh = H if G is None else int(G)

    shapes: Dict[str, Shape] = {"embed.W_E": (V, D)}
    if pos in ("standard", "shortformer"):
        shapes["pos_embed.W_pos"] = (int(cfg_get(cfg, "n_ctx")), D)
    for l in range(L):
        p = f"blocks.{l}."
        for k, s in norm_params(norm, D).items():
            shapes[p + "ln1." + k] = s
        if not attn_only:
            for k, s in norm_params(norm, D).items():
                shapes[p + "ln2." + k] = s
        shapes[p + "attn.W_Q"] = (H, D, d)
        shapes[p + f"attn.{kv}W_K"] = (Gh, D, d)
        shapes[p + f"attn.{kv}W_V"] = (Gh, D, d)
        shapes[p + "attn.W_O"] = (H, d, D)
        shapes[p + "attn.b_Q"] = (H, d)
        shapes[p + f"attn.{kv}b_K"] = (Gh, d)
        shapes[p + f"attn.{kv}b_V"] = (Gh, d)
        shapes[p + "attn.b_O"] = (D,)
        if not attn_only:
            M = int(cfg_get(cfg, "d_mlp"))
            shapes[p + "mlp.W_in"] = (D, M)
            if gated:
                shapes[p + "mlp.W_gate"] = (D, M)
            shapes[p + "mlp.b_in"] = (M,)
            shapes[p + "mlp.W_out"] = (M, D)
            shapes[p + "mlp.b_out"] = (D,)
    final_norm = norm
    if norm == "LN" and cfg_get(cfg, "final_rms", False):
        final_norm = "RMS"
    for k, s in norm_params(final_norm, D).items():
        shapes["ln_final." + k] = s
    Vo = _d_vocab_out(cfg)
    shapes["unembed.W_U"] = (D, Vo)
    shapes["unembed.b_U"] = (Vo,)
    return shapes


def check_state_dict(state_dict: Mapping[str, np.ndarray], cfg: Any, *, what: str = "state dict") -> None:
    """Raise ``ValueError`` unless ``state_dict`` has exactly the TL parameters of ``cfg``.

    The message names the first offending tensor and, for a shape mismatch, both shapes.
    """
    expected = param_shapes(cfg)
    missing = [k for k in expected if k not in state_dict]
    if missing:
        raise ValueError(f"{what} is missing {len(missing)} tensor(s) the config needs, e.g. {missing[:5]}")
    extra = [k for k in state_dict if k not in expected]
    if extra:
        raise ValueError(f"{what} has {len(extra)} tensor(s) the config does not define, e.g. {extra[:5]}")
    for k, shape in expected.items():
        got = tuple(np.shape(state_dict[k]))
        if got != shape:
            raise ValueError(f"{what}: tensor {k!r} has shape {got} but the config implies {shape}")
