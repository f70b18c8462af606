"""The forward pass of :class:`~glassbox.HookedTransformer`: input handling, the per-run hook plan
handed to the engine, hook dispatch, and ``run_with_cache``.
"""
from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from glassbox import utils
from glassbox.ActivationCache import ActivationCache
from glassbox.arrays import asarray_f32, is_torch, to_numpy, wants_torch, wrap
from glassbox.hook_points import HookPoint, NamesFilter, _make_names_filter, _store_activation
from glassbox.loading.mapped import loaded_files_unchanged
from glassbox.utils import USE_DEFAULT_VALUE, LocallyOverridenDefaults, Slice
from glassbox.transformer.checks import (FiniteGuard, as_attention_mask, as_token_array, check_return_type,
                                         check_tokens, logit_positions_array, resolve_layer)


class Output(NamedTuple):
    """``return_type="both"`` result."""

    logits: Any
    loss: Any


class _RunState:
    """Per-forward bookkeeping shared with the engine callback."""

    __slots__ = ("torch_mode", "site_names", "fired", "planned", "position", "guard")

    def __init__(self, torch_mode: bool, site_names: Dict[Tuple[int, int], str], ranks: Dict[str, int],
                 planned: set, guard: Optional[FiniteGuard] = None):
        self.torch_mode = torch_mode
        self.site_names = site_names
        self.fired = ranks  # firing rank of each point (memoised with the names: read only)
        self.planned = planned  # points the engine calls back at in this run
        self.position = -1  # rank of the point being dispatched
        self.guard = guard

    def refuse_new_hook(self, name: str) -> Optional[str]:
        """Why a hook added now at ``name`` could not fire in this run (None if it can, or if the
        point has already fired — then, as in TransformerLens, it fires from the next run on)."""
        rank = self.fired.get(name)
        if rank is None or rank <= self.position or name in self.planned:
            return None
        return (f"a hook was added to {name!r} while a forward pass is running, before that point "
                f"fired; glassbox fixes which points call into Python when the pass starts, so it "
                f"would not fire in this pass (TransformerLens would run it). Add the hook before "
                f"the run (e.g. in fwd_hooks=[...]), or add it to a point that already has a hook")


class _CacheRequest:
    """What ``run_with_cache`` asks of the next forward."""

    def __init__(self, keep):
        self.keep = keep
        self.python: Dict[str, np.ndarray] = {}  # cached in Python (hooked points)
        self.fast: Dict[str, np.ndarray] = {}  # written by the engine
        self.order: List[str] = []  # firing order of this run
        self.torch_mode = False


def _c_module():
    try:
        from glassbox import _C
    except ImportError as exc:  # pragma: no cover - depends on the build
        import os

        pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if os.path.exists(os.path.join(os.path.dirname(pkg), "setup.py")):
            where = (f"glassbox was imported from its source tree ({pkg}), which has no built "
                     "extension: the folder you are in shadows any installed copy. Run "
                     "`pip install -e .` here (it builds glassbox/_C in place), or run from "
                     "another folder")
        else:
            where = "reinstall glassbox (`pip install --force-reinstall glassbox-lens`)"
        raise ImportError(f"glassbox's C extension (glassbox._C) is not available: {where}") from exc
    return _C


def _note(exc: BaseException, hook_name: str) -> None:
    """Attach the hook name to an exception raised inside a hook (type unchanged)."""
    note = f"(raised by a hook function at {hook_name!r})"
    if hasattr(exc, "add_note") and note not in getattr(exc, "__notes__", ()):
        try:
            exc.add_note(note)
        except Exception:  # pragma: no cover
            pass


def _as_tokens(x: Any) -> np.ndarray:
    """Token input (tensor / ndarray / list of ints) → int64 ndarray [batch, pos] or [pos]."""
    return np.ascontiguousarray(as_token_array(x), dtype=np.int64)


def _mask_arg(attention_mask: Any, shape: Optional[Tuple[int, int]]) -> Optional[np.ndarray]:
    """A user attention mask → int64 [batch, pos] (or None), its 0/1 values checked (and its shape,
    unless ``shape`` is None)."""
    if attention_mask is None:
        return None
    return as_attention_mask(attention_mask, shape)


