"""``logit_lens``, ``component_lens`` and ``activation_lens``: read activations through the
model's own ``ln_final`` and unembedding (see :mod:`glassbox.lens`)."""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from glassbox.arrays import is_torch, to_numpy
from glassbox.lens.readout import LN_MODES, FinalReadout
from glassbox.lens.result import LensResult
from glassbox.lens.stacks import component_stack, residual_stack
from glassbox.lens.stats import lens_stats
from glassbox.utils import Slice

TargetSpec = Union[None, str, int, Sequence[Union[int, str]], np.ndarray, Any]


def logit_lens(
    cache: Any,
    tokens: Any = None,
    target: TargetSpec = "auto",
    *,
    sites: Union[str, Sequence[str]] = "accumulated",
    incl_mid: bool = False,
    layers: Any = None,
    ln_mode: str = "recompute",
    k: int = 10,
    pos_slice: Any = None,
    final_logits: Any = None,
    return_logits: bool = False,
    readout: Optional[FinalReadout] = None,
) -> LensResult:
    """The logit lens on the residual stream: each layer's residual read through ``ln_final``
    and ``W_U``, as if it were the last one.

    Args:
        cache: an :class:`~glassbox.ActivationCache` from ``model.run_with_cache`` (NumPy or
            torch entries; with or without the batch axis).
        tokens: the input of that run ([batch, pos] / [pos] ids, or the text), for
            ``target="next"`` and for token strings in tables and plots.
        target: the tokens whose probability and rank are reported at every position:
            ``"next"`` (the next input token; none at the last position), ``"final"`` (the
            model's own top-1 prediction there), a token id or single-token string, a list of
            them (several targets, e.g. ``[" Mary", " John"]``), or an int array [batch, pos]
            (or [pos], or [batch, pos, n_targets]; -1 = no target). ``"auto"``: ``"next"`` when
            ``tokens`` are given, else ``"final"``. None: no target statistics.
        sites: ``"accumulated"`` (TransformerLens's ``accumulated_resid``: ``resid_pre`` of each
            layer, then ``"final_post"``; labels ``"{l}_pre"``), or one or a list of
            ``"resid_pre"``, ``"resid_mid"``, ``"resid_post"`` at each of ``layers``.
        incl_mid: with ``"accumulated"``, add each layer's ``resid_mid`` (``"{l}_mid"``).
        layers: layer indices for explicit ``sites`` (default: all).
        ln_mode: ``"recompute"`` (default; ln_final statistics from each vector) or ``"cached"``
            (divide by the final residual's cached ``ln_final.hook_scale``); see
            :mod:`glassbox.lens.readout`.
        k: number of top tokens kept per read-out.
        pos_slice: positions to read (int, slice, tuple or list; the position axis is kept).
        final_logits: the model's logits [batch, pos, d_vocab] (the reference of KL and of
            ``target="final"``); by default computed from the cached final ``resid_post``,
            which gives the model's logits.
        return_logits: keep the full lens logits (``result.logits``, [n, batch, pos, d_vocab]).
        readout: a :class:`FinalReadout` of this model to reuse. Building one reads ``W_U``; for
            weights kept in their stored dtype that is a float32 copy (d_model x d_vocab x 4
            bytes, ~1-2 s for a 50k vocabulary), so pass one when calling the lens repeatedly.

    Returns:
        a :class:`LensResult` (``labels``, ``top_tokens``, ``target_probs``, ``target_ranks``,
        ``kl``, … and ``plot_heatmap`` / ``plot_lines``).

    Example:
        >>> logits, cache = model.run_with_cache(tokens)                   # doctest: +SKIP
        >>> res = glassbox.lens.logit_lens(cache, tokens, target=" Mary")  # doctest: +SKIP
        >>> res.target_ranks[:, 0, -1, 0]     # rank of " Mary" at the last position, per layer  # doctest: +SKIP
        >>> res.plot_heatmap("rank")                                        # doctest: +SKIP
    """
    _check_ln_mode(ln_mode)
    stack, labels = residual_stack(cache, sites, incl_mid, layers)
    what = "logit lens: " + (sites if isinstance(sites, str) else ", ".join(sites))
    return _run(cache, stack, labels, what, tokens, target, ln_mode, k, pos_slice, final_logits, return_logits, readout)


