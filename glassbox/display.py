"""How glassbox objects show themselves: short text reprs and Jupyter ``_repr_html_`` tables.

A notebook cell that ends with ``model``, ``cache`` or ``model.cfg`` shows a compact table
instead of pages of text:

- :class:`~glassbox.HookedTransformer`: the architecture (family, layers, heads / kv heads,
  d_model, d_mlp, vocabulary, norm, positional scheme, activation and MLP gating), how the
  weights are stored (dtype → tensors and bytes, e.g. ``Q4_1``, ``bfloat16``, ``float32``) and
  what the engine runs on (SIMD path, threads).
- :class:`~glassbox.ActivationCache`: one row per hook group (``resid_pre``, ``attn.hook_pattern``
  …) with the layers it covers, its shape and bytes, and the total.
- :class:`~glassbox.HookedTransformerConfig`: the fields, grouped, with plain Python values.

Everything here only reads the objects; nothing is computed on the model.
"""
from __future__ import annotations

import html
import re
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "weight_storage",
    "weight_storage_label",
    "model_summary",
    "model_html",
    "cache_groups",
    "cache_text",
    "cache_html",
    "config_html",
    "format_bytes",
]

_STYLE = (
    "<style>.gb-table{border-collapse:collapse;font-family:ui-monospace,Menlo,Consolas,monospace;"
    "font-size:12px;margin:4px 0}.gb-table th,.gb-table td{border:1px solid #ccc;padding:2px 8px;"
    "text-align:left;vertical-align:top}.gb-table th{background:#f3f3f3}"
    ".gb-table caption{text-align:left;font-weight:bold;padding:2px 0}</style>"
)

_STORED_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def format_bytes(n: int) -> str:
    """``1536`` → ``'1.5 KiB'`` (binary units)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _nbytes(x: Any) -> int:
    storage = getattr(x, "storage", None)
    if isinstance(storage, np.ndarray):  # StoredMatrix: the bytes as stored
        return int(storage.nbytes)
    return int(getattr(x, "nbytes", 0) or np.asarray(x).nbytes)


def weight_storage(model: Any) -> "OrderedDict[str, Tuple[int, int]]":
    """``{storage dtype: (number of tensors, bytes)}`` over the model's parameters, largest first.

    Weights kept as stored (GGUF blocks, bf16/f16 safetensors) count with their stored bytes;
    float32 arrays as ``float32``."""
    totals: Dict[str, List[int]] = {}
    seen = set()  # tied weights (e.g. a GGUF's shared embedding / unembedding) count once
    for value in model._state_dict_np().values():
        raw = getattr(value, "storage", value)
        key = (raw.__array_interface__["data"][0], raw.nbytes) if isinstance(raw, np.ndarray) else id(raw)
        if key in seen:
            continue
        seen.add(key)
        stored = getattr(value, "dtype", None)
        if hasattr(value, "storage") and isinstance(stored, str):
            name = _STORED_NAMES.get(stored, stored)
        else:
            name = np.dtype(value.dtype).name
        slot = totals.setdefault(name, [0, 0])
        slot[0] += 1
        slot[1] += _nbytes(value)
    ordered = sorted(totals.items(), key=lambda kv: -kv[1][1])
    return OrderedDict((k, (v[0], v[1])) for k, v in ordered)


def weight_storage_label(model: Any) -> str:
    """One line, e.g. ``'Q4_1 (211 tensors, 79.6 MiB) + float32 (61 tensors, 0.1 MiB)'``."""
    parts = [f"{k} ({n} tensors, {format_bytes(b)})" for k, (n, b) in weight_storage(model).items()]
    return " + ".join(parts) if parts else "no weights"


def _engine_info() -> Tuple[str, str]:
    try:
        from glassbox import _C
    except ImportError:  # pragma: no cover - unbuilt source tree
        return "not built", "-"
    return str(_C.isa()), str(_C.num_threads())


def model_summary(model: Any) -> "OrderedDict[str, str]":
    """The rows of the model's table: architecture, weight storage and engine, as strings."""
    cfg = model.cfg
    G = cfg.n_key_value_heads or cfg.n_heads
    if cfg.positional_embedding_type == "rotary":
        pos = f"rotary (RoPE), rotary_dim {cfg.rotary_dim}, base {_plain(cfg.rotary_base)}"
    else:
        pos = f"{cfg.positional_embedding_type} (learned, n_ctx {cfg.n_ctx})"
    mlp = f"{cfg.act_fn}, gated (SwiGLU-style)" if cfg.gated_mlp else f"{cfg.act_fn}"
    heads = f"{cfg.n_heads} query / {G} key-value (GQA, {cfg.n_heads // G} per group)" if G != cfg.n_heads \
        else f"{cfg.n_heads}"
    isa, threads = _engine_info()
    storage = weight_storage(model)
    rows: "OrderedDict[str, str]" = OrderedDict()
    rows["model"] = str(cfg.model_name)
    rows["family"] = str(cfg.original_architecture or "custom (built from a config)")
    rows["layers"] = str(cfg.n_layers)
    rows["heads"] = heads
    rows["d_model / d_head / d_mlp"] = f"{cfg.d_model} / {cfg.d_head} / {cfg.d_mlp}"
    rows["vocabulary"] = f"{cfg.d_vocab}" + (f" (logits {cfg.d_vocab_out})" if cfg.d_vocab_out != cfg.d_vocab else "")
    rows["context"] = str(cfg.n_ctx)
    rows["normalization"] = str(cfg.normalization_type)
    rows["positions"] = pos
    rows["MLP"] = mlp
    rows["parameters"] = f"{model.n_params_total:,}"
    rows["weights stored as"] = " + ".join(f"{k}: {n} tensors, {format_bytes(b)}" for k, (n, b) in storage.items())
    rows["weight bytes"] = format_bytes(sum(b for _, b in storage.values()))
    rows["compute"] = f"float32 on CPU, SIMD path {isa}, {threads} threads"
    rows["tokenizer"] = "yes" if model.tokenizer is not None else "none"
    return rows


