"""Attention patterns for the views: taken from a cache or an array, checked, and encoded compactly.

Encoding (what the HTML view embeds): each weight is rounded to ``digits`` decimals, i.e. to an
integer ``round(w * 10**digits)``, and the integers are written as unsigned LEB128 varints (7 bits
per byte: a weight below 0.128 at 3 digits takes one byte, any other two), row by row, query by
query, head by head, layer by layer. For causal patterns only the keys a query can see
(``k <= q + n_keys - n_queries``) are stored. The bytes are base64 text in the page; per-layer
byte offsets let the page decode one layer at a time.
"""
from __future__ import annotations

import base64
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from glassbox.arrays import is_torch, to_numpy

MAX_DIGITS = 5


def patterns_from_cache(cache: Any, layers: Optional[Sequence[int]], batch: int) -> Tuple[np.ndarray, List[int]]:
    """``cache["pattern", l]`` for the chosen layers → ([n_layers, head, q, k] float32, layers)."""
    L = cache.model.cfg.n_layers
    have = [l for l in range(L) if f"blocks.{l}.attn.hook_pattern" in cache]
    if not have:
        raise ValueError("the cache holds no attention patterns (blocks.{l}.attn.hook_pattern); "
                         "run run_with_cache without a names_filter that drops them")
    if layers is None:
        layers = have
    else:
        layers = [layers] if isinstance(layers, (int, np.integer)) else list(layers)
        out = []
        for l in layers:
            if not isinstance(l, (int, np.integer)) or isinstance(l, bool) or not -L <= int(l) < L:
                raise ValueError(f"layers must be layer indices in [-{L}, {L}), got {l!r}")
            l = int(l) % L
            if l not in have:
                raise ValueError(f"layer {l}'s attention pattern (blocks.{l}.attn.hook_pattern) is not in the cache")
            out.append(l)
        layers = out
    mats = []
    for l in layers:
        p = np.asarray(to_numpy(cache[f"blocks.{l}.attn.hook_pattern"]), np.float32)
        if cache.has_batch_dim:
            if not -p.shape[0] <= batch < p.shape[0]:
                raise ValueError(f"batch={batch} is out of range for a cache of batch size {p.shape[0]}")
            p = p[batch]
        mats.append(p)
    return np.stack(mats), layers


def patterns_from_array(patterns: Any) -> Tuple[np.ndarray, List[int]]:
    """[layer, head, q, k], [head, q, k] (one layer) or a list of per-layer [head, q, k]."""
    if isinstance(patterns, (list, tuple)):
        mats = [np.asarray(to_numpy(p), np.float32) for p in patterns]
        shapes = {m.shape for m in mats}
        if not mats or len(shapes) != 1 or mats[0].ndim != 3:
            raise ValueError(f"a list of patterns must hold [head, query_pos, key_pos] arrays of one shape, got shapes {sorted(shapes)}")
        arr = np.stack(mats)
    else:
        if not (is_torch(patterns) or isinstance(patterns, np.ndarray)):
            raise TypeError(f"patterns must be an ActivationCache, an array or a list of arrays, got {type(patterns).__name__}")
        arr = np.asarray(to_numpy(patterns), np.float32)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise ValueError(f"patterns must have shape [layer, head, query_pos, key_pos] or [head, query_pos, key_pos], got {tuple(arr.shape)}")
    return arr, list(range(arr.shape[0]))


def check_patterns(arr: np.ndarray) -> np.ndarray:
    """Weights in [0, 1]; NaN (fully masked rows) become 0. Returns a float32 copy."""
    if arr.ndim != 4 or 0 in arr.shape:
        raise ValueError(f"patterns must be a non-empty [layer, head, query_pos, key_pos] array, got {tuple(arr.shape)}")
    if arr.shape[2] > arr.shape[3]:
        raise ValueError(f"patterns have more query positions ({arr.shape[2]}) than key positions ({arr.shape[3]})")
    out = np.nan_to_num(np.asarray(arr, np.float32), nan=0.0)
    lo, hi = float(out.min()), float(out.max())
    if lo < -1e-6 or hi > 1 + 1e-3 or not np.isfinite(out).all():
        raise ValueError(f"patterns must be attention weights in [0, 1] (after softmax), got values in [{lo:.3g}, {hi:.3g}]; "
                         f"for scores use hook_attn_scores with your own softmax")
    return np.clip(out, 0.0, 1.0)