def component_lens(
    cache: Any,
    tokens: Any = None,
    target: TargetSpec = "auto",
    *,
    components: Union[str, Sequence[str]] = ("attn_out", "mlp_out"),
    layers: Any = None,
    ln_mode: str = "cached",
    k: int = 10,
    pos_slice: Any = None,
    final_logits: Any = None,
    return_logits: bool = False,
    readout: Optional[FinalReadout] = None,
) -> LensResult:
    """The logit lens on what each component writes: attention and MLP outputs, or every head.

    Args:
        components: ``"attn_out"``, ``"mlp_out"`` (or both, the default, interleaved per layer;
            labels ``"{l}_attn_out"``, ``"{l}_mlp_out"``), ``"heads"`` (every head's output
            z·W_O, labels ``"L{l}H{h}"``; query heads for GQA), or ``"decompose"``
            (``cache.decompose_resid()``: embeddings too).
        ln_mode: ``"cached"`` (default): each output divided by the final residual's cached
            ``ln_final.hook_scale``, times the gain, without biases — its direct contribution to
            the final logits, as in TransformerLens's ``apply_ln_to_stack`` / ``logit_attrs``
            (the read-outs of ``"decompose"`` add up to the final logits minus
            ``b_ln @ W_U + b_U``). ``"recompute"``: each output normalised on its own and read
            with biases, as if it were the whole residual stream.

    The other arguments are :func:`logit_lens`'s.

    Example:
        >>> res = glassbox.lens.component_lens(cache, tokens, " Mary", components="heads")  # doctest: +SKIP
        >>> res.top_strs(batch=0, pos=-1)[:3]                               # doctest: +SKIP
    """
    _check_ln_mode(ln_mode)
    stack, labels = component_stack(cache, components, layers)
    what = "component lens: " + (components if isinstance(components, str) else ", ".join(components))
    return _run(cache, stack, labels, what, tokens, target, ln_mode, k, pos_slice, final_logits, return_logits, readout)


def activation_lens(
    cache: Any,
    activations: Any,
    labels: Optional[Sequence[str]] = None,
    tokens: Any = None,
    target: TargetSpec = "auto",
    *,
    ln_mode: str = "recompute",
    k: int = 10,
    pos_slice: Any = None,
    final_logits: Any = None,
    return_logits: bool = False,
    readout: Optional[FinalReadout] = None,
) -> LensResult:
    """The lens on any stack of d_model vectors, e.g. a patched residual or a hook's output.

    Args:
        activations: [n, *bp, d_model] (``*bp`` the cache's [batch, pos] or [pos]) or one
            [*bp, d_model] activation; NumPy or torch.
        labels: one name per stack entry (default ``"0"``, ``"1"``, …).

    ``cache`` supplies the model, the final residual (KL reference) and, for ``ln_mode="cached"``,
    ``ln_final.hook_scale``. The other arguments are :func:`logit_lens`'s.

    Example:
        >>> stack = cache.stack_activation("resid_mid")                    # doctest: +SKIP
        >>> glassbox.lens.activation_lens(cache, stack, tokens=tokens)     # doctest: +SKIP
    """
    _check_ln_mode(ln_mode)
    arr = np.asarray(to_numpy(activations), dtype=np.float32)
    bp = 2 if cache.has_batch_dim else 1
    if arr.ndim == bp + 1:
        arr = arr[None]
    d_model = cache.model.cfg.d_model
    if arr.ndim != bp + 2 or arr.shape[-1] != d_model:
        want = "[n, batch, pos, d_model]" if cache.has_batch_dim else "[n, pos, d_model]"
        raise ValueError(f"activations must have shape {want} with d_model={d_model}, got {tuple(np.shape(activations))}")
    if labels is None:
        labels = [str(i) for i in range(arr.shape[0])]
    labels = [str(s) for s in labels]
    if len(labels) != arr.shape[0]:
        raise ValueError(f"labels has {len(labels)} names for {arr.shape[0]} activations")
    return _run(cache, arr, labels, "activation lens", tokens, target, ln_mode, k, pos_slice, final_logits, return_logits, readout)


