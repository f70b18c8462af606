"""Choosing the next token from final-position logits: ``utils.sample_logits``.

TransformerLens's semantics and order of operations, on logits [batch, d_vocab]:

1. ``temperature == 0``: greedy (argmax), after the repetition penalty if one is given.
2. Repetition penalty (Hugging Face style; only with ``tokens``): for every token id that occurs
   in ``tokens[b]``, a positive logit is divided by ``repetition_penalty``, a negative one
   multiplied by it.
3. Division by ``temperature``.
4. Frequency penalty (only if ``freq_penalty > 0``; needs ``tokens``): ``freq_penalty`` times the
   number of occurrences of each id in ``tokens[b]`` is subtracted (after the temperature).
5. ``top_k`` (clamped to the vocabulary): logits below the k-th largest become -inf. Otherwise
   ``top_p`` (nucleus): keep the most likely tokens up to and including the first whose
   cumulative probability exceeds ``top_p``. ``top_k`` takes precedence when both are given.
6. One draw per row from the softmax of what is left.

Random draws. With **torch** logits (the caller works in torch) every step is a torch operation
and the draw is ``torch.distributions.Categorical(logits=...).sample()`` on float32 logits, the
call TransformerLens makes: after ``torch.manual_seed(s)`` the same logits give the same tokens as
``transformer_lens.utils.sample_logits``. With **NumPy** logits the draw uses a NumPy
``Generator`` (``rng``; a fresh unseeded one if omitted): reproducible for a given seed, but not
the same tokens as TransformerLens's torch draws.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from glassbox.arrays import get_torch, is_torch, to_numpy

__all__ = ["sample_logits"]


def _check(final_logits: Any, top_k: Optional[int], top_p: Optional[float], temperature: float) -> None:
    shape = tuple(final_logits.shape)
    if len(shape) != 2:
        raise ValueError(f"final_logits must have shape [batch, d_vocab], got {shape}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be a positive int, got {top_k}")
    if top_k is None and top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def sample_logits(
    final_logits: Any,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    temperature: float = 1.0,
    freq_penalty: float = 0.0,
    repetition_penalty: float = 1.0,
    tokens: Any = None,
    rng: Optional[np.random.Generator] = None,
) -> Any:
    """Next token ids [batch] (int64) from final-position logits [batch, d_vocab].

    See the module docstring for the order of operations. ``tokens`` [batch, pos]: the sequence
    so far, for the repetition and frequency penalties. torch logits give a torch tensor drawn
    with torch's global RNG (TransformerLens's draws for the same seed); NumPy logits a NumPy
    array drawn from ``rng``.
    """
    _check(final_logits, top_k, top_p, temperature)
    if freq_penalty > 0 and temperature != 0.0:
        if tokens is None:
            raise ValueError("freq_penalty needs tokens (the sequence so far)")
        if len(tuple(tokens.shape)) != 2:
            raise ValueError(f"tokens must have shape [batch, pos] for freq_penalty, got {tuple(tokens.shape)}")
    if is_torch(final_logits):
        return _sample_torch(final_logits, top_k, top_p, temperature, freq_penalty, repetition_penalty, tokens)
    return _sample_numpy(np.asarray(final_logits), top_k, top_p, temperature, freq_penalty,
                         repetition_penalty, tokens, rng)


# --------------------------------------------------------------------------------- torch
def _sample_torch(logits: Any, top_k, top_p, temperature, freq_penalty, repetition_penalty, tokens) -> Any:
    torch = get_torch()
    if tokens is not None and not is_torch(tokens):
        tokens = torch.as_tensor(np.asarray(to_numpy(tokens), dtype=np.int64))
    if repetition_penalty != 1.0 and tokens is not None:
        logits = logits.clone()
        for b in range(logits.shape[0]):
            seen = tokens[b].unique()
            x = logits[b, seen]
            logits[b, seen] = torch.where(x > 0, x / repetition_penalty, x * repetition_penalty)
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if freq_penalty > 0:
        V = logits.shape[-1]
        for b in range(logits.shape[0]):
            logits[b] = logits[b] - freq_penalty * torch.bincount(tokens[b], minlength=V)
    if top_k is not None:
        k = min(int(top_k), logits.shape[-1])
        kth = logits.topk(k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    elif top_p is not None:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        past = cum > top_p
        drop = torch.zeros_like(past)
        drop[..., 1:] = past[..., :-1]  # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.distributions.categorical.Categorical(logits=logits.to(torch.float32)).sample()


# --------------------------------------------------------------------------------- numpy
def _sample_numpy(logits: np.ndarray, top_k, top_p, temperature, freq_penalty, repetition_penalty, tokens,
                  rng: Optional[np.random.Generator]) -> np.ndarray:
    x = logits.astype(np.float64, copy=True)
    B, V = x.shape
    toks = None if tokens is None else np.asarray(to_numpy(tokens), dtype=np.int64)
    if repetition_penalty != 1.0 and toks is not None:
        for b in range(B):
            seen = np.unique(toks[b])
            row = x[b, seen]
            x[b, seen] = np.where(row > 0, row / repetition_penalty, row * repetition_penalty)
    if temperature == 0.0:
        return x.argmax(-1).astype(np.int64)
    x /= temperature
    if freq_penalty > 0:
        for b in range(B):
            x[b] -= freq_penalty * np.bincount(toks[b], minlength=V)[:V]
    if top_k is not None:
        k = min(int(top_k), V)
        kth = np.partition(x, V - k, axis=-1)[:, V - k: V - k + 1]
        x = np.where(x < kth, -np.inf, x)
    elif top_p is not None:
        order = np.argsort(-x, axis=-1, kind="stable")
        sx = np.take_along_axis(x, order, -1)
        p = np.exp(sx - sx[:, :1])
        cum = np.cumsum(p / p.sum(-1, keepdims=True), -1)
        drop_sorted = np.zeros_like(cum, dtype=bool)
        drop_sorted[:, 1:] = cum[:, :-1] > top_p
        drop = np.empty_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, -1)
        x = np.where(drop, -np.inf, x)
    rng = rng if rng is not None else np.random.default_rng()
    p = np.exp(x - x.max(-1, keepdims=True))
    cum = np.cumsum(p, -1)
    u = rng.random(B) * cum[:, -1]
    # first index whose cumulative mass exceeds u: never a -inf (zero-probability) entry
    return np.array([np.searchsorted(cum[b], u[b], side="right") for b in range(B)], dtype=np.int64).clip(0, V - 1)
