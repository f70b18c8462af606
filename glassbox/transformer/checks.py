"""Argument checks for the forward pass, done *before* any conversion or model state change.

Every check raises a ``ValueError`` (or ``TypeError`` for a wrong kind of object) that names the
argument and the offending value, shape or position, and none of them allocates more than the
input's own size: a token array is range-checked in its own dtype before it is widened to int64,
an attention mask is checked for values other than 0/1 before it is cast (casting would turn
``2**32`` into 0 and silently mask a key).

It also holds the opt-in non-finite guard (:class:`FiniteGuard`, used through
:meth:`HookedTransformer.set_check_finite`).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from glassbox.arrays import to_numpy

__all__ = ["RETURN_TYPES", "as_token_array", "check_tokens", "as_attention_mask", "resolve_layer",
           "check_return_type", "logit_positions_array", "NonFiniteActivationError", "FiniteGuard"]

#: the ``return_type`` values ``forward`` accepts
RETURN_TYPES = ("logits", "loss", "both", None)


def as_token_array(x: Any) -> np.ndarray:
    """Token input (tensor / ndarray / list of ints) → an integer ndarray in its own dtype
    (no widening yet), [batch, pos] or [pos]."""
    arr = np.asarray(to_numpy(x))
    if arr.dtype == object:
        raise ValueError("tokens must be a rectangular array of integers")
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.ndim == 3:
            raise ValueError(
                "got a float array of shape [batch, pos, d_model]: pass start_at_layer= to run from a residual stream"
            )
        raise ValueError(f"tokens must be integers, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2):
        raise ValueError(f"tokens must have shape [batch, pos] or [pos], got {tuple(arr.shape)}")
    return arr


def check_tokens(tokens: np.ndarray, d_vocab: int, n_ctx: Optional[int]) -> np.ndarray:
    """Shape, length and id range of ``tokens`` [batch, pos] (any integer dtype), checked in
    that order so that nothing large is computed for an input that is too long; returns the
    tokens as C-contiguous int64."""
    if tokens.ndim != 2:
        raise ValueError(f"tokens must have shape [batch, pos] or [pos], got {tuple(tokens.shape)}")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must be non-empty, got shape {tuple(tokens.shape)}")
    if n_ctx is not None and tokens.shape[1] > n_ctx:
        raise ValueError(f"sequence of {tokens.shape[1]} tokens is longer than n_ctx={n_ctx}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= d_vocab:
        bad = lo if lo < 0 else hi
        where = np.argwhere(tokens == bad)[0]
        raise ValueError(f"token id {bad} at [batch {where[0]}, pos {where[1]}] is out of range for d_vocab={d_vocab}")
    return np.ascontiguousarray(tokens, dtype=np.int64)


def as_attention_mask(mask: Any, shape: Optional[Tuple[int, int]]) -> np.ndarray:
    """An attention mask [batch, pos] (or [pos]) of 0/1 values → int64, checked.

    Accepted: bool, integer and floating dtypes whose values are exactly 0 or 1. Anything else
    (2, -1, 0.5, 2**32, NaN) is a ``ValueError`` naming the first bad value and its position;
    nothing is cast before the check."""
    arr = np.asarray(to_numpy(mask))
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise ValueError(f"attention_mask must hold 0/1 (bool, int or float) values, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise ValueError(f"attention_mask must have shape [batch, pos] or [pos], got {tuple(arr.shape)}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise AssertionError(f"Attention mask shape {tuple(arr.shape)} does not match tokens shape {tuple(shape)}")
    if arr.dtype.kind != "b":
        bad = (arr != 0) & (arr != 1)
        if bad.any():
            b, p = np.argwhere(bad)[0]
            raise ValueError(f"attention_mask values must be 0 or 1; got {arr[b, p]!r} at [batch {b}, pos {p}]")
    return np.ascontiguousarray(arr, dtype=np.int64)


def resolve_layer(value: Optional[int], n_layers: int, name: str, allow_end: bool = True) -> Optional[int]:
    """``start_at_layer`` / ``stop_at_layer``: an int in [-n_layers, n_layers] (negatives count
    from the end) → a layer index in [0, n_layers]; anything else is a ``ValueError`` (TransformerLens
    silently clamps an out-of-range ``stop_at_layer``; glassbox refuses it)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    hi = n_layers if allow_end else n_layers - 1
    if not -n_layers <= int(value) <= hi:
        raise ValueError(f"{name}={value} is out of range for a model with {n_layers} layers "
                         f"(allowed: {-n_layers}..{hi}, or None)")
    v = int(value)
    return v + n_layers if v < 0 else v