def _as_kv_cache(past_kv_cache: Any) -> Any:
    """``past_kv_cache`` checked to be glassbox's key/value cache (or None)."""
    if past_kv_cache is None:
        return None
    from glassbox.past_key_value_caching import HookedTransformerKeyValueCache

    if not isinstance(past_kv_cache, HookedTransformerKeyValueCache):
        raise TypeError(
            "past_kv_cache must be a glassbox HookedTransformerKeyValueCache (from "
            "glassbox.past_key_value_caching, e.g. HookedTransformerKeyValueCache.init_cache(model.cfg, "
            f"model.cfg.device, batch_size)), got {type(past_kv_cache).__name__}")
    return past_kv_cache


class RunMixin:
    """Part of :class:`glassbox.HookedTransformer` (see its docstring)."""

    def _input_to_tokens(self, input: Any, attention_mask: Any,
                         need_mask: bool = False) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Tokens [B, P] int64 (checked: shape, n_ctx, id range — before any widening) and the
        attention mask TL would use (or None). ``need_mask`` (a KV cache is used): always a
        mask, as in TL."""
        if isinstance(input, str) or (isinstance(input, list) and input and all(isinstance(s, str) for s in input)):
            tok = self._require_tokenizer("string input")
            tokens, _ = tok.encode_batch(
                input, prepend_bos=self.cfg.default_prepend_bos, padding_side=tok.padding_side, max_length=self.cfg.n_ctx
            )
        else:
            tokens = as_token_array(input)
        if tokens.ndim == 1:
            tokens = tokens[None]
        tokens = self._validate_tokens(tokens)
        mask = None
        if attention_mask is not None:
            mask = as_attention_mask(attention_mask, tokens.shape)
        elif (self.tokenizer is not None and self.tokenizer.padding_side == "left") or need_mask:
            mask = np.ascontiguousarray(
                to_numpy(utils.get_attention_mask(self.tokenizer, tokens, self.cfg.default_prepend_bos)), dtype=np.int64)
        return tokens, mask

    def _validate_tokens(self, tokens: np.ndarray, check_n_ctx: bool = True) -> np.ndarray:
        """``tokens`` [B, P] of any integer dtype, checked, as int64."""
        n_ctx = self.cfg.n_ctx if check_n_ctx and self.cfg.positional_embedding_type in ("standard", "shortformer") else None
        return check_tokens(tokens, int(self.embed._params["W_E"].shape[0]), n_ctx)

    def forward(
        self,
        input: Any,
        return_type: Optional[str] = "logits",
        loss_per_token: bool = False,
        prepend_bos: Optional[bool] = USE_DEFAULT_VALUE,
        padding_side: Optional[str] = USE_DEFAULT_VALUE,
        start_at_layer: Optional[int] = None,
        tokens: Any = None,
        shortformer_pos_embed: Any = None,
        attention_mask: Any = None,
        stop_at_layer: Optional[int] = None,
        past_kv_cache: Any = None,
    ) -> Any:
        """Run the model.

        ``input``: text, list of texts (padded), tokens [batch, pos] / [pos], or with
        ``start_at_layer`` the residual stream [batch, pos, d_model]. ``return_type``:
        "logits" [batch, pos, d_vocab_out], "loss" (0-d, or [batch, pos-1] with
        ``loss_per_token``), "both" (``Output(logits, loss)``) or None. ``stop_at_layer``
        (exclusive, negatives allowed) returns the residual before that block.

        ``past_kv_cache`` (a :class:`glassbox.past_key_value_caching.HookedTransformerKeyValueCache`):
        the input holds the *new* positions only; they attend to the cached ones, and their
        keys, values and attention mask are appended to the cache (unless it is frozen). As in
        TransformerLens: with token/text input ``attention_mask`` is the new positions' mask
        (computed from the tokenizer when omitted) and is appended to
        ``past_kv_cache.previous_attention_mask``; with ``start_at_layer`` it is the mask of
        cached + new positions. Hook points fire for the new positions only, except
        ``hook_attn_scores`` / ``hook_pattern`` [batch, head, new, cached + new] and
        ``hook_rot_k`` [batch, cached + new, kv_head, d_head].
        """
        return self._forward(input, return_type, loss_per_token, prepend_bos, padding_side, start_at_layer,
                             tokens, attention_mask, stop_at_layer, past_kv_cache,
                             shortformer_pos_embed=shortformer_pos_embed)

    def _forward(self, input: Any, return_type: Optional[str] = "logits", loss_per_token: bool = False,
                 prepend_bos: Any = USE_DEFAULT_VALUE, padding_side: Any = USE_DEFAULT_VALUE,
                 start_at_layer: Optional[int] = None, tokens: Any = None, attention_mask: Any = None,
                 stop_at_layer: Optional[int] = None, past_kv_cache: Any = None, *,
                 input_embeds: Any = None, embed_hooks: bool = True, torch_mode: Optional[bool] = None,
                 shortformer_pos_embed: Any = None, logit_positions: Any = None) -> Any:
        """``forward`` plus switches for ``generate``: ``input_embeds`` (token embeddings
        [batch, pos, d_model] instead of ``input``; positions are added, as TL's generate does
        with embeddings), ``embed_hooks=False`` (``hook_tokens`` / ``hook_embed`` do not
        fire: TL's generate embeds tokens without them) and ``torch_mode`` (the array kind of
        outputs and hook arguments, instead of deciding it from the input). ``shortformer_pos_embed``
        (with ``start_at_layer``, shortformer models): the positional embedding added to the q/k
        inputs (None: none, as in TransformerLens). ``logit_positions`` (``return_type="logits"``
        only; see :func:`logit_positions_array`): unembed only these positions and return logits
        [batch, k, d_vocab_out]; the unembed hook points do not fire."""
        kv = _as_kv_cache(past_kv_cache)
        if torch_mode is None:
            torch_mode = wants_torch(input if input_embeds is None else input_embeds)
        L = self.cfg.n_layers
        check_return_type(return_type)
        stop = resolve_layer(stop_at_layer, L, "stop_at_layer")
        if logit_positions is not None and (return_type != "logits" or stop is not None):
            raise ValueError("logit_positions needs return_type='logits' and stop_at_layer=None, got "
                             f"return_type={return_type!r}, stop_at_layer={stop_at_layer!r}")
        with self._run_lock, LocallyOverridenDefaults(self, prepend_bos=prepend_bos, padding_side=padding_side):
            residual = None
            embeds = None
            if input_embeds is not None:
                embeds = asarray_f32(input_embeds)
                if embeds.ndim != 3 or embeds.shape[-1] != self.cfg.d_model:
                    raise ValueError(f"embeddings must have shape [batch, pos, {self.cfg.d_model}], "
                                     f"got {tuple(embeds.shape)}")
                B, P = embeds.shape[:2]
                if B == 0 or P == 0:
                    raise ValueError(f"embeddings must be non-empty, got shape {tuple(embeds.shape)}")
                start, tok_np, mask = 0, None, _mask_arg(attention_mask, (B, P))
                new_mask_given = True
            elif start_at_layer is None:
                tok_np, mask = self._input_to_tokens(input, attention_mask, need_mask=kv is not None)
                if self.cfg.use_hook_tokens and embed_hooks and self.hook_tokens.fwd_hooks:
                    tok_np = self._validate_tokens(self._run_hook_tokens(tok_np, torch_mode))
                B, P = tok_np.shape
                start = 0
                new_mask_given = True  # the mask covers the new positions only
            else:
                if isinstance(input, (str, list)):
                    raise ValueError("with start_at_layer, input must be the residual stream [batch, pos, d_model]")
                residual = asarray_f32(input)
                if residual.ndim != 3 or residual.shape[-1] != self.cfg.d_model:
                    raise ValueError(
                        f"with start_at_layer, input must have shape [batch, pos, {self.cfg.d_model}], got {tuple(residual.shape)}"
                    )
                B, P = residual.shape[:2]
                start = resolve_layer(start_at_layer, L, "start_at_layer")
                tok_np = _as_tokens(tokens) if tokens is not None else None
                if tok_np is not None and tok_np.ndim == 1:
                    tok_np = tok_np[None]
                # TL: with start_at_layer and a KV cache the mask spans cached + new positions
                mask = _mask_arg(attention_mask, (B, P) if kv is None else None)
                new_mask_given = False
            kv_args = None
            new_mask = mask
            if kv is not None:
                kv_args, mask, new_mask = self._kv_prepare(kv, B, P, mask, new_mask_given, start, stop)
            positions = None
            if mask is not None:
                past = kv_args[2] if kv_args is not None else 0
                positions = np.ascontiguousarray(
                    np.maximum(np.cumsum(mask, axis=1) - 1, 0)[:, past:].astype(np.int64))
            sf_pos = None
            if residual is not None and shortformer_pos_embed is not None:
                if self.cfg.positional_embedding_type != "shortformer":
                    raise ValueError("shortformer_pos_embed is only used by shortformer models "
                                     f"(positional_embedding_type={self.cfg.positional_embedding_type!r})")
                sf_pos = asarray_f32(shortformer_pos_embed)
            if kv is not None:
                kv._in_use = True
            try:
                out = self._run_engine(
                    tok_np if residual is None else None,
                    residual if embeds is None else None,
                    mask,
                    positions,
                    start,
                    stop,
                    return_type,
                    torch_mode,
                    B,
                    P,
                    embeds=embeds,
                    kv=kv_args,
                    embed_hooks=embed_hooks,
                    shortformer_pos_embed=sf_pos,
                    logit_positions=None if logit_positions is None else logit_positions_array(logit_positions, B, P),
                )
            finally:
                if kv is not None:
                    kv._in_use = False
            if kv is not None:
                kv._commit(self, P, new_mask if new_mask is not None else np.ones((B, P), np.int64), torch_mode)
        if stop is not None:
            return wrap(out, torch_mode)
        if return_type is None:
            return None
        logits = out
        if return_type == "logits":
            return wrap(logits, torch_mode)
        if tok_np is None:
            raise AssertionError("tokens must be passed in if return_type is 'loss' or 'both'")
        logits_out = wrap(logits, torch_mode)
        loss = self.loss_fn(logits_out, wrap(tok_np, torch_mode), wrap(new_mask, torch_mode), per_token=loss_per_token)
        if return_type == "loss":
            return loss
        return Output(logits_out, loss)

    def _kv_prepare(self, kv: Any, B: int, P: int, mask: Optional[np.ndarray], new_mask_given: bool,
                    start: int, stop: Optional[int]) -> Tuple[Tuple[list, list, int], Optional[np.ndarray], Optional[np.ndarray]]:
        """Check the cache against this run; the engine's kv_cache argument, the mask over
        cached + new positions (or None) and the new positions' mask (or None)."""
        past = kv._check_for(self, B)
        L = self.cfg.n_layers
        if (start != 0 or (stop is not None and stop < L)) and not kv.fully_frozen:
            raise ValueError(
                f"past_kv_cache with start_at_layer={start} / stop_at_layer={stop} would leave the layers outside "
                "that range without the new positions; freeze() the cache to read it without extending it")
        if self.cfg.positional_embedding_type == "standard" and past + P > self.cfg.n_ctx:
            raise ValueError(f"past_kv_cache holds {past} positions; {P} more exceed the model's context "
                             f"n_ctx={self.cfg.n_ctx}")
        if mask is None:
            full, new = None, None
        elif new_mask_given:
            if mask.shape != (B, P):
                raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, expected the new positions' "
                                 f"({B}, {P})")
            full = np.concatenate([kv._mask, mask], axis=1)
            new = mask
        else:
            if mask.shape != (B, past + P):
                raise ValueError(f"with start_at_layer and past_kv_cache, attention_mask must cover cached + new "
                                 f"positions ({B}, {past + P}), got {tuple(mask.shape)}")
            full, new = mask, mask[:, past:]
        return kv._engine_view(P), (None if full is None else np.ascontiguousarray(full)), new

    __call__ = forward

    def _run_hook_tokens(self, tokens: np.ndarray, torch_mode: bool) -> np.ndarray:
        hp = self.hook_tokens
        if not hp.fwd_hooks:
            return tokens
        x = wrap(np.ascontiguousarray(tokens), torch_mode)
        from glassbox.hook_points import run_hook_functions

        try:
            x = run_hook_functions(hp, x)
        except BaseException as exc:
            _note(exc, "hook_tokens")
            raise
        return np.ascontiguousarray(np.asarray(to_numpy(x)).astype(np.int64))

    def _fired_names(self, engine, start: int, stop: Optional[int], tokens_path: bool, final: bool, unembed: bool,
                     embed_hook: bool = True, pos_hook: bool = True) -> Tuple[Tuple[str, ...], Dict[str, int]]:
        """Hook points this run fires, in firing order, and each one's rank in that order
        (memoised per engine and flags: a generation step would otherwise spend more time here
        than in a small model). Both are shared between runs: read only."""
        key = (start, stop, tokens_path, final, unembed, embed_hook, pos_hook, tuple(engine.get_flags().values()))
        memo = self.__dict__.get("_fired_memo")
        if memo is None or memo[0] is not engine:
            memo = (engine, {})
            self.__dict__["_fired_memo"] = memo
        plan = memo[1].get(key)
        if plan is None:
            names = tuple(self._list_fired(engine, start, stop, tokens_path, final, unembed, embed_hook, pos_hook))
            plan = memo[1][key] = (names, {name: i for i, name in enumerate(names)})
        return plan

    def _list_fired(self, engine, start, stop, tokens_path, final, unembed, embed_hook, pos_hook) -> List[str]:
        names = []
        for name in engine.hook_names():
            if name.startswith("blocks."):
                layer = int(name.split(".", 2)[1])
                if layer < start or (stop is not None and layer >= stop):
                    continue
            elif name.startswith("ln_final."):
                if not final:
                    continue
            elif name.startswith("unembed."):
                if not unembed:
                    continue
            elif not tokens_path:  # hook_embed / hook_pos_embed
                continue
            elif (name == "hook_embed" and not embed_hook) or (name == "hook_pos_embed" and not pos_hook):
                continue
            names.append(name)
        return names

    def _run_engine(self, tokens, residual, mask, positions, start, stop, return_type, torch_mode, B, P, *,
                    embeds=None, kv=None, embed_hooks=True, shortformer_pos_embed=None, logit_positions=None):
        engine = self._get_engine()
        loaded_files_unchanged(self)  # a weights file changed since loading: refuse (not SIGBUS)
        L = self.cfg.n_layers
        final = stop is None
        unembed = stop is None and return_type is not None
        stop_arg = None if stop is None or stop >= L else stop
        req = self._cache_request
        K = P + (kv[2] if kv is not None else 0)  # keys attended: cached + new
        tokens_path = tokens is not None or embeds is not None
        # with logit_positions the unembed's hook points do not fire (their [B, P, ...] values
        # are never formed)
        fired, ranks = self._fired_names(engine, start, stop, tokens_path, final,
                                         unembed and logit_positions is None,
                                         embed_hook=embed_hooks and embeds is None)
        if logit_positions is not None:
            hooked = [n for n in ("unembed.hook_in", "unembed.hook_out")
                      if (n in self.hook_dict and self.hook_dict[n].fwd_hooks) or (req is not None and req.keep(n))]
            if hooked:
                raise ValueError(f"logit_positions cannot be used with a hook or cache at {hooked[0]!r} "
                                 "(it sees every position's logits); remove the hook or pass logit_positions=None")
        hooks: List[Tuple[int, int]] = []
        cache: Dict[Tuple[int, int], np.ndarray] = {}
        guard = FiniteGuard(fired) if self._check_finite else None
        planned = set()
        hook_dict = self.hook_dict
        # nothing cached or checked (a plain forward, a generation step): only the points with
        # hooks need work, found by one cheap pass (the full loop below costs ~0.6 us a point,
        # ~0.35 ms a step on a 30-layer model)
        todo = fired if req is not None or guard is not None else [
            name for name in fired if (hp := hook_dict.get(name)) is not None and hp.fwd_hooks]
        for name in todo:
            hp = hook_dict.get(name)
            key = self._site_of[name]
            if hp is not None and hp.fwd_hooks:
                hooks.append(key)
                planned.add(name)
            elif (req is not None and req.keep(name)) or guard is not None:
                arr = np.empty(tuple(engine.hook_shape(key[0], B, P, K)), dtype=np.float32)
                cache[key] = arr
                if req is not None and req.keep(name):
                    req.fast[name] = arr
                if guard is not None:
                    guard.copies[name] = arr
        run = _RunState(torch_mode, self._name_of, ranks, planned, guard)
        if req is not None:
            req.order = (["hook_tokens"] if tokens is not None and self.cfg.use_hook_tokens and embed_hooks
                         else []) + list(fired)
            req.torch_mode = torch_mode
        kwargs: Dict[str, Any] = dict(
            residual=residual,
            attention_mask=mask,
            positions=positions,
            start_at_layer=start,
            stop_at_layer=stop_arg,
            final_norm=final,
            unembed=unembed,
        )
        if shortformer_pos_embed is not None:
            kwargs["shortformer_pos_embed"] = shortformer_pos_embed
        if cache:
            kwargs["cache"] = cache
        if embeds is not None:
            kwargs["embeds"] = embeds
        if kv is not None:
            kwargs["kv_cache"] = kv
        if logit_positions is not None:
            kwargs["logit_positions"] = logit_positions
        if hooks:
            kwargs["hooks"] = hooks
            kwargs["callback"] = self._dispatch
        prev = self._run
        self._run = run
        try:
            out = engine.forward(tokens, **kwargs)
        finally:
            self._run = prev
        if guard is not None:
            if logit_positions is not None:  # the selected logits stand for unembed.hook_out
                guard.order.setdefault("unembed.hook_out", len(guard.order))
                guard.copies["unembed.hook_out"] = out
            guard.raise_first()
        return out

    def _dispatch(self, site_id: int, layer: int, call_index: int, act: np.ndarray) -> Optional[np.ndarray]:
        """Engine callback: run the hooks of one point on ``act``."""
        run = self._run
        name = run.site_names[(site_id, layer)]
        run.position = run.fired.get(name, run.position)
        out = self._run_point_hooks(name, act)
        if run.guard is not None:
            run.guard.check_hooked(name, act if out is None else out)
        return out

    def _run_point_hooks(self, name: str, act: np.ndarray) -> Optional[np.ndarray]:
        """Run the hook functions of point ``name`` on ``act``; the replacement or None."""
        run = self._run
        hp = self.hook_dict[name]
        shape = tuple(act.shape)
        x = wrap(act, run.torch_mode)
        replaced = False
        try:
            for handle in list(hp.fwd_hooks):
                out = handle.user_hook(x, hook=hp)
                if out is None:
                    continue
                out_shape = tuple(out.shape) if hasattr(out, "shape") else None
                if out_shape != shape:
                    got = out_shape if out_shape is not None else type(out).__name__
                    raise ValueError(
                        f"hook at {name!r} returned an activation of shape {got}, but the activation has shape {shape}"
                    )
                x = out
                replaced = True
        except BaseException as exc:
            _note(exc, name)
            raise
        if replaced:
            return asarray_f32(x)
        return None

    def run_with_cache(
        self,
        *model_args: Any,
        names_filter: NamesFilter = None,
        device: Any = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        pos_slice: Any = None,
        return_cache_object: bool = True,
        **model_kwargs: Any,
    ) -> Tuple[Any, Union[ActivationCache, Dict[str, Any]]]:
        """Run the model and return ``(output, cache)``; the cache holds every activation
        selected by ``names_filter`` (None: all; a name; a list; a predicate), keyed by hook
        name in firing order. Points without hooks are copied by the engine directly."""
        if incl_bwd:
            raise NotImplementedError(
                "run_with_cache(incl_bwd=True) needs gradients, and glassbox has no autograd; "
                "cache forward activations only"
            )
        keep = _make_names_filter(names_filter)
        pos_slice = Slice.unwrap(pos_slice)
        req = _CacheRequest(keep)
        python_cache = req.python

        def save(tensor: Any, hook: HookPoint) -> None:
            python_cache[hook.name] = tensor

        with self.hooks(reset_hooks_end=reset_hooks_end, clear_contexts=clear_contexts):
            for name, hp in self.hook_dict.items():
                if keep(name) and (hp.fwd_hooks or name == "hook_tokens"):
                    hp.add_hook(save, level=self.context_level)
            self.is_caching = True
            prev = self._cache_request
            self._cache_request = req
            try:
                out = self.forward(*model_args, **model_kwargs)
            finally:
                self._cache_request = prev
        cache_dict: Dict[str, Any] = {}
        for name in req.order:
            if name in python_cache:
                val = python_cache[name]
                if not (is_torch(val) or isinstance(val, np.ndarray)):
                    val = np.asarray(val)
            elif name in req.fast:
                val = wrap(req.fast[name], req.torch_mode)
            else:
                continue
            if req.torch_mode and isinstance(val, np.ndarray):
                val = wrap(val, True)
            cache_dict[name] = _store_activation(val, name, remove_batch_dim, pos_slice, device)
        if return_cache_object:
            return out, ActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)
        return out, cache_dict

    def input_to_embed(
        self,
        input: Any,
        prepend_bos: Optional[bool] = USE_DEFAULT_VALUE,
        padding_side: Optional[str] = USE_DEFAULT_VALUE,
        attention_mask: Any = None,
        past_kv_cache: Any = None,
    ) -> Tuple[Any, Any, Any, Any]:
        """What enters block 0 (TransformerLens's ``input_to_embed``): ``(residual [batch, pos,
        d_model], tokens [batch, pos], shortformer_pos_embed or None, attention_mask or None)``.
        ``hook_embed`` / ``hook_pos_embed`` hooks run. The mask is the one a forward pass would use
        (left padding or an explicit mask), else None."""
        if past_kv_cache is not None:
            raise NotImplementedError("past_kv_cache is not supported by input_to_embed")
        torch_mode = wants_torch(input)
        with LocallyOverridenDefaults(self, prepend_bos=prepend_bos, padding_side=padding_side):
            tokens, mask = self._input_to_tokens(input, attention_mask)
        residual = self.forward(wrap(tokens, torch_mode), stop_at_layer=0, attention_mask=wrap(mask, torch_mode),
                                prepend_bos=prepend_bos, padding_side=padding_side)
        sf = None
        if self.cfg.positional_embedding_type == "shortformer":
            pos = np.arange(tokens.shape[1])[None] if mask is None else np.maximum(np.cumsum(mask, axis=1) - 1, 0)
            W_pos = self.pos_embed.param_np("W_pos")
            sf = np.broadcast_to(W_pos[pos], (*tokens.shape, W_pos.shape[1])).astype(np.float32)
            if mask is not None:
                sf = sf * (mask[..., None] != 0)
            sf = wrap(np.ascontiguousarray(sf), torch_mode)
        return wrap(residual, torch_mode), wrap(tokens, torch_mode), sf, wrap(mask, torch_mode)

    def get_pos_offset(self, past_kv_cache: Any, batch_size: int) -> int:
        """Positions already in ``past_kv_cache`` (0 without one), checked against ``batch_size``:
        where the next tokens' positions start (TransformerLens's ``get_pos_offset``)."""
        if past_kv_cache is None:
            return 0
        entry = past_kv_cache[0]
        if entry.batch_size != batch_size:
            raise ValueError(f"the KV cache holds a batch of {entry.batch_size}, the input a batch of {batch_size}")
        return len(entry)

    def move_model_modules_to_device(self) -> None:
        """TransformerLens spreads blocks over ``cfg.n_devices`` devices; glassbox computes on the
        CPU, so this only checks that ``cfg.device`` is the CPU (``RuntimeError`` otherwise)."""
        from glassbox.utilities.devices import check_device

        check_device(self.cfg.device, "cfg.device")