def is_causal(q: np.ndarray, n_q: int, n_k: int) -> bool:
    """True if every stored key beyond each query's horizon is 0 (quantised)."""
    off = n_k - n_q
    rows = np.arange(n_q)[:, None]
    cols = np.arange(n_k)[None, :]
    return not q[..., cols > rows + off].any()


def _varint(values: np.ndarray) -> bytes:
    """Unsigned LEB128 of non-negative ints < 2**21 (vectorised)."""
    v = values.astype(np.uint32).ravel()
    n = np.where(v < 1 << 7, 1, np.where(v < 1 << 14, 2, 3))
    out = np.zeros(int(n.sum()), np.uint8)
    start = np.concatenate([[0], np.cumsum(n)[:-1]])
    for byte in range(3):
        sel = n > byte
        chunk = (v[sel] >> (7 * byte)) & 0x7F
        more = n[sel] > byte + 1
        out[start[sel] + byte] = (chunk | (more.astype(np.uint32) << 7)).astype(np.uint8)
    return out.tobytes()


def encode(patterns: np.ndarray, digits: int) -> dict:
    """Quantise and varint-encode checked patterns [layer, head, q, k] (see module docstring).

    Returns ``{"scale", "causal", "data" (base64 str), "offsets" (byte offset per layer + end)}``."""
    if not isinstance(digits, (int, np.integer)) or isinstance(digits, bool) or not 1 <= digits <= MAX_DIGITS:
        raise ValueError(f"digits must be an int in [1, {MAX_DIGITS}], got {digits!r}")
    scale = 10 ** int(digits)
    q = np.rint(patterns.astype(np.float64) * scale).astype(np.int64)
    n_l, n_h, n_q, n_k = q.shape
    causal = is_causal(q, n_q, n_k)
    if causal:
        mask = np.arange(n_k)[None, :] <= np.arange(n_q)[:, None] + (n_k - n_q)
    chunks, offsets, pos = [], [0], 0
    for l in range(n_l):
        layer = q[l][:, mask] if causal else q[l].reshape(n_h, -1)  # row-major: head, query, key
        b = _varint(layer)
        chunks.append(b)
        pos += len(b)
        offsets.append(pos)
    return {"scale": scale, "causal": bool(causal), "data": base64.b64encode(b"".join(chunks)).decode("ascii"),
            "offsets": offsets}


def decode(enc: dict, shape: Tuple[int, int, int, int]) -> np.ndarray:
    """Inverse of :func:`encode` (for tests): → [layer, head, q, k] float32 (rounded weights)."""
    raw = np.frombuffer(base64.b64decode(enc["data"]), np.uint8)
    vals, v, shift = [], 0, 0
    for byte in raw.tolist():
        v |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            vals.append(v)
            v, shift = 0, 0
    n_l, n_h, n_q, n_k = shape
    out = np.zeros(shape, np.float32)
    it = iter(vals)
    for l in range(n_l):
        for h in range(n_h):
            for qi in range(n_q):
                kmax = min(n_k, qi + n_k - n_q + 1) if enc["causal"] else n_k
                for k in range(kmax):
                    out[l, h, qi, k] = next(it) / enc["scale"]
    if next(it, None) is not None:
        raise ValueError("attention data has trailing values")
    return out


__all__ = ["patterns_from_cache", "patterns_from_array", "check_patterns", "encode", "decode", "MAX_DIGITS"]
