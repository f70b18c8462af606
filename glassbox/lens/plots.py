"""Matplotlib plots of a :class:`~glassbox.lens.result.LensResult`; each returns the Figure.

Figures are built with :class:`matplotlib.figure.Figure` (not ``pyplot``), so nothing is left in
pyplot's global state and a notebook shows the returned figure once. Save with
``fig.savefig("lens.png")``; in Jupyter the returned figure displays itself.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np

METRICS = ("rank", "prob", "logprob", "kl", "entropy")


def _figure(figsize, ax=None):
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def plain(s: str) -> str:
    """A token string as matplotlib prints it literally: control characters escaped, ``$``
    escaped so mathtext does not start."""
    out = repr(s)[1:-1] if any(ord(c) < 32 for c in s) else s
    return out.replace("$", r"\$")


def _position_labels(res: Any, b: int) -> list:
    pos = res.positions
    if res.str_tokens is None:
        return [str(int(p)) for p in pos]
    return [f"{plain(res.str_tokens[b][int(p)])} ·{int(p)}" for p in pos]


def _metric(res: Any, metric: str, target: int) -> tuple:
    A = res._arrays
    T = len(res.target_names)
    if metric in ("rank", "prob", "logprob"):
        if T == 0:
            raise ValueError(f"metric={metric!r} needs a target; this result was computed with target=None")
        if not -T <= target < T:
            raise ValueError(f"target must index the {T} targets {res.target_names}, got {target}")
        key = {"rank": "target_ranks", "prob": "target_probs", "logprob": "target_logprobs"}[metric]
        data = A[key][..., target].astype(np.float64)
        if metric == "rank":
            data = np.where(data < 0, np.nan, data)
        return data, f"{metric} of {res.target_names[target]}"
    if metric in ("kl", "entropy"):
        return A[metric].astype(np.float64), {"kl": "KL(final || lens) [nats]", "entropy": "entropy [nats]"}[metric]
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def plot_lens_heatmap(
    res: Any,
    metric: str = "rank",
    *,
    target: int = 0,
    batch: int = 0,
    annotate: Optional[str] = "auto",
    cmap: Optional[str] = None,
    ax: Any = None,
    title: Optional[str] = None,
) -> Any:
    """Components (rows, in order) x positions (columns) heatmap of one metric.

    Args:
        metric: ``"rank"`` (of the target; log colour scale, dark = top-1), ``"prob"``,
            ``"logprob"``, ``"kl"`` or ``"entropy"``.
        target: which target (index into ``res.target_names``).
        batch: which batch item.
        annotate: ``"top"`` writes each cell's top-1 token, ``"value"`` the metric, None nothing;
            ``"auto"``: ``"top"`` when there are at most 800 cells.
        ax: draw into this Axes instead of a new figure.

    Returns:
        the matplotlib Figure.
    """
    from matplotlib.colors import LogNorm, Normalize

    b = res._batch(batch)
    data, what = _metric(res, metric, target)
    data = data[:, b]  # [n, pos]
    n, P = data.shape
    fig, ax = _figure((min(40.0, max(6.0, 0.62 * P + 2.5)), min(40.0, max(3.0, 0.3 * n + 1.6))), ax)
    if metric == "rank":
        finite = data[np.isfinite(data)]
        vmax = max(2.0, float(finite.max()) + 1) if finite.size else 2.0
        norm, shown, cmap = LogNorm(vmin=1, vmax=vmax), data + 1, cmap or "viridis_r"
        label = f"{what} + 1 (log scale; 1 = top-1)"
    elif metric == "prob":
        norm, shown, cmap, label = Normalize(0, 1), data, cmap or "Blues", what
    else:
        finite = data[np.isfinite(data)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        norm, shown, cmap, label = Normalize(lo, hi if hi > lo else lo + 1), data, cmap or ("magma_r" if metric == "kl" else "viridis"), what
    im = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    fig.colorbar(im, ax=ax, label=label)
    ax.set_yticks(range(n), [plain(s) for s in res.labels], fontsize=8 if n < 40 else 6)
    ax.set_xticks(range(P), _position_labels(res, b), rotation=60, ha="right", fontsize=8 if P < 40 else 6)
    ax.set_xlabel("position")
    ax.set_ylabel("component")
    if annotate == "auto":
        annotate = "top" if n * P <= 800 else None
    if annotate not in (None, "top", "value"):
        raise ValueError(f"annotate must be 'auto', 'top', 'value' or None, got {annotate!r}")
    if annotate is not None:
        if annotate == "top":
            ids = res._arrays["top_tokens"][:, b, :, 0]
            strs = np.asarray(res._decode(ids.reshape(-1)), dtype=object).reshape(ids.shape)
            texts = [[plain(strs[i, j])[:8] for j in range(P)] for i in range(n)]
        else:
            texts = [["" if not np.isfinite(v) else (f"{int(v)}" if metric == "rank" else f"{v:.2g}") for v in row] for row in data]
        rgba = im.to_rgba(np.ma.masked_invalid(shown))
        for i in range(n):
            for j in range(P):
                lum = 0.299 * rgba[i, j, 0] + 0.587 * rgba[i, j, 1] + 0.114 * rgba[i, j, 2]
                ax.text(j, i, texts[i][j], ha="center", va="center", fontsize=6,
                        color="white" if lum < 0.5 else "black")
    ax.set_title(title if title is not None else f"{res.what}: {what}" + (f" (batch {b})" if res.has_batch_dim else ""))
    return fig


def plot_lens_lines(
    res: Any,
    metrics: Union[str, Sequence[str]] = ("prob", "rank", "kl"),
    *,
    pos: int = -1,
    batch: int = 0,
    title: Optional[str] = None,
) -> Any:
    """Line plots over the components (x axis, in order) at one position: one panel per metric,
    one line per target (``rank`` on a log axis).

    Args:
        metrics: one or several of ``"prob"``, ``"logprob"``, ``"rank"``, ``"kl"``,
            ``"entropy"``.
        pos: index into ``res.positions`` (default: the last).
        batch: which batch item.

    Returns:
        the matplotlib Figure.
    """
    from matplotlib.figure import Figure

    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if not metrics:
        raise ValueError("metrics must name at least one metric")
    for m in metrics:
        if m not in METRICS:
            raise ValueError(f"metrics must be among {METRICS}, got {m!r}")
    T = len(res.target_names)
    if T == 0:
        metrics = [m for m in metrics if m in ("kl", "entropy")] or ["kl"]
    b, p = res._batch(batch), res._pos(pos)
    n = len(res.labels)
    fig = Figure(figsize=(min(30.0, max(6.0, 0.28 * n + 2.0)), 2.3 * len(metrics) + 0.8), layout="constrained")
    axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    x = np.arange(n)
    for ax, m in zip(axes, metrics):
        if m in ("kl", "entropy"):
            data, what = _metric(res, m, 0)
            ax.plot(x, data[:, b, p], marker="o", ms=3, color="C3" if m == "kl" else "C2")
            ax.set_ylabel({"kl": "KL [nats]", "entropy": "H [nats]"}[m])
        else:
            for t in range(T):
                data, _ = _metric(res, m, t)
                y = data[:, b, p] + (1 if m == "rank" else 0)
                ax.plot(x, y, marker="o", ms=3, label=res.target_names[t])
            if m == "rank":
                ax.set_yscale("log")
                ax.set_ylabel("rank + 1")
            else:
                ax.set_ylabel({"prob": "p(target)", "logprob": "log p(target)"}[m])
            if T > 1 or m == metrics[0]:
                ax.legend(fontsize=7, loc="best")
        ax.grid(True, alpha=0.3)
    axes[-1].set_xticks(x, [plain(s) for s in res.labels], rotation=90, fontsize=7 if n < 60 else 5)
    axes[-1].set_xlabel("component")
    axes[0].set_title(title if title is not None else f"{res.what} — {res._header(b, p)}")
    return fig


def plot_lens_heads(
    res: Any,
    metric: str = "rank",
    *,
    target: int = 0,
    pos: int = -1,
    batch: int = 0,
    ax: Any = None,
    title: Optional[str] = None,
) -> Any:
    """Layers (rows) x heads (columns) heatmap of one metric at one position, for a result of
    ``component_lens(..., components="heads")`` (labels ``"L{l}H{h}"``).

    Returns:
        the matplotlib Figure.
    """
    import re

    from matplotlib.colors import LogNorm, Normalize

    cells = [re.fullmatch(r"L(\d+)H(\d+)", s) for s in res.labels]
    if not cells or not all(cells):
        raise ValueError("plot_lens_heads needs a heads result (labels 'L{l}H{h}', from components='heads')")
    lh = [(int(m.group(1)), int(m.group(2))) for m in cells]
    layers = sorted({l for l, _ in lh})
    n_heads = max(h for _, h in lh) + 1
    b, p = res._batch(batch), res._pos(pos)
    data, what = _metric(res, metric, target)
    grid = np.full((len(layers), n_heads), np.nan)
    row = {l: i for i, l in enumerate(layers)}
    for i, (l, h) in enumerate(lh):
        grid[row[l], h] = data[i, b, p]
    fig, ax = _figure((min(30.0, max(5.0, 0.45 * n_heads + 2.5)), min(30.0, max(3.0, 0.32 * len(layers) + 1.6))), ax)
    if metric == "rank":
        finite = grid[np.isfinite(grid)]
        vmax = max(2.0, float(finite.max()) + 1) if finite.size else 2.0
        im = ax.imshow(np.ma.masked_invalid(grid + 1), aspect="auto", cmap="viridis_r", norm=LogNorm(1, vmax))
        label = f"{what} + 1 (log scale)"
    else:
        finite = grid[np.isfinite(grid)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        norm = Normalize(0, 1) if metric == "prob" else Normalize(lo, hi if hi > lo else lo + 1)
        im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="Blues" if metric == "prob" else "viridis", norm=norm)
        label = what
    fig.colorbar(im, ax=ax, label=label)
    ax.set_yticks(range(len(layers)), [str(l) for l in layers], fontsize=8)
    ax.set_xticks(range(n_heads), [str(h) for h in range(n_heads)], fontsize=8)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title if title is not None else f"{what} per head — {res._header(b, p)}")
    return fig


__all__ = ["plot_lens_heatmap", "plot_lens_lines", "plot_lens_heads", "METRICS", "plain"]
