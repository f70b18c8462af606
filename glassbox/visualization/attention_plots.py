"""Static matplotlib heatmaps of attention patterns; each returns the Figure.

Built on :class:`matplotlib.figure.Figure` (no pyplot state). Token strings are printed
literally: control characters escaped, ``$`` escaped so mathtext does not start.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

from glassbox.arrays import to_numpy


def _label(s: str) -> str:
    out = repr(s)[1:-1] if any(ord(c) < 32 or ord(c) == 127 for c in s) else s
    return out.replace("$", r"\$")


def _pattern2d(pattern: Any, what: str) -> np.ndarray:
    arr = np.asarray(to_numpy(pattern), np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be one head's pattern [query_pos, key_pos], got shape {tuple(arr.shape)}")
    return arr


def _tokens(tokens: Optional[Sequence[str]], n_k: int) -> Optional[list]:
    if tokens is None:
        return None
    tokens = [str(t) for t in tokens]
    if len(tokens) != n_k:
        raise ValueError(f"tokens has {len(tokens)} strings for {n_k} key positions")
    return tokens


def _masked(arr: np.ndarray) -> np.ndarray:
    """Causally masked cells (future keys, all zero) become NaN so they draw as background."""
    n_q, n_k = arr.shape
    future = np.arange(n_k)[None, :] > np.arange(n_q)[:, None] + (n_k - n_q)
    if not arr[future].any():
        arr = arr.copy()
        arr[future] = np.nan
    return arr


def plot_attention_pattern(
    pattern: Any,
    tokens: Optional[Sequence[str]] = None,
    *,
    title: Optional[str] = None,
    ax: Any = None,
    cmap: str = "Blues",
    vmax: Optional[float] = 1.0,
) -> Any:
    """One head's pattern [query_pos, key_pos] as a heatmap: queries on rows, keys on columns.

    Args:
        tokens: one string per key position (queries are the last ``query_pos`` of them).
        vmax: top of the colour scale (None: the pattern's maximum).
        ax: draw into this Axes instead of a new figure.

    Example:
        >>> fig = plot_attention_pattern(cache["pattern", 5][0, 1], model.to_str_tokens(tokens))  # doctest: +SKIP
        >>> fig.savefig("L5H1.png")                                                            # doctest: +SKIP
    """
    arr = _pattern2d(pattern, "pattern")
    n_q, n_k = arr.shape
    toks = _tokens(tokens, n_k)
    if ax is None:
        from matplotlib.figure import Figure

        side = min(18.0, max(4.0, 0.28 * max(n_q, n_k) + 2.0))
        fig = Figure(figsize=(side + 1.2, side), layout="constrained")
        ax = fig.add_subplot()
    fig = ax.figure
    im = ax.imshow(np.ma.masked_invalid(_masked(arr)), cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest", aspect="equal")
    ax.set_facecolor("#ececec")
    fig.colorbar(im, ax=ax, label="attention weight", shrink=0.8)
    if toks is not None and max(n_q, n_k) <= 120:
        fs = 8 if max(n_q, n_k) <= 40 else 5
        ax.set_xticks(range(n_k), [_label(t) for t in toks], rotation=90, fontsize=fs)
        ax.set_yticks(range(n_q), [_label(t) for t in toks[n_k - n_q:]], fontsize=fs)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    if title is not None:
        ax.set_title(title)
    return fig


def plot_attention_heads(
    patterns: Any,
    tokens: Optional[Sequence[str]] = None,
    *,
    head_labels: Optional[Sequence[str]] = None,
    ncols: Optional[int] = None,
    title: Optional[str] = None,
    cmap: str = "Blues",
) -> Any:
    """Every head of a layer, [head, query_pos, key_pos], as a grid of small heatmaps (one colour
    scale, 0 to 1). Token labels are drawn on the outer axes when there are at most 24.

    Example:
        >>> fig = plot_attention_heads(cache["pattern", 5][0], model.to_str_tokens(tokens))  # doctest: +SKIP
    """
    from matplotlib.figure import Figure

    arr = np.asarray(to_numpy(patterns), np.float64)
    if arr.ndim != 3:
        raise ValueError(f"patterns must be one layer's [head, query_pos, key_pos], got shape {tuple(arr.shape)}")
    n_h, n_q, n_k = arr.shape
    toks = _tokens(tokens, n_k)
    labels = [f"H{h}" for h in range(n_h)] if head_labels is None else [str(s) for s in head_labels]
    if len(labels) != n_h:
        raise ValueError(f"head_labels has {len(labels)} names for {n_h} heads")
    ncols = ncols or int(math.ceil(math.sqrt(n_h)))
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")
    nrows = int(math.ceil(n_h / ncols))
    show = toks is not None and max(n_q, n_k) <= 24
    cell = 2.6 if show else 2.0
    fig = Figure(figsize=(cell * ncols + 1.0, cell * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    im = None
    for h in range(nrows * ncols):
        ax = axes[h // ncols, h % ncols]
        if h >= n_h:
            ax.set_axis_off()
            continue
        im = ax.imshow(np.ma.masked_invalid(_masked(arr[h])), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_facecolor("#ececec")
        ax.set_title(labels[h], fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if show and h // ncols == nrows - 1 or show and h + ncols >= n_h:
            ax.set_xticks(range(n_k), [_label(t) for t in toks], rotation=90, fontsize=5)
        if show and h % ncols == 0:
            ax.set_yticks(range(n_q), [_label(t) for t in toks[n_k - n_q:]], fontsize=5)
    fig.colorbar(im, ax=axes, label="attention weight", shrink=0.6)
    if title is not None:
        fig.suptitle(title)
    return fig


__all__ = ["plot_attention_pattern", "plot_attention_heads"]
