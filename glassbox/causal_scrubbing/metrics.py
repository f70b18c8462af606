"""Per-input metrics for causal scrubbing.

A metric is called as ``metric(logits, tokens, indices)`` with ``logits`` [B, pos, d_vocab]
(float32 NumPy), ``tokens`` [B, pos] the *reference* inputs' tokens and ``indices`` [B] their
dataset indices (to look up per-input labels), and returns one value per input, shape [B].
The scrubbed expectation is the mean over reference inputs.

A metric that reads the logits at a few positions only may say so with an attribute
``metric.logit_positions = f(n_pos) -> positions`` (or a fixed list): only those positions are
then unembedded (``ln_final`` and the unembedding act per position), and the logits it receives
are zero elsewhere. With GPT-2's vocabulary the unembedding is the largest single matmul of a
scrub, so this makes one-position metrics (logit differences) much cheaper.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

Metric = Callable[[np.ndarray, np.ndarray, np.ndarray], Any]


def _next_token_nll(logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """-log p(tokens[:, p+1] | logits[:, p]) [B, pos-1]; float32 exponentials summed in float64,
    so no float64 copy of the logits is made."""
    x = logits[:, :-1]
    top = x.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(x - top).sum(axis=-1, dtype=np.float64)) + top[..., 0]
    target = np.take_along_axis(x, tokens[:, 1:, None], axis=-1)[..., 0]
    return lse - target


def loss_metric(positions: Optional[Union[int, Sequence[int], slice]] = None) -> Metric:
    """Next-token cross-entropy per input (natural log; log-sum-exp accumulated in float64).

    ``positions`` selects the predicting positions averaged over (position ``p`` predicts token
    ``p + 1``; None = all ``pos - 1`` of them), as in ``lm_cross_entropy_loss(per_token=True)``
    followed by a mean over the selected positions."""

    def loss(logits: np.ndarray, tokens: np.ndarray, indices: np.ndarray) -> np.ndarray:
        if tokens.shape[1] < 2:
            raise ValueError("the loss metric needs sequences of at least 2 tokens")
        nll = _next_token_nll(logits, tokens)  # [B, pos-1]
        if positions is not None:
            nll = nll[:, positions]
            if nll.ndim == 1:
                nll = nll[:, None]
        return nll.mean(axis=1)

    def loss_positions(n_pos: int):
        if positions is None:
            return None
        return np.atleast_1d(np.arange(n_pos - 1)[positions])  # predicting positions

    loss.__name__ = "loss" if positions is None else f"loss(positions={positions!r})"
    loss.logit_positions = loss_positions
    return loss


def logit_diff_metric(correct: Sequence[int], incorrect: Sequence[int], position: int = -1) -> Metric:
    """``logits[correct] - logits[incorrect]`` at ``position`` per input; ``correct`` and
    ``incorrect`` hold one token id per dataset input (indexed by dataset index), e.g. the
    indirect object and the subject of an IOI prompt. Higher is better; the fraction of the
    metric recovered is computed the same way as for a loss."""
    c = np.asarray(correct, dtype=np.int64)
    w = np.asarray(incorrect, dtype=np.int64)
    if c.ndim != 1 or c.shape != w.shape:
        raise ValueError(f"correct and incorrect must be 1-D and of equal length (one token per dataset "
                         f"input), got shapes {c.shape} and {w.shape}")

    def logit_diff(logits: np.ndarray, tokens: np.ndarray, indices: np.ndarray) -> np.ndarray:
        if indices.max() >= c.shape[0]:
            raise ValueError(f"logit_diff_metric has labels for {c.shape[0]} inputs, but dataset index "
                             f"{int(indices.max())} was asked for")
        last = logits[:, position].astype(np.float64)
        rows = np.arange(last.shape[0])
        return last[rows, c[indices]] - last[rows, w[indices]]

    logit_diff.__name__ = "logit_diff"
    logit_diff.logit_positions = lambda n_pos: [position]
    return logit_diff


def resolve_metric(metric: Any) -> Metric:
    """``"loss"`` -> :func:`loss_metric`; a callable is used as is."""
    if isinstance(metric, str):
        if metric == "loss":
            return loss_metric()
        raise ValueError(f"metric must be 'loss' or a function metric(logits, tokens, indices) -> [batch], "
                         f"got {metric!r}")
    if not callable(metric):
        raise TypeError(f"metric must be 'loss' or a callable, got {type(metric).__name__}")
    return metric


def call_metric(metric: Metric, logits: np.ndarray, tokens: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Call ``metric`` and check it gave one finite-typed value per input."""
    out = metric(logits, tokens, indices)
    if hasattr(out, "detach") and hasattr(out, "numpy"):
        out = out.detach().cpu().numpy()
    arr = np.asarray(out, dtype=np.float64)
    if arr.shape != (logits.shape[0],):
        raise ValueError(f"metric {getattr(metric, '__name__', metric)!r} returned shape {arr.shape} for a "
                         f"batch of {logits.shape[0]} inputs; it must return one value per input, "
                         f"shape ({logits.shape[0]},)")
    return arr