def logit_positions_array(positions: Any, batch: int, n_pos: int) -> np.ndarray:
    """``logit_positions`` (the positions whose logits a run computes) as int64 [batch, k].

    Accepted: an int (the same position in every sequence, e.g. ``-1``); a 1-D array of
    ``batch`` ints (one position per sequence, e.g. each prompt's last real token); a 2-D array
    [batch, k] or [1, k] (k positions per sequence, the same for all with [1, k]). Negative
    positions count from the end, as in indexing. Tensors, lists and ndarrays are accepted.
    """
    if isinstance(positions, (bool, np.bool_)):
        raise TypeError(f"logit_positions must be an int or an integer array, got {positions!r}")
    if isinstance(positions, (int, np.integer)):
        arr = np.full((batch, 1), int(positions), dtype=np.int64)
    else:
        try:
            raw = np.asarray(to_numpy(positions))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"logit_positions must be an int or an integer array, got "
                            f"{type(positions).__name__}") from exc
        if raw.dtype.kind not in "iu" and not (raw.size == 0 and raw.dtype.kind == "f"):
            raise TypeError(f"logit_positions must hold integers, got dtype {raw.dtype}")
        if raw.ndim == 1:
            if raw.shape[0] != batch:
                raise ValueError(f"logit_positions as a 1-D array holds one position per sequence: expected "
                                 f"{batch} entries, got {raw.shape[0]} (pass [1, k] for k positions in every "
                                 "sequence)")
            arr = raw.astype(np.int64).reshape(batch, 1)
        elif raw.ndim == 2 and raw.shape[0] in (1, batch):
            arr = np.broadcast_to(raw.astype(np.int64), (batch, raw.shape[1]))
        else:
            raise ValueError(f"logit_positions must be an int, [batch={batch}], [batch, k] or [1, k], "
                             f"got shape {tuple(raw.shape)}")
    bad = (arr < -n_pos) | (arr >= n_pos)
    if bad.any():
        b, j = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"logit_positions[{b}, {j}] = {int(arr[b, j])} is out of range for {n_pos} positions")
    return np.ascontiguousarray(np.where(arr < 0, arr + n_pos, arr))


def check_return_type(return_type: Any) -> None:
    """TransformerLens warns and returns None for an unknown ``return_type``; glassbox raises."""
    if return_type not in RETURN_TYPES:
        raise ValueError(f"return_type={return_type!r} is not one of {list(RETURN_TYPES)}")


# --------------------------------------------------------------------------------------------
# non-finite guard
# --------------------------------------------------------------------------------------------
class NonFiniteActivationError(FloatingPointError, ValueError):
    """Raised by the non-finite guard: ``hook_name``, ``layer`` (None for global points) and the
    first offending ``index`` (batch, pos, ...) are attributes."""

    def __init__(self, hook_name: str, index: Tuple[int, ...], value: float):
        self.hook_name = hook_name
        self.layer = int(hook_name.split(".")[1]) if hook_name.startswith("blocks.") else None
        self.index = tuple(int(i) for i in index)
        self.value = float(value)
        where = f"layer {self.layer}, " if self.layer is not None else ""
        pos = self._position_text(hook_name, self.index)
        super().__init__(f"first non-finite activation at {hook_name!r} ({where}{pos}): {self.value}")

    @staticmethod
    def _position_text(name: str, index: Tuple[int, ...]) -> str:
        if name.endswith(("hook_attn_scores", "hook_pattern")) and len(index) == 4:
            return f"batch {index[0]}, head {index[1]}, query pos {index[2]}, key pos {index[3]}"
        if len(index) >= 2:
            rest = f", index {list(index[2:])}" if len(index) > 2 else ""
            return f"batch {index[0]}, pos {index[1]}{rest}"
        return f"index {list(index)}"


def _first_bad(name: str, arr: np.ndarray) -> Optional[Tuple[Tuple[int, ...], float]]:
    a = np.asarray(to_numpy(arr))
    if name.endswith("hook_attn_scores"):
        bad = np.isnan(a) | (a == np.inf)  # masked scores are -inf by design
    else:
        bad = ~np.isfinite(a)
    if not bad.any():
        return None
    idx = tuple(np.argwhere(bad)[0])
    return idx, float(a[idx])


class FiniteGuard:
    """Collects activations of one run in firing order and finds the first non-finite one.

    Points the engine copies (no Python hook) are checked after the run from their copies;
    points with Python hooks are checked right after their hooks ran (on what the model goes on
    with). The error names the earliest point in firing order either way."""

    def __init__(self, fired: Sequence[str]):
        self.order = {name: i for i, name in enumerate(fired)}
        self.copies: Dict[str, np.ndarray] = {}
        self.first_hooked: Optional[Tuple[int, str, Tuple[int, ...], float]] = None

    def check_hooked(self, name: str, act: Any) -> None:
        bad = _first_bad(name, act)
        if bad is not None:
            rank = self.order.get(name, len(self.order))
            if self.first_hooked is None or rank < self.first_hooked[0]:
                self.first_hooked = (rank, name, bad[0], bad[1])

    def raise_first(self) -> None:
        found: List[Tuple[int, str, Tuple[int, ...], float]] = []
        if self.first_hooked is not None:
            found.append(self.first_hooked)
        for name, arr in sorted(self.copies.items(), key=lambda kv: self.order.get(kv[0], 0)):
            if self.first_hooked is not None and self.order[name] > self.first_hooked[0]:
                break
            bad = _first_bad(name, arr)
            if bad is not None:
                found.append((self.order[name], name, bad[0], bad[1]))
                break
        if found:
            _, name, idx, value = min(found, key=lambda t: t[0])
            raise NonFiniteActivationError(name, idx, value)
