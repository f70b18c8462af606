"""Text generation: ``HookedTransformer.generate`` (TransformerLens's ``generate``).

Each step runs the model, takes the final position's logits, chooses a token
(:func:`glassbox.sampling.sample_logits`: greedy, temperature, top-k, top-p, frequency and
repetition penalties) and appends it. With ``use_past_kv_cache=True`` (the default, as in
TransformerLens) the prompt runs once and every later step runs only the one new position against
a :class:`~glassbox.past_key_value_caching.HookedTransformerKeyValueCache` held in the C engine's
buffers (no recomputation of the prefix, no copy of the cache per step); with ``False`` every step
recomputes the whole sequence. Both give the same tokens up to float32 rounding.

As in TransformerLens:

* Hooks attached with ``model.hooks(...)`` or ``add_hook`` fire at every step. With the KV cache
  they see the new position only (``hook_attn_scores`` / ``hook_pattern`` [batch, head, 1,
  pos_so_far + 1], ``hook_rot_k`` every key); the prompt step sees the whole prompt.
  ``hook_embed`` and ``hook_tokens`` do not fire (TransformerLens's generate embeds the tokens
  itself); ``hook_pos_embed`` does.
* A list of prompts is left-padded; the padding is masked, and positions start at each row's
  first real token. Token input gets the mask ``utils.get_attention_mask`` gives (pad tokens at
  the padding side are masked).
* Rows that produced an EOS keep running and get EOS appended (``eos_token_id``: an int or a
  list; the tokenizer's EOS by default); generation stops early when every row has finished.

Sampling parity: when the caller works in torch (torch tensor or text input with torch
installed), draws use torch's global RNG through the same calls as TransformerLens, so after
``torch.manual_seed(s)`` sampling picks the same tokens as TransformerLens's ``generate`` on the
same weights (barring a draw that lands within float32 rounding of a probability boundary).
``seed=`` (glassbox extra) makes a call reproducible: in torch mode it seeds a forked torch RNG
(the global state is left as it was); with NumPy input it seeds a NumPy ``Generator`` —
reproducible, but not TransformerLens's draws.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from glassbox import utils
from glassbox.arrays import to_numpy, wants_torch, wrap
from glassbox.past_key_value_caching import HookedTransformerKeyValueCache
from glassbox.sampling import sample_logits
from glassbox.utils import USE_DEFAULT_VALUE

__all__ = ["generate", "sample_logits", "GenerateOutput"]

RETURN_TYPES = ("input", "str", "tokens", "embeds")


@dataclass
class GenerateOutput:
    """``output_logits=True`` result when ``transformers`` is not installed (otherwise its
    ``GenerateDecoderOnlyOutput``, as TransformerLens returns): ``sequences`` [batch, pos + new]
    and ``logits``, one [batch, d_vocab_out] array per step."""

    sequences: Any
    logits: Tuple[Any, ...]


def _input_kind(input: Any) -> str:
    if isinstance(input, str):
        return "str"
    if isinstance(input, list) and input and all(isinstance(s, str) for s in input):
        return "str"
    if isinstance(input, (list, tuple)) and not input:
        raise ValueError("generate: input is an empty list")
    arr = np.asarray(to_numpy(input)) if not isinstance(input, list) else np.asarray(input)
    if arr.dtype.kind in "iu" and arr.ndim in (1, 2):
        return "tokens"
    if arr.dtype.kind == "f" and arr.ndim == 3:
        return "embeds"
    raise ValueError(
        "generate: input must be a string, a list of strings, tokens [batch, pos] (integers) or embeddings "
        f"[batch, pos, d_model] (floats); got dtype {arr.dtype} with shape {tuple(arr.shape)}")


def _stop_tokens(model: Any, stop_at_eos: bool, eos_token_id: Any) -> Tuple[List[int], int]:
    """(ids that stop a row, id appended to finished rows), as TransformerLens chooses them."""
    if not stop_at_eos:
        return [], 0
    tok = model.tokenizer
    has_eos = tok is not None and tok.eos_token_id is not None
    if eos_token_id is None:
        if not has_eos:
            raise ValueError("stop_at_eos=True needs eos_token_id (the model has no tokenizer with an EOS token); "
                             "pass eos_token_id= or stop_at_eos=False")
        eos_token_id = tok.eos_token_id
    if isinstance(eos_token_id, (int, np.integer)):
        return [int(eos_token_id)], int(eos_token_id)
    ids = [int(e) for e in eos_token_id]
    if not ids:
        raise ValueError("eos_token_id is an empty sequence")
    return ids, (int(tok.eos_token_id) if has_eos else ids[0])


def _progress(n: int, verbose: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        return range(n)
    return tqdm(range(n), disable=not verbose)


def _torch_rng(seed: Optional[int]):
    if seed is None:
        return contextlib.nullcontext()
    import torch

    @contextlib.contextmanager
    def forked():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield

    return forked()


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
    use_past_kv_cache: bool = True,
    prepend_bos: Optional[bool] = USE_DEFAULT_VALUE,
    padding_side: Optional[str] = USE_DEFAULT_VALUE,
    return_type: Optional[str] = "input",
    verbose: bool = True,
    **generation_kwargs: Any,
) -> Any:
    """Sample up to ``max_new_tokens`` tokens after ``input`` (see the module docstring).

    ``input``: a string, a list of strings (left-padded), tokens [batch, pos] / [pos], or token
    embeddings [batch, pos, d_model]. ``return_type``: ``"input"`` (the kind that came in),
    ``"str"`` (decoded with special tokens skipped; one string for one prompt), ``"tokens"``
    ([batch, pos + new], prompt included; only the new tokens for embedding input) or
    ``"embeds"`` (token embeddings of prompt and new tokens, [batch, pos + new, d_model]).
    ``do_sample=False`` or ``temperature=0`` is greedy. Extra keywords: ``output_logits=True``
    (return ``sequences`` and the per-step final logits, as TransformerLens),
    ``return_dict_in_generate`` (accepted, ignored), and glassbox's ``repetition_penalty``
    (Hugging Face style) and ``seed``; others warn and are ignored, as in TransformerLens.
    """
    output_logits = bool(generation_kwargs.pop("output_logits", False))
    generation_kwargs.pop("return_dict_in_generate", None)
    repetition_penalty = float(generation_kwargs.pop("repetition_penalty", 1.0))
    seed = generation_kwargs.pop("seed", None)
    if generation_kwargs:
        warnings.warn(f"HookedTransformer.generate received unsupported generation kwargs; ignoring: "
                      f"{sorted(generation_kwargs)}", UserWarning)
    if return_type not in RETURN_TYPES:
        raise ValueError(f"return_type must be one of {list(RETURN_TYPES)}, got {return_type!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    kind = _input_kind(input)
    torch_mode = wants_torch(input)
    if return_type == "input":
        return_type = kind
    with utils.LocallyOverridenDefaults(model, prepend_bos=prepend_bos, padding_side=padding_side):
        tokens, embeds, mask = _prepare_input(model, input, kind, prepend_bos, padding_side)
        B, P = (tokens if tokens is not None else embeds).shape[:2]
        if model.cfg.positional_embedding_type == "standard" and P + max_new_tokens > model.cfg.n_ctx:
            raise ValueError(f"a prompt of {P} tokens plus max_new_tokens={max_new_tokens} exceeds the model's "
                             f"context n_ctx={model.cfg.n_ctx}")
        stop_tokens, eos_pad = _stop_tokens(model, stop_at_eos, eos_token_id)
        sampled, step_logits = _loop(model, tokens, embeds, mask, max_new_tokens, use_past_kv_cache, do_sample,
                                     top_k, top_p, temperature, freq_penalty, repetition_penalty, stop_tokens,
                                     eos_pad, torch_mode, seed, verbose, output_logits)
    new = np.stack(sampled, axis=1) if sampled else np.zeros((B, 0), np.int64)
    out_tokens = np.concatenate([tokens, new], axis=1) if tokens is not None else new
    if return_type == "str":
        if model.tokenizer is None:
            raise ValueError("return_type='str' needs a tokenizer")
        texts = [model.tokenizer.decode(row, skip_special_tokens=True) for row in out_tokens]
        result: Any = texts[0] if len(texts) == 1 else texts
    elif return_type == "tokens":
        result = wrap(out_tokens, torch_mode)
    else:
        engine = model._get_engine()
        if embeds is None:
            all_embeds = engine.embed_tokens(out_tokens)
        else:
            all_embeds = np.concatenate([embeds, engine.embed_tokens(new)], axis=1)
        result = wrap(all_embeds, torch_mode)
    if output_logits:
        seq = wrap(out_tokens, torch_mode)
        logits = tuple(wrap(x, torch_mode) for x in step_logits)
        try:
            from transformers.generation.utils import GenerateDecoderOnlyOutput

            return GenerateDecoderOnlyOutput(sequences=seq, logits=logits)
        except ImportError:
            return GenerateOutput(sequences=seq, logits=logits)
    return result


def _prepare_input(model: Any, input: Any, kind: str, prepend_bos: Any,
                   padding_side: Any) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], np.ndarray]:
    """(tokens [B, P] or None, embeddings [B, P, D] or None, attention mask [B, P])."""
    tok = model.tokenizer
    batched_list = isinstance(input, list) and len(input) > 1 and kind == "str"
    if kind == "str":
        if tok is None:
            raise ValueError("generate from text needs a tokenizer; pass tokens instead")
        side = "left" if batched_list else padding_side  # batched prompts are left-padded
        tokens = np.asarray(to_numpy(model.to_tokens(input, prepend_bos=prepend_bos, padding_side=side)), np.int64)
    elif kind == "tokens":
        tokens = np.asarray(to_numpy(input) if not isinstance(input, list) else input, dtype=np.int64)
        tokens = tokens[None] if tokens.ndim == 1 else tokens
        model._validate_tokens(tokens, check_n_ctx=False)
    else:
        embeds = np.ascontiguousarray(to_numpy(input), dtype=np.float32)
        if embeds.shape[-1] != model.cfg.d_model or 0 in embeds.shape:
            raise ValueError(f"embeddings must have shape [batch, pos, {model.cfg.d_model}], got {tuple(embeds.shape)}")
        return None, embeds, np.ones(embeds.shape[:2], np.int64)
    tokens = np.ascontiguousarray(tokens)
    if tok is None:
        return tokens, None, np.ones_like(tokens)
    bos = model.cfg.default_prepend_bos if prepend_bos is USE_DEFAULT_VALUE else bool(prepend_bos)
    side = "left" if batched_list else tok.padding_side
    mask = np.asarray(to_numpy(utils.get_attention_mask(tok, tokens, bos, padding_side=side)), np.int64)
    return tokens, None, mask


def _loop(model, tokens, embeds, mask, max_new_tokens, use_cache, do_sample, top_k, top_p, temperature,
          freq_penalty, repetition_penalty, stop_tokens, eos_pad, torch_mode, seed, verbose, output_logits):
    """The generation steps; returns (sampled ids per step [B] each, final logits per step)."""
    B, P = (tokens if tokens is not None else embeds).shape[:2]
    cache = HookedTransformerKeyValueCache.init_cache(model.cfg, None, B, capacity=P + max_new_tokens) \
        if use_cache else None
    finished = np.zeros(B, dtype=bool)
    stop = np.asarray(stop_tokens, dtype=np.int64)
    sampled: List[np.ndarray] = []
    step_logits: List[np.ndarray] = []
    rng = np.random.default_rng(seed) if not torch_mode else None
    so_far = tokens  # tokens for the penalties (prompt + sampled), token input only
    run = dict(embed_hooks=False, torch_mode=torch_mode, return_type="logits")
    with _torch_rng(seed) if torch_mode else contextlib.nullcontext():
        for step in _progress(max_new_tokens, verbose):
            if use_cache:
                if step == 0:
                    logits = _step(model, tokens, embeds, mask, cache, run)
                else:
                    logits = _step(model, sampled[-1][:, None], None, np.ones((B, 1), np.int64), cache, run)
            else:
                full_mask = np.concatenate([mask, np.ones((B, step), np.int64)], axis=1)
                if embeds is None:
                    logits = _step(model, so_far, None, full_mask, None, run)
                else:
                    new = model._get_engine().embed_tokens(np.stack(sampled, 1)) if sampled else embeds[:, :0]
                    logits = _step(model, None, np.concatenate([embeds, new], axis=1), full_mask, None, run)
            final = logits[:, -1, :]
            if output_logits:
                step_logits.append(np.array(to_numpy(final)))
            nxt = _choose(final, do_sample, top_k, top_p, temperature, freq_penalty, repetition_penalty,
                          so_far if embeds is None else None, torch_mode, rng)
            if stop.size:
                nxt = np.where(finished, eos_pad, nxt)
                finished |= np.isin(nxt, stop)
            sampled.append(nxt)
            if embeds is None:
                so_far = np.concatenate([so_far, nxt[:, None]], axis=1)
            if stop.size and finished.all():
                break
    return sampled, step_logits


def _step(model, tokens, embeds, mask, cache, run) -> Any:
    return model._forward(tokens, attention_mask=mask, past_kv_cache=cache, input_embeds=embeds, **run)


def _choose(final: Any, do_sample, top_k, top_p, temperature, freq_penalty, repetition_penalty, tokens,
            torch_mode, rng) -> np.ndarray:
    """Next ids [B] (int64 NumPy) from final logits [B, V] (a torch tensor in torch mode)."""
    if not do_sample:
        return np.asarray(to_numpy(final)).argmax(-1).astype(np.int64)
    penalties = {} if tokens is None else dict(freq_penalty=freq_penalty, repetition_penalty=repetition_penalty)
    if torch_mode:
        import torch

        toks = None if tokens is None else torch.from_numpy(np.ascontiguousarray(tokens))
        out = sample_logits(final, top_k=top_k, top_p=top_p, temperature=temperature, tokens=toks, **penalties)
    else:
        out = sample_logits(np.asarray(final), top_k=top_k, top_p=top_p, temperature=temperature, tokens=tokens,
                            rng=rng, **penalties)
    return np.asarray(to_numpy(out), dtype=np.int64)
