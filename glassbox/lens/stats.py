"""Lens statistics over the vocabulary, computed in blocks so the full logits need not be kept.

For each read-out vector: the top-k tokens and their probabilities, the probability, log-probability,
logit and rank of target tokens, the entropy, and the KL divergence from the final distribution,
``KL(final || lens) = sum_v p_final(v) (log p_final(v) - log p_lens(v))`` (the direction used by
the logit-lens and tuned-lens literature: how many nats the lens loses against the model's
output). Ranks count the tokens with a strictly larger logit (0 = top-1).

Logits are float32 (as the model's); log-softmax subtracts the row maximum and sums ``exp`` in
float64; KL and entropy are sums of float32 terms accumulated in float64, returned as float32.
"""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np

#: floats per logits block ([components, positions, d_vocab]); 8M floats = 32 MB
BLOCK_FLOATS = 1 << 23


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of float32 logits (float64 sum of exponentials) → float32."""
    return softmax_parts(logits)[0]


def softmax_parts(logits: np.ndarray) -> tuple:
    """Row-wise ``(log_softmax, softmax)`` of float32 logits, one ``exp`` pass, float32."""
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    s = e.sum(-1, keepdims=True, dtype=np.float64)
    z -= np.log(s).astype(np.float32)
    e *= (1.0 / s).astype(np.float32)
    return z, e


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest logits along the last axis, largest first (ties: lower id
    first)."""
    V = logits.shape[-1]
    k = min(k, V)
    idx = np.argpartition(logits, V - k, axis=-1)[..., V - k:]
    vals = np.take_along_axis(logits, idx, axis=-1)
    order = np.lexsort((idx, -vals), axis=-1)
    return np.take_along_axis(idx, order, axis=-1)


def lens_stats(
    logits_fn: Callable[[slice, slice], np.ndarray],
    n: int,
    N: int,
    final_logits_fn: Callable[[slice], np.ndarray],
    targets: np.ndarray,
    k: int,
    d_vocab: int,
    keep_logits: bool = False,
) -> Dict[str, np.ndarray]:
    """Statistics of ``n`` read-outs at ``N`` (flattened batch x position) positions.

    Args:
        logits_fn: ``(component_slice, position_slice)`` → lens logits [n', N', d_vocab] float32.
        final_logits_fn: ``position_slice`` → final logits [N', d_vocab] (the reference of KL).
        targets: [N, T] int64 token ids, -1 where a position has no target.
        k: number of top tokens.
        keep_logits: also return the lens logits [n, N, d_vocab] (memory: n*N*d_vocab*4 bytes).

    Returns:
        dict of ``top_tokens`` [n, N, k] int64, ``top_probs`` [n, N, k], ``target_logits``,
        ``target_logprobs``, ``target_probs`` [n, N, T] float32, ``target_ranks`` [n, N, T] int64
        (NaN / -1 where there is no target), ``kl``, ``entropy`` [n, N] float32, and
        ``logits`` if asked.
    """
    T = targets.shape[1]
    k = min(int(k), d_vocab)
    out = {
        "top_tokens": np.zeros((n, N, k), np.int64),
        "top_probs": np.zeros((n, N, k), np.float32),
        "target_logits": np.full((n, N, T), np.nan, np.float32),
        "target_logprobs": np.full((n, N, T), np.nan, np.float32),
        "target_probs": np.full((n, N, T), np.nan, np.float32),
        "target_ranks": np.full((n, N, T), -1, np.int64),
        "kl": np.zeros((n, N), np.float32),
        "entropy": np.zeros((n, N), np.float32),
    }
    if keep_logits:
        out["logits"] = np.zeros((n, N, d_vocab), np.float32)
    if n == 0 or N == 0:
        return out
    c = max(1, min(N, 64, BLOCK_FLOATS // d_vocab))  # positions per block
    g = max(1, min(n, BLOCK_FLOATS // (c * d_vocab)))  # components per block
    has_t = targets >= 0
    safe_t = np.where(has_t, targets, 0)
    for p0 in range(0, N, c):
        ps = slice(p0, min(N, p0 + c))
        f_lp, f_p = softmax_parts(np.asarray(final_logits_fn(ps), np.float32))  # [c, V]
        t_idx = safe_t[ps]  # [c, T]
        t_ok = has_t[ps]
        for i0 in range(0, n, g):
            cs = slice(i0, min(n, i0 + g))
            lg = np.asarray(logits_fn(cs, ps), np.float32)  # [g, c, V]
            if keep_logits:
                out["logits"][cs, ps] = lg
            lp, p = softmax_parts(lg)
            top = top_k(lg, k)
            out["top_tokens"][cs, ps] = top
            out["top_probs"][cs, ps] = np.exp(np.take_along_axis(lp, top, axis=-1))
            # float32 products, float64 sums
            out["kl"][cs, ps] = (f_p * (f_lp - lp)).sum(-1, dtype=np.float64)
            out["entropy"][cs, ps] = -(p * lp).sum(-1, dtype=np.float64)
            del p
            tix = np.broadcast_to(t_idx, lg.shape[:-1] + (T,))
            t_logit = np.take_along_axis(lg, tix, axis=-1)  # [g, c, T]
            t_lp = np.take_along_axis(lp, tix, axis=-1)
            ranks = np.empty(t_logit.shape, np.int64)
            for t in range(T):
                ranks[..., t] = (lg > t_logit[..., t:t + 1]).sum(-1)
            ok = np.broadcast_to(t_ok, t_logit.shape)
            out["target_logits"][cs, ps] = np.where(ok, t_logit, np.nan)
            out["target_logprobs"][cs, ps] = np.where(ok, t_lp, np.nan)
            out["target_probs"][cs, ps] = np.where(ok, np.exp(t_lp), np.nan)
            out["target_ranks"][cs, ps] = np.where(ok, ranks, -1)
    return out


__all__ = ["lens_stats", "log_softmax", "softmax_parts", "top_k", "BLOCK_FLOATS"]