# ---------------------------------------------------------------------------------------------
def _check_ln_mode(ln_mode: str) -> None:
    if ln_mode not in LN_MODES:
        raise ValueError(f"ln_mode must be one of {LN_MODES}, got {ln_mode!r}")


def _final_resid(cache: Any) -> np.ndarray:
    L = cache.model.cfg.n_layers
    name = f"blocks.{L - 1}.hook_resid_post"
    if name not in cache:
        raise ValueError(f"the lens needs {name!r} in the cache (the final residual stream, for the model's "
                         f"output distribution); run_with_cache without a names_filter that drops it")
    return np.asarray(to_numpy(cache[name]), np.float32)


def _tokens(cache: Any, tokens: Any, B: int, P: int) -> Optional[np.ndarray]:
    if tokens is None:
        return None
    model = cache.model
    if isinstance(tokens, str) or (isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens)):
        tokens = model.to_tokens(tokens)
    arr = np.asarray(to_numpy(tokens))
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"tokens must be integer ids [batch, pos] or [pos] (or the text), got shape {tuple(arr.shape)} dtype {arr.dtype}")
    if arr.shape != (B, P):
        raise ValueError(f"tokens have shape {tuple(arr.shape)} but the cache holds [batch, pos] = [{B}, {P}]")
    return arr.astype(np.int64)


def _token_id(model: Any, t: Any, d_vocab: int) -> int:
    if isinstance(t, str):
        try:
            return int(model.to_single_token(t))
        except AssertionError:
            raise ValueError(f"target {t!r} is not a single token of this model's tokenizer; pass a token id") from None
    if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
        if not 0 <= int(t) < d_vocab:
            raise ValueError(f"target token id {int(t)} is out of range for d_vocab={d_vocab}")
        return int(t)
    raise ValueError(f"a target must be a token id or a single-token string, got {t!r}")


def _targets(
    cache: Any, target: TargetSpec, tokens: Optional[np.ndarray], final_logits: np.ndarray, B: int, P: int, d_vocab: int
) -> Tuple[np.ndarray, List[str]]:
    """→ ([B, P, T] int64 with -1 = none, names of the T targets)."""
    model = cache.model
    if isinstance(target, str) and target == "auto":
        target = "next" if tokens is not None else "final"
    if target is None:
        return np.zeros((B, P, 0), np.int64), []
    if isinstance(target, str) and target == "next":
        if tokens is None:
            raise ValueError("target='next' needs tokens= (the input of the cached run)")
        out = np.full((B, P, 1), -1, np.int64)
        out[:, :-1, 0] = tokens[:, 1:]
        return out, ["next"]
    if isinstance(target, str) and target == "final":
        return final_logits.argmax(-1).astype(np.int64)[..., None], ["final"]
    if isinstance(target, (str, int, np.integer)) and not isinstance(target, bool):
        target = [target]
    if isinstance(target, (list, tuple)):
        ids = [_token_id(model, t, d_vocab) for t in target]
        if not ids:
            raise ValueError("target is an empty list")
        names = [repr(t) if isinstance(t, str) else _tok_name(model, i) for t, i in zip(target, ids)]
        return np.broadcast_to(np.asarray(ids, np.int64), (B, P, len(ids))).copy(), names
    if is_torch(target) or isinstance(target, np.ndarray):
        arr = np.asarray(to_numpy(target))
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"a target array must hold integer token ids, got dtype {arr.dtype}")
        if arr.ndim == 1:  # [pos]: the same targets for every batch item
            arr = np.broadcast_to(arr, (B,) + arr.shape)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[:2] != (B, P):
            raise ValueError(f"a target array must have shape [batch, pos] (or [batch, pos, n_targets]) = [{B}, {P}], got {tuple(np.shape(target))}")
        if ((arr < -1) | (arr >= d_vocab)).any():
            raise ValueError(f"target ids must be in [0, {d_vocab}) or -1 (no target)")
        names = [f"target[{t}]" for t in range(arr.shape[2])] if arr.shape[2] > 1 else ["target"]
        return arr.astype(np.int64), names
    raise ValueError(f"target must be 'auto', 'next', 'final', None, a token (id or string), a list of tokens or an id array, got {type(target).__name__}")


