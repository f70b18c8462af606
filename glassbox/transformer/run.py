"""The forward pass of :class:`~glassbox.HookedTransformer`: input handling, the per-run hook plan
handed to the engine, hook dispatch, and ``run_with_cache``.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from glassbox import utils
from glassbox.ActivationCache import ActivationCache
from glassbox.arrays import asarray_f32, is_torch, to_numpy, wants_torch, wrap
from glassbox.hook_points import HookPoint, NamesFilter, _make_names_filter, _store_activation
from glassbox.utils import USE_DEFAULT_VALUE, LocallyOverridenDefaults, Slice


class Output(NamedTuple):
    """``return_type="both"`` result."""

    logits: Any
    loss: Any


class _RunState:
    """Per-forward bookkeeping shared with the engine callback."""

    __slots__ = ("torch_mode", "site_names")

    def __init__(self, torch_mode: bool, site_names: Dict[Tuple[int, int], str]):
        self.torch_mode = torch_mode
        self.site_names = site_names


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
        raise ImportError(
            "glassbox's C extension (glassbox._C) is not built; run "
            "`python setup.py build_ext --inplace` or `pip install .`"
        ) from exc
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
    """Token input (tensor / ndarray / list of ints) → int64 ndarray, checked."""
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
    return np.ascontiguousarray(arr.astype(np.int64))


class RunMixin:
    """Part of :class:`glassbox.HookedTransformer` (see its docstring)."""

    def _input_to_tokens(self, input: Any, attention_mask: Any) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Tokens [B, P] int64 and the attention mask TL would use (or None)."""
        if isinstance(input, str) or (isinstance(input, list) and input and all(isinstance(s, str) for s in input)):
            tok = self._require_tokenizer("string input")
            tokens, _ = tok.encode_batch(
                input, prepend_bos=self.cfg.default_prepend_bos, padding_side=tok.padding_side, max_length=self.cfg.n_ctx
            )
        else:
            tokens = _as_tokens(input)
        if tokens.ndim == 1:
            tokens = tokens[None]
        mask = None
        if (self.tokenizer is not None and self.tokenizer.padding_side == "left") or attention_mask is not None:
            if attention_mask is None:
                mask = to_numpy(utils.get_attention_mask(self.tokenizer, tokens, self.cfg.default_prepend_bos))
            else:
                mask = np.asarray(to_numpy(attention_mask))
                if mask.ndim == 1:
                    mask = mask[None]
            if tuple(mask.shape) != tuple(tokens.shape):
                raise AssertionError(
                    f"Attention mask shape {tuple(mask.shape)} does not match tokens shape {tuple(tokens.shape)}"
                )
            mask = np.ascontiguousarray(mask.astype(np.int64))
        return tokens, mask

    def _validate_tokens(self, tokens: np.ndarray) -> None:
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape [batch, pos] or [pos], got {tuple(tokens.shape)}")
        if tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise ValueError(f"tokens must be non-empty, got shape {tuple(tokens.shape)}")
        V = int(self.embed._params["W_E"].shape[0])
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= V:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is out of range for d_vocab={V}")
        if self.cfg.positional_embedding_type in ("standard", "shortformer") and tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(f"sequence of {tokens.shape[1]} tokens is longer than n_ctx={self.cfg.n_ctx}")

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
        """
        if past_kv_cache is not None:
            raise NotImplementedError("past_kv_cache is not supported by glassbox yet")
        torch_mode = wants_torch(input)
        L = self.cfg.n_layers
        with LocallyOverridenDefaults(self, prepend_bos=prepend_bos, padding_side=padding_side):
            residual = None
            if start_at_layer is None:
                tok_np, mask = self._input_to_tokens(input, attention_mask)
                if self.cfg.use_hook_tokens:
                    tok_np = self._run_hook_tokens(tok_np, torch_mode)
                self._validate_tokens(tok_np)
                B, P = tok_np.shape
                start = 0
            else:
                if isinstance(input, (str, list)):
                    raise ValueError("with start_at_layer, input must be the residual stream [batch, pos, d_model]")
                residual = asarray_f32(input)
                if residual.ndim != 3 or residual.shape[-1] != self.cfg.d_model:
                    raise ValueError(
                        f"with start_at_layer, input must have shape [batch, pos, {self.cfg.d_model}], got {tuple(residual.shape)}"
                    )
                B, P = residual.shape[:2]
                start = start_at_layer + L if start_at_layer < 0 else start_at_layer
                if not 0 <= start <= L:
                    raise ValueError(f"start_at_layer={start_at_layer} is out of range for {L} layers")
                tok_np = _as_tokens(tokens) if tokens is not None else None
                if tok_np is not None and tok_np.ndim == 1:
                    tok_np = tok_np[None]
                mask = None
                if attention_mask is not None:
                    mask = np.ascontiguousarray(np.asarray(to_numpy(attention_mask)).astype(np.int64))
                    if mask.ndim == 1:
                        mask = mask[None]
            stop = None
            if stop_at_layer is not None:
                stop = stop_at_layer + L if stop_at_layer < 0 else stop_at_layer
                stop = max(0, min(stop, L))
            positions = None
            if mask is not None:
                positions = np.ascontiguousarray(np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int64))
            sf_pos = None
            if residual is not None and shortformer_pos_embed is not None:
                if self.cfg.positional_embedding_type != "shortformer":
                    raise ValueError("shortformer_pos_embed is only used by shortformer models "
                                     f"(positional_embedding_type={self.cfg.positional_embedding_type!r})")
                sf_pos = asarray_f32(shortformer_pos_embed)
            out = self._run_engine(
                tok_np if residual is None else None,
                residual,
                mask,
                positions,
                start,
                stop,
                return_type,
                torch_mode,
                B,
                P,
                shortformer_pos_embed=sf_pos,
            )
        if stop is not None:
            return wrap(out, torch_mode)
        if return_type is None:
            return None
        logits = out
        if return_type == "logits":
            return wrap(logits, torch_mode)
        if return_type not in ("loss", "both"):
            logging.warning(f"Invalid return_type passed in: {return_type}")
            return None
        if tok_np is None:
            raise AssertionError("tokens must be passed in if return_type is 'loss' or 'both'")
        logits_out = wrap(logits, torch_mode)
        loss = self.loss_fn(logits_out, wrap(tok_np, torch_mode), wrap(mask, torch_mode), per_token=loss_per_token)
        if return_type == "loss":
            return loss
        return Output(logits_out, loss)

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

    def _fired_names(self, engine, start: int, stop: Optional[int], tokens_path: bool, final: bool, unembed: bool) -> List[str]:
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
            names.append(name)
        return names

    def _run_engine(self, tokens, residual, mask, positions, start, stop, return_type, torch_mode, B, P,
                    shortformer_pos_embed=None):
        engine = self._get_engine()
        L = self.cfg.n_layers
        final = stop is None
        unembed = stop is None and return_type is not None
        stop_arg = None if stop is None or stop >= L else stop
        req = self._cache_request
        fired = self._fired_names(engine, start, stop, tokens is not None, final, unembed)
        hooks: List[Tuple[int, int]] = []
        cache: Dict[Tuple[int, int], np.ndarray] = {}
        run = _RunState(torch_mode, self._name_of)
        for name in fired:
            hp = self.hook_dict.get(name)
            key = self._site_of[name]
            if hp is not None and hp.fwd_hooks:
                hooks.append(key)
            elif req is not None and req.keep(name):
                arr = np.empty(tuple(engine.hook_shape(key[0], B, P)), dtype=np.float32)
                cache[key] = arr
                req.fast[name] = arr
        if req is not None:
            req.order = (["hook_tokens"] if tokens is not None and self.cfg.use_hook_tokens else []) + fired
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
        if hooks:
            kwargs["hooks"] = hooks
            kwargs["callback"] = self._dispatch
        prev = self._run
        self._run = run
        try:
            return engine.forward(tokens, **kwargs)
        finally:
            self._run = prev

    def _dispatch(self, site_id: int, layer: int, call_index: int, act: np.ndarray) -> Optional[np.ndarray]:
        """Engine callback: run the hooks of one point on ``act``."""
        run = self._run
        return self._run_point_hooks(run.site_names[(site_id, layer)], act)

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