def _table(rows: Iterable[Sequence[str]], header: Optional[Sequence[str]] = None, caption: str = "") -> str:
    out = [_STYLE, '<table class="gb-table">']
    if caption:
        out.append(f"<caption>{html.escape(caption)}</caption>")
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = list(row)
        out.append("<tr>" + f"<th>{html.escape(cells[0])}</th>"
                   + "".join(f"<td>{html.escape(c)}</td>" for c in cells[1:]) + "</tr>")
    out.append("</table>")
    return "".join(out)


def model_html(model: Any) -> str:
    """``HookedTransformer._repr_html_``."""
    return _table(model_summary(model).items(), caption="glassbox HookedTransformer")


# --------------------------------------------------------------------------------------------
# ActivationCache
# --------------------------------------------------------------------------------------------
_LAYER = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _compress_layers(layers: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` → ``'0-2, 5'``."""
    out, start, prev = [], None, None
    for l in sorted(layers):
        if start is None:
            start = prev = l
        elif l == prev + 1:
            prev = l
        else:
            out.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = l
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ", ".join(out)


def cache_groups(cache: Any) -> List[Dict[str, Any]]:
    """Entries grouped by hook (per-layer names folded over layers), in firing order:
    ``[{"hook", "layers", "shape", "bytes", "count"}]``."""
    groups: "OrderedDict[str, Dict[str, Any]]" = OrderedDict()
    for name, value in cache.cache_dict.items():
        m = _LAYER.match(name)
        key = m.group(2) if m else name
        g = groups.setdefault(key, {"hook": key, "layers": [], "shapes": [], "bytes": 0, "count": 0})
        if m:
            g["layers"].append(int(m.group(1)))
        shape = tuple(int(s) for s in value.shape)
        if shape not in g["shapes"]:
            g["shapes"].append(shape)
        g["bytes"] += _nbytes(value)
        g["count"] += 1
    out = []
    for g in groups.values():
        shape = " | ".join(str(list(s)) for s in g["shapes"])
        out.append({"hook": g["hook"], "layers": _compress_layers(g["layers"]) if g["layers"] else "-",
                    "shape": shape, "bytes": g["bytes"], "count": g["count"]})
    return out


def cache_text(cache: Any) -> str:
    """A short text repr: counts, total bytes and the hook groups (not every key)."""
    groups = cache_groups(cache)
    total = sum(g["bytes"] for g in groups)
    names = ", ".join(g["hook"] for g in groups[:12]) + (", ..." if len(groups) > 12 else "")
    batch = "" if cache.has_batch_dim else ", batch dim removed"
    return (f"ActivationCache({len(cache.cache_dict)} activations in {len(groups)} hook groups, "
            f"{format_bytes(total)}{batch}: {names}) — cache.keys() lists every name")


def cache_html(cache: Any) -> str:
    """``ActivationCache._repr_html_``: hook groups x layers, shapes and bytes."""
    groups = cache_groups(cache)
    total = sum(g["bytes"] for g in groups)
    rows = [(g["hook"], g["layers"], g["shape"], format_bytes(g["bytes"])) for g in groups]
    rows.append(("total", "", f"{len(cache.cache_dict)} activations", format_bytes(total)))
    return _table(rows, header=("hook", "layers", "shape", "bytes"), caption="ActivationCache")


# --------------------------------------------------------------------------------------------
# HookedTransformerConfig
# --------------------------------------------------------------------------------------------
_CONFIG_GROUPS = (
    ("model", ("model_name", "original_architecture", "tokenizer_name", "weight_dtype", "dtype", "device")),
    ("sizes", ("n_layers", "d_model", "n_heads", "n_key_value_heads", "d_head", "d_mlp", "d_vocab",
               "d_vocab_out", "n_ctx")),
    ("architecture", ("normalization_type", "eps", "act_fn", "gated_mlp", "positional_embedding_type",
                      "rotary_dim", "rotary_base", "rotary_adjacent_pairs", "use_attn_scale", "attn_scale",
                      "use_local_attn", "window_size", "final_rms", "attn_only", "parallel_attn_mlp")),
    ("tokenization", ("default_prepend_bos", "tokenizer_prepends_bos")),
    ("hooks", ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in", "use_attn_in", "use_hook_tokens",
               "ungroup_grouped_query_attention")),
)


def _plain(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def config_html(cfg: Any) -> str:
    """``HookedTransformerConfig._repr_html_``: the main fields grouped, then every other field."""
    d = cfg.to_dict()
    shown = set()
    rows = []
    for group, keys in _CONFIG_GROUPS:
        items = [(k, _plain(d[k])) for k in keys if k in d]
        shown.update(k for k, _ in items)
        if items:
            rows.append((group, "; ".join(f"{k}={v}" for k, v in items)))
    rest = [(k, _plain(v)) for k, v in d.items() if k not in shown and not k.startswith("_")]
    rows.append(("other", "; ".join(f"{k}={v}" for k, v in rest)))
    return _table(rows, caption="HookedTransformerConfig")