def _tok_name(model: Any, i: int) -> str:
    try:
        return repr(model.to_single_str_token(int(i)))
    except Exception:  # no tokenizer
        return f"#{i}"


def _run(cache, stack, labels, what, tokens, target, ln_mode, k, pos_slice, final_logits, return_logits, readout) -> LensResult:
    model = cache.model
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if readout is None:
        readout = FinalReadout(model)
    elif not isinstance(readout, FinalReadout) or readout.d_model != model.cfg.d_model:
        raise ValueError(f"readout must be a FinalReadout of this model (d_model={model.cfg.d_model}), got {readout!r}")
    V = readout.d_vocab
    final = _final_resid(cache)
    batched = bool(cache.has_batch_dim)
    if not batched:  # work with a batch axis of 1 throughout
        final, stack = final[None], stack[:, None]
    B, P = final.shape[0], final.shape[1]
    if stack.shape[1:3] != (B, P):
        raise ValueError(f"the stack has [batch, pos] = {list(stack.shape[1:3])} but the cache has [{B}, {P}]")
    if final_logits is None:
        flog = readout.logits(final, "recompute")
    else:
        flog = np.asarray(to_numpy(final_logits), np.float32)
        if not batched and flog.ndim == 2:
            flog = flog[None]
        if flog.shape != (B, P, V):
            raise ValueError(f"final_logits must have shape [batch, pos, d_vocab] = [{B}, {P}, {V}], got {tuple(np.shape(final_logits))}")
    toks = _tokens(cache, tokens, B, P)
    targets, target_names = _targets(cache, target, toks, flog, B, P, V)

    try:
        positions = Slice.unwrap(pos_slice).indices(P)
    except (IndexError, ValueError) as exc:
        raise ValueError(f"pos_slice {pos_slice!r} does not select positions of a sequence of {P}: {exc}") from None
    stack = stack[:, :, positions]
    final, flog, targets = final[:, positions], flog[:, positions], targets[:, positions]
    n, Pn = stack.shape[0], positions.size
    N = B * Pn
    vecs = stack.reshape(n, N, -1)
    scale = None
    if ln_mode == "cached":
        name = "ln_final.hook_scale"
        if name in cache and readout.kind is not None:
            sc = np.asarray(to_numpy(cache[name]), np.float32)
            scale = (sc if batched else sc[None])[:, positions].reshape(N, 1)
        else:
            scale = readout.scale(final).reshape(N, 1)
    flog_flat = flog.reshape(N, V)
    stats = lens_stats(
        lambda cs, ps: readout.logits(vecs[cs, ps], ln_mode, None if scale is None else scale[ps]),
        n, N, lambda ps: flog_flat[ps], targets.reshape(N, -1), k, V, keep_logits=return_logits,
    )
    final_stats = lens_stats(lambda cs, ps: flog_flat[ps][None], 1, N, lambda ps: flog_flat[ps],
                             targets.reshape(N, -1), k, V)
    for st in (stats, final_stats):  # KL >= 0; rounding can leave -1e-8 where lens == final
        np.maximum(st["kl"], 0.0, out=st["kl"])
    shape = lambda a, lead: a.reshape(lead + (B, Pn) + a.shape[2:])  # noqa: E731
    arrays = {key: shape(v, (n,)) for key, v in stats.items()}
    arrays.update({"final_" + key: shape(final_stats[key], (1,))[0]
                   for key in ("top_tokens", "top_probs", "target_probs", "target_ranks", "entropy")})
    arrays["target_tokens"] = targets
    arrays["positions"] = positions
    str_tokens = None
    if toks is not None and getattr(model, "tokenizer", None) is not None:
        str_tokens = [list(model.to_str_tokens(row)) for row in toks]
    return LensResult(
        arrays, labels=list(labels), what=what, ln_mode=ln_mode, target_names=target_names,
        str_tokens=str_tokens, has_batch_dim=batched, torch_mode=cache._torch(), model=model,
    )


__all__ = ["logit_lens", "component_lens", "activation_lens"]
