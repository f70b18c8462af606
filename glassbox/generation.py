"""Text generation: ``HookedTransformer.generate`` and ``utils.sample_logits``.

TransformerLens semantics (names, arguments, return types). Hooks attached with ``hooks()`` or
``add_hook`` fire on every step, as in TransformerLens. This version recomputes the whole
sequence at each step (``use_past_kv_cache`` is accepted and ignored): a KV cache in the C
engine is on the roadmap. Results are the same; only the cost per step differs.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Union

import numpy as np

from glassbox.arrays import to_numpy, wants_torch, wrap


def sample_logits(
    final_logits: Any,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    temperature: float = 1.0,
    freq_penalty: float = 0.0,
    repetition_penalty: float = 1.0,
    tokens: Any = None,
    rng: Optional[np.random.Generator] = None,
) -> np.ndarray:
    """Next token ids [batch] from final-position logits [batch, d_vocab].

    ``temperature == 0`` is greedy (argmax). Otherwise: repetition and frequency penalties on
    ``tokens`` (the sequence so far), division by ``temperature``, then ``top_k`` / ``top_p``
    (nucleus) filtering and a draw from the softmax.
    """
    logits = to_numpy(final_logits).astype(np.float64, copy=True)
    if logits.ndim != 2:
        raise ValueError(f"final_logits must be [batch, d_vocab], got shape {logits.shape}")
    if temperature == 0.0:
        return logits.argmax(-1)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if tokens is not None and (repetition_penalty != 1.0 or freq_penalty != 0.0):
        toks = to_numpy(tokens).astype(np.int64)
        for b in range(logits.shape[0]):
            counts = np.bincount(toks[b], minlength=logits.shape[1])[: logits.shape[1]]
            seen = counts > 0
            if repetition_penalty != 1.0:
                row = logits[b]
                row[seen] = np.where(row[seen] > 0, row[seen] / repetition_penalty,
                                     row[seen] * repetition_penalty)
            logits[b] -= freq_penalty * counts
    logits /= temperature
    if top_k is not None and top_k > 0:
        kth = np.sort(logits, axis=-1)[:, -min(top_k, logits.shape[1])][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    if top_p is not None and 0.0 < top_p < 1.0:
        order = np.argsort(-logits, axis=-1)
        sorted_logits = np.take_along_axis(logits, order, -1)
        probs = np.exp(sorted_logits - sorted_logits[:, :1])
        probs /= probs.sum(-1, keepdims=True)
        cum = np.cumsum(probs, -1)
        drop_sorted = cum - probs > top_p  # keep the smallest prefix reaching top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, -1)
        logits = np.where(drop, -np.inf, logits)
    rng = rng or np.random.default_rng()
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.array([rng.choice(probs.shape[1], p=p) for p in probs], dtype=np.int64)


def generate(
    model: Any,
    input: Union[str, List[str], Any] = "",
    max_new_tokens: int = 10,
    stop_at_eos: bool = True,
    eos_token_id: Optional[Union[int, Sequence[int]]] = None,
    do_sample: bool = True,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    temperature: float = 1.0,
    freq_penalty: float = 0.0,
    repetition_penalty: float = 1.0,
    use_past_kv_cache: bool = True,
    prepend_bos: Optional[bool] = None,
    padding_side: Optional[str] = None,
    return_type: Optional[str] = "input",
    verbose: bool = True,
    seed: Optional[int] = None,
) -> Any:
    """Sample ``max_new_tokens`` tokens after ``input`` (see ``HookedTransformer.generate``).

    ``input``: a string, a list of strings (left-padded), or tokens [batch, pos] / [pos].
    ``return_type``: ``"input"`` (the kind that came in), ``"str"``, or ``"tokens"`` (the prompt
    followed by the new tokens, [batch, pos + new]). Rows that reach an EOS token are padded with
    EOS afterwards. ``do_sample=False`` (or ``temperature=0``) is greedy decoding.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if return_type not in ("input", "str", "tokens"):
        raise ValueError(f"return_type must be 'input', 'str' or 'tokens', got {return_type!r}")
    torch_out = wants_torch(input)
    came_as = "str" if isinstance(input, (str, list)) and (isinstance(input, str) or
                                                          all(isinstance(s, str) for s in input)) else "tokens"
    mask = None
    if came_as == "str":
        if model.tokenizer is None:
            raise ValueError("generate from text needs a tokenizer; pass tokens instead")
        side = "left" if isinstance(input, list) and len(input) > 1 else padding_side
        tokens = to_numpy(model.to_tokens(input, prepend_bos=prepend_bos, padding_side=side)).astype(np.int64)
        if isinstance(input, list) and len(input) > 1:
            pad = model.tokenizer.pad_token_id
            mask = np.ones_like(tokens)
            for b in range(tokens.shape[0]):  # left padding: the leading pad run is masked
                n = 0
                while n < tokens.shape[1] - 1 and tokens[b, n] == pad:
                    n += 1
                mask[b, :n] = 0
    else:
        tokens = to_numpy(input).astype(np.int64)
        if tokens.ndim == 1:
            tokens = tokens[None, :]
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, pos] or [pos], got shape {tokens.shape}")
    if eos_token_id is None and stop_at_eos:
        eos_token_id = model.tokenizer.eos_token_id if model.tokenizer is not None else None
        if eos_token_id is None:
            raise ValueError("stop_at_eos needs eos_token_id (the model has no tokenizer to take it from)")
    eos = [] if eos_token_id is None else ([int(eos_token_id)] if np.isscalar(eos_token_id) else [int(e) for e in eos_token_id])
    rng = np.random.default_rng(seed)
    finished = np.zeros(tokens.shape[0], dtype=bool)
    steps = range(max_new_tokens)
    if verbose:
        try:
            from tqdm.auto import tqdm

            steps = tqdm(steps)
        except ImportError:
            pass
    for _ in steps:
        logits = model.forward(tokens, attention_mask=mask)
        final = to_numpy(logits)[:, -1, :]
        if do_sample and temperature != 0.0:
            nxt = sample_logits(final, top_k=top_k, top_p=top_p, temperature=temperature,
                                freq_penalty=freq_penalty, repetition_penalty=repetition_penalty,
                                tokens=tokens, rng=rng)
        else:
            nxt = final.argmax(-1)
        if stop_at_eos and eos:
            nxt = np.where(finished, eos[0], nxt)
            finished |= np.isin(nxt, eos)
        tokens = np.concatenate([tokens, nxt[:, None].astype(np.int64)], axis=1)
        if mask is not None:
            mask = np.concatenate([mask, np.ones((mask.shape[0], 1), mask.dtype)], axis=1)
        if stop_at_eos and eos and finished.all():
            break
    kind = came_as if return_type == "input" else return_type
    if kind == "str":
        texts = [model.tokenizer.decode(_strip_pad(row, m), skip_special_tokens=True)
                 for row, m in zip(tokens, mask if mask is not None else [None] * len(tokens))]
        return texts[0] if len(texts) == 1 else texts
    return wrap(tokens, torch_out)


def _strip_pad(row: np.ndarray, m: Optional[np.ndarray]) -> List[int]:
    return [int(t) for t, keep in zip(row, m if m is not None else [1] * len(row)) if keep]
