"""``ActivationCache``: the activations of one run, keyed by hook name.

Returned by ``HookedTransformer.run_with_cache``. Dict-like (``keys``, ``values``,
``items``, ``in``, ``len``) with TransformerLens's shorthand indexing:

>>> cache["blocks.0.attn.hook_pattern"]      # doctest: +SKIP  exact name
>>> cache["pattern", 0]                      # doctest: +SKIP  same, via utils.get_act_name
>>> cache["resid_post", -1]                  # doctest: +SKIP  negative layer = from the end
>>> cache["scale", 3, "ln1"]                 # doctest: +SKIP  blocks.3.ln1.hook_scale

Shapes are those of the hook points ([batch, pos, d_model], [batch, head, query_pos,
key_pos], …) or without the batch axis after ``remove_batch_dim()``. Entries are NumPy
arrays or torch tensors (see :mod:`glassbox.arrays`); the analysis methods answer in
the same kind. The usual source of bugs: forgetting whether the batch axis is there
(``has_batch_dim``) — ``*bp`` in shapes below means ``[batch, pos]``, ``[pos]`` or ``[]``.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from glassbox import utils
from glassbox.arrays import is_torch, to_numpy, wrap
from glassbox.utils import Slice, SliceInput


class ActivationCache:
    """Cached activations of a run (see module docstring)."""

    def __init__(self, cache_dict: Dict[str, Any], model: Any, has_batch_dim: bool = True):
        self.cache_dict = cache_dict
        self.model = model
        self.has_batch_dim = has_batch_dim
        self.has_embed = "hook_embed" in cache_dict
        self.has_pos_embed = "hook_pos_embed" in cache_dict

    # -- dict interface -------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str) or not isinstance(key, tuple):
            if key in self.cache_dict:
                return self.cache_dict[key]
            if isinstance(key, str):
                return self._lookup(utils.get_act_name(key))
            raise KeyError(key)
        if len(key) > 1 and key[1] is not None and isinstance(key[1], (int, np.integer)) and key[1] < 0:
            key = (key[0], self.model.cfg.n_layers + int(key[1]), *key[2:])
        return self._lookup(utils.get_act_name(*key))

    def _lookup(self, name: str) -> Any:
        try:
            return self.cache_dict[name]
        except KeyError:
            raise KeyError(f"{name!r} is not in the cache (it has {len(self.cache_dict)} entries)") from None

    def __contains__(self, key: Any) -> bool:
        return key in self.cache_dict

    def __len__(self) -> int:
        return len(self.cache_dict)

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def keys(self):
        return self.cache_dict.keys()

    def values(self):
        return self.cache_dict.values()

    def items(self):
        return self.cache_dict.items()

    def __repr__(self) -> str:
        from glassbox.display import cache_text

        return cache_text(self)

    def _repr_html_(self) -> str:
        from glassbox.display import cache_html

        return cache_html(self)

    # -- batch handling -------------------------------------------------------------------
    def _batch_size(self) -> int:
        for v in self.cache_dict.values():
            if v.ndim > 0:
                return int(v.shape[0])
        raise ValueError("Cannot find batch dim")

    def remove_batch_dim(self) -> "ActivationCache":
        """Drop the batch axis of every entry (batch size must be 1). Returns self."""
        if self.has_batch_dim:
            batch_size = self._batch_size()
            assert batch_size == 1, f"Cannot remove batch dimension from cache with batch size {batch_size}"
            for key, value in self.cache_dict.items():
                if value.ndim > 0 and value.shape[0] == 1:
                    self.cache_dict[key] = value[0]
            self.has_batch_dim = False
        else:
            logging.warning("Tried removing batch dimension after already having removed it.")
        return self

    def apply_slice_to_batch_dim(self, batch_slice: Union[Slice, SliceInput]) -> "ActivationCache":
        """A new cache with ``batch_slice`` applied to the batch axis."""
        if not isinstance(batch_slice, Slice):
            batch_slice = Slice(batch_slice)
        assert self.has_batch_dim, "Cannot index into a cache without a batch dim"
        keep_batch = batch_slice.mode != "int" and self.has_batch_dim
        n = self._batch_size()
        sliced = {
            k: (batch_slice.apply(v, dim=0) if v.ndim > 0 and v.shape[0] == n else v)
            for k, v in self.cache_dict.items()
        }
        return ActivationCache(sliced, self.model, has_batch_dim=keep_batch)

    def to(self, device: Any, move_model: Optional[bool] = None) -> "ActivationCache":
        """Move torch entries to ``device`` (NumPy entries stay as they are). Returns self."""
        for k, v in self.cache_dict.items():
            if is_torch(v):
                self.cache_dict[k] = v.to(device)
        return self

    def toggle_autodiff(self, mode: bool = False) -> None:
        logging.warning("glassbox has no autograd; toggle_autodiff does nothing")

    # -- helpers --------------------------------------------------------------------------
    def _torch(self) -> bool:
        return any(is_torch(v) for v in self.cache_dict.values())

    def _np(self, key: Any) -> np.ndarray:
        return np.asarray(to_numpy(self[key]), dtype=np.float32)

    def _out(self, arr: np.ndarray, like: Any = None) -> Any:
        return wrap(np.ascontiguousarray(arr), self._torch() or is_torch(like))

    @property
    def _n_layers(self) -> int:
        return self.model.cfg.n_layers

    # -- analysis -------------------------------------------------------------------------
    def stack_activation(self, activation_name: str, layer: int = -1, sublayer_type: Optional[str] = None) -> Any:
        """Stack ``cache[(activation_name, l, sublayer_type)]`` for l < layer → [l, ...]."""
        if layer is None or layer == -1:
            layer = self._n_layers
        return self._out(np.stack([self._np((activation_name, l, sublayer_type)) for l in range(layer)]))

    def accumulated_resid(
        self,
        layer: Optional[int] = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: Union[Slice, SliceInput] = None,
        mlp_input: bool = False,
        return_labels: bool = False,
    ) -> Any:
        """Residual stream after each layer (logit-lens stack) → [n, *bp, d_model]."""
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        L = self._n_layers
        if layer is None or layer == -1:
            layer = L
        parts, labels = [], []
        for l in range(layer + 1):
            if l == L:
                parts.append(self._np(("resid_post", L - 1)))
                labels.append("final_post")
                continue
            parts.append(self._np(("resid_pre", l)))
            labels.append(f"{l}_pre")
            if (incl_mid and l < layer) or (mlp_input and l == layer):
                parts.append(self._np(("resid_mid", l)))
                labels.append(f"{l}_mid")
        stack = np.stack([pos_slice.apply(p, dim=-2) for p in parts])
        if apply_ln:
            stack = self._apply_ln_np(stack, layer, pos_slice=pos_slice, mlp_input=mlp_input, recompute_ln=layer == L)
        out = self._out(stack)
        return (out, labels) if return_labels else out

    def decompose_resid(
        self,
        layer: Optional[int] = None,
        mlp_input: bool = False,
        mode: str = "all",
        apply_ln: bool = False,
        pos_slice: Union[Slice, SliceInput] = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Any:
        """Residual stream as a sum of its components: embed, pos_embed, each layer's
        attn_out and mlp_out → [n, *bp, d_model]."""
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        L = self._n_layers
        if layer is None or layer == -1:
            layer = L
        assert layer is not None
        parts, labels = [], []
        if incl_embeds:
            if self.has_embed:
                parts.append(self._np("hook_embed"))
                labels.append("embed")
            if self.has_pos_embed:
                parts.append(self._np("hook_pos_embed"))
                labels.append("pos_embed")
        for l in range(layer):
            if mode != "mlp":
                parts.append(self._np(("attn_out", l)))
                labels.append(f"{l}_attn_out")
            if mode != "attn":
                parts.append(self._np(("mlp_out", l)))
                labels.append(f"{l}_mlp_out")
        if mlp_input and mode != "mlp":
            parts.append(self._np(("attn_out", layer)))
            labels.append(f"{layer}_attn_out")
        stack = np.stack([pos_slice.apply(p, dim=-2) for p in parts])
        if apply_ln:
            stack = self._apply_ln_np(stack, layer, pos_slice=pos_slice, mlp_input=mlp_input)
        out = self._out(stack)
        return (out, labels) if return_labels else out

    def compute_head_results(self) -> None:
        """Fill ``blocks.l.attn.hook_result`` = per-head z·W_O (without b_O)."""
        if "blocks.0.attn.hook_result" in self.cache_dict:
            logging.warning("Tried to compute head results when they were already cached")
            return
        torch_mode = self._torch()
        for l in range(self._n_layers):
            z = self._np(("z", l))  # [*bp, H, d]
            W_O = np.asarray(to_numpy(self.model.blocks[l].attn.W_O), dtype=np.float32)  # [H, d, D]
            self.cache_dict[f"blocks.{l}.attn.hook_result"] = wrap(
                np.ascontiguousarray(np.einsum("...hd,hdm->...hm", z, W_O)), torch_mode
            )

    def stack_head_results(
        self,
        layer: int = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: Union[Slice, SliceInput] = None,
        apply_ln: bool = False,
    ) -> Any:
        """Per-head outputs of all heads in layers < layer → [l·H (+1), *bp, d_model]."""
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        L = self._n_layers
        if layer is None or layer == -1:
            layer = L
        if layer > 0 and "blocks.0.attn.hook_result" not in self.cache_dict:
            logging.warning("Tried to stack head results when they weren't cached. Computing head results now")
            self.compute_head_results()
        parts, labels = [], []
        for l in range(layer):
            res = self._np(("result", l))  # [*bp, H, D]
            res = np.moveaxis(res, -2, 0)  # [H, *bp, D]
            parts.append(res)
            labels += [f"L{l}H{h}" for h in range(res.shape[0])]
        if parts:
            stack = np.concatenate(parts, axis=0)
            stack = pos_slice.apply(stack, dim=-2)
        else:
            shape = self._np("hook_embed").shape
            stack = pos_slice.apply(np.zeros((0, *shape), np.float32), dim=-2)
        if incl_remainder:
            resid = self._np(("resid_pre", layer)) if layer < L else self._np(("resid_post", L - 1))
            remainder = pos_slice.apply(resid, dim=-2) - stack.sum(0)
            stack = np.concatenate([stack, remainder[None]], axis=0)
            labels.append("remainder")
        if apply_ln:
            stack = self._apply_ln_np(stack, layer, pos_slice=pos_slice)
        out = self._out(stack)
        return (out, labels) if return_labels else out

    # -- neurons and the full decomposition ------------------------------------------------
    def get_neuron_results(
        self,
        layer: int,
        neuron_slice: Union[Slice, SliceInput] = None,
        pos_slice: Union[Slice, SliceInput] = None,
        project_output_onto: Any = None,
    ) -> Any:
        """Each neuron's contribution to the residual stream at ``layer``: ``post[..., n] *
        W_out[n]`` → [*bp, neurons, d_model] (not cached: cheap to recompute, big to keep).

        ``project_output_onto`` ([d_model] or [d_model, k]) is contracted with ``W_out`` first,
        so the [*bp, d_mlp, d_model] intermediate is never formed: the result is [*bp, neurons]
        or [*bp, neurons, k]. An int ``pos_slice`` / ``neuron_slice`` drops that axis."""
        neuron_slice = neuron_slice if isinstance(neuron_slice, Slice) else Slice(neuron_slice)
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        acts = pos_slice.apply(self._np(("post", layer, "mlp")), dim=-2)
        acts = neuron_slice.apply(acts, dim=-1)
        W_out = neuron_slice.apply(self._W_out(layer), dim=0)
        if project_output_onto is None:
            out = acts[..., None] * W_out
        else:
            proj = W_out @ np.asarray(to_numpy(project_output_onto), dtype=np.float32)
            out = acts * proj if proj.ndim == 1 else acts[..., None] * proj
        return self._out(out.astype(np.float32), project_output_onto)

    def stack_neuron_results(
        self,
        layer: int,
        pos_slice: Union[Slice, SliceInput] = None,
        neuron_slice: Union[Slice, SliceInput] = None,
        return_labels: bool = False,
        incl_remainder: bool = False,
        apply_ln: bool = False,
        project_output_onto: Any = None,
    ) -> Any:
        """Every neuron's result in layers < ``layer`` → [n_neurons (+1), *bp, d_model], labels
        ``"L{l}N{n}"``; ``incl_remainder`` adds ``resid_post[layer-1]`` minus their sum. With
        ``project_output_onto`` ([d_model] or [d_model, k]) the last axis is the projection (the
        per-neuron d_model vectors are never formed, also with ``apply_ln``, which then uses the
        cached scale analytically: LN_s(a W) p = a / s (W p - mean(W) sum(p)))."""
        L = self._n_layers
        if layer is None or layer == -1:
            layer = L
        neuron_slice = neuron_slice if isinstance(neuron_slice, Slice) else Slice(neuron_slice)
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        proj, squeeze = _projection_2d(project_output_onto)
        ids = np.atleast_1d(neuron_slice.apply(np.arange(self.model.cfg.d_mlp), dim=0))
        labels = [f"L{l}N{h}" for l in range(layer) for h in ids]
        base = pos_slice.apply(self._np("hook_embed"), dim=-2)  # [*bp, d_model]
        lead = base.shape[:-1]
        width = proj.shape[-1] if proj is not None else self.model.cfg.d_model
        if apply_ln and proj is not None:
            scale = self._ln_scale(layer, False, pos_slice)
            centre = self.model.cfg.normalization_type in ("LN", "LNPre")
            parts = []
            for l in range(layer):
                W = neuron_slice.apply(self._W_out(l), dim=0)
                a = neuron_slice.apply(pos_slice.apply(self._np(("post", l, "mlp")), dim=-2), dim=-1)
                if neuron_slice.mode == "int":  # one neuron: keep its axis for the algebra below
                    W, a = W[None], a[..., None]
                lin = W @ proj - (W.mean(-1)[:, None] * proj.sum(0)[None, :] if centre else 0.0)
                parts.append(np.moveaxis(np.atleast_1d((a / scale)[..., None] * lin).reshape(*lead, -1, width), -2, 0))
            stack = np.concatenate(parts, axis=0) if parts else np.zeros((0, *lead, width), np.float32)
            if incl_remainder:
                resid = pos_slice.apply(self._np(("resid_post", layer - 1)), dim=-2)[None]
                rem = self._apply_ln_np(resid, layer, pos_slice=pos_slice)[0] @ proj
                stack = np.concatenate([stack, (rem - stack.sum(0))[None]], axis=0)
                labels.append("remainder")
        else:
            parts = []
            for l in range(layer):
                r = np.asarray(to_numpy(self.get_neuron_results(l, neuron_slice=neuron_slice, pos_slice=pos_slice,
                                                                project_output_onto=proj)))
                parts.append(np.moveaxis(r.reshape(*lead, -1, width), -2, 0))
            stack = np.concatenate(parts, axis=0) if parts else np.zeros((0, *lead, width), np.float32)
            if incl_remainder:
                rem = pos_slice.apply(self._np(("resid_post", layer - 1)), dim=-2)
                if proj is not None:
                    rem = rem @ proj
                stack = np.concatenate([stack, (rem - stack.sum(0))[None]], axis=0)
                labels.append("remainder")
            if apply_ln:
                stack = self._apply_ln_np(stack, layer, pos_slice=pos_slice)
        if squeeze:
            stack = stack[..., 0]
        out = self._out(stack.astype(np.float32), project_output_onto)
        return (out, labels) if return_labels else out

    def get_full_resid_decomposition(
        self,
        layer: Optional[int] = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice: Union[Slice, SliceInput] = None,
        return_labels: bool = False,
        project_output_onto: Any = None,
    ) -> Any:
        """The residual stream before ``layer`` (its MLP if ``mlp_input``) as a sum of every
        head's result, every neuron's result (or each MLP's output if not ``expand_neurons``),
        embed, pos_embed and the accumulated biases → [n_components, *bp, d_model], in that
        order; ``project_output_onto`` and ``apply_ln`` as in :meth:`stack_neuron_results`."""
        L = self._n_layers
        if layer is None or layer == -1:
            layer = L
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        proj, squeeze = _projection_2d(project_output_onto)
        folded = apply_ln and proj is not None

        def finish(stack: np.ndarray) -> np.ndarray:
            if folded:
                return self._apply_ln_np(stack, layer, pos_slice=pos_slice, mlp_input=mlp_input) @ proj
            return stack @ proj if proj is not None else stack

        heads, labels = self.stack_head_results(layer + (1 if mlp_input else 0), pos_slice=pos_slice, return_labels=True)
        parts = [finish(np.asarray(to_numpy(heads), dtype=np.float32))]
        labels = list(labels)
        if not self.model.cfg.attn_only and layer > 0:
            if expand_neurons:
                neurons, nl = self.stack_neuron_results(layer, pos_slice=pos_slice, return_labels=True,
                                                        apply_ln=folded, project_output_onto=proj)
                parts.append(np.asarray(to_numpy(neurons), dtype=np.float32))
            else:
                mlps, nl = self.decompose_resid(layer, mlp_input=mlp_input, pos_slice=pos_slice, incl_embeds=False,
                                                mode="mlp", return_labels=True)
                parts.append(finish(np.asarray(to_numpy(mlps), dtype=np.float32)))
            labels += nl
        for key, label, present in (("embed", "embed", self.has_embed), ("pos_embed", "pos_embed", self.has_pos_embed)):
            if present:
                parts.append(finish(pos_slice.apply(self._np(key), dim=-2)[None]))
                labels.append(label)
        bias = np.asarray(to_numpy(self.model.accumulated_bias(layer, mlp_input, include_mlp_biases=expand_neurons)),
                          dtype=np.float32)
        lead = parts[0].shape[1:-1]
        parts.append(finish(np.broadcast_to(bias, (1, *lead, bias.shape[-1])).copy()))
        labels.append("bias")
        stack = np.concatenate(parts, axis=0)
        if apply_ln and not folded:
            stack = self._apply_ln_np(stack, layer, pos_slice=pos_slice, mlp_input=mlp_input)
        if squeeze:
            stack = stack[..., 0]
        out = self._out(stack.astype(np.float32), project_output_onto)
        return (out, labels) if return_labels else out

    def _W_out(self, layer: int) -> np.ndarray:
        return np.asarray(self.model.blocks[layer].mlp.param_np("W_out"), dtype=np.float32)

    def _ln_scale(self, layer: int, mlp_input: bool, pos_slice: Slice) -> np.ndarray:
        key = "ln_final.hook_scale" if layer in (None, -1, self._n_layers) else f"blocks.{layer}.ln{2 if mlp_input else 1}.hook_scale"
        return pos_slice.apply(self._np(key), dim=-2)

    def apply_ln_to_stack(
        self,
        residual_stack: Any,
        layer: Optional[int] = None,
        mlp_input: bool = False,
        pos_slice: Union[Slice, SliceInput] = None,
        batch_slice: Union[Slice, SliceInput] = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> Any:
        """Scale a stack of residual components as the norm before ``layer`` would
        (ln_final if layer is None / -1 / n_layers): centre (LN) and divide by the cached
        hook_scale; ``recompute_ln`` at the final layer recomputes ln_final per component."""
        arr = np.asarray(to_numpy(residual_stack), dtype=np.float32)
        out = self._apply_ln_np(arr, layer, mlp_input, pos_slice, batch_slice, has_batch_dim, recompute_ln)
        return wrap(np.ascontiguousarray(out), is_torch(residual_stack) or self._torch())

    def _apply_ln_np(
        self,
        stack: np.ndarray,
        layer: Optional[int],
        mlp_input: bool = False,
        pos_slice: Union[Slice, SliceInput] = None,
        batch_slice: Union[Slice, SliceInput] = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> np.ndarray:
        cfg = self.model.cfg
        if cfg.normalization_type not in ("LN", "LNPre", "RMS", "RMSPre"):
            return stack
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        batch_slice = batch_slice if isinstance(batch_slice, Slice) else Slice(batch_slice)
        L = cfg.n_layers
        if layer is None or layer == -1:
            layer = L
        if has_batch_dim and self.has_batch_dim:
            stack = batch_slice.apply(stack, dim=1)
        if recompute_ln and layer == L:
            return self._recompute_final_ln(stack)
        if cfg.normalization_type in ("LN", "LNPre"):
            stack = stack - stack.mean(-1, keepdims=True)
        if layer == L:
            scale = self._np("ln_final.hook_scale")
        else:
            scale = self._np(f"blocks.{layer}.ln{2 if mlp_input else 1}.hook_scale")
        scale = pos_slice.apply(scale, dim=-2)
        if self.has_batch_dim:
            scale = batch_slice.apply(scale)
        return stack / scale

    def _recompute_final_ln(self, stack: np.ndarray) -> np.ndarray:
        from glassbox.components import final_norm_kind

        cfg = self.model.cfg
        kind = final_norm_kind(cfg)
        x = stack.astype(np.float32)
        if kind in ("LN", "LNPre"):
            x = x - x.mean(-1, keepdims=True)
            x = x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.eps)
        elif kind in ("RMS", "RMSPre"):
            x = x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.eps)
        ln = getattr(self.model, "ln_final", None)
        if ln is not None and "w" in getattr(ln, "_params", {}):
            x = x * ln._params["w"]
            if "b" in ln._params:
                x = x + ln._params["b"]
        return x.astype(np.float32)

    def logit_attrs(
        self,
        residual_stack: Any,
        tokens: Any,
        incorrect_tokens: Any = None,
        pos_slice: Union[Slice, SliceInput] = None,
        batch_slice: Union[Slice, SliceInput] = None,
        has_batch_dim: bool = True,
    ) -> Any:
        """Logit attribution of each component: ln_final-scaled stack · unembedding
        direction of ``tokens`` (minus that of ``incorrect_tokens``) → [n, *bp]."""
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        batch_slice = batch_slice if isinstance(batch_slice, Slice) else Slice(batch_slice)
        if isinstance(tokens, str):
            tokens = self.model.to_single_token(tokens)
        if isinstance(incorrect_tokens, str):
            incorrect_tokens = self.model.to_single_token(incorrect_tokens)
        dirs = np.asarray(to_numpy(self.model.tokens_to_residual_directions(_tok_np(tokens))), dtype=np.float32)
        if incorrect_tokens is not None:
            inc = np.asarray(
                to_numpy(self.model.tokens_to_residual_directions(_tok_np(incorrect_tokens))), dtype=np.float32
            )
            if dirs.shape != inc.shape:
                raise ValueError(
                    f"tokens and incorrect_tokens must have the same shape, got {dirs.shape[:-1]} and {inc.shape[:-1]}"
                )
            dirs = dirs - inc
        scaled = self._apply_ln_np(
            np.asarray(to_numpy(residual_stack), dtype=np.float32),
            -1,
            pos_slice=pos_slice,
            batch_slice=batch_slice,
            has_batch_dim=has_batch_dim,
        )
        out = (scaled * dirs).sum(-1)
        return wrap(np.ascontiguousarray(out.astype(np.float32)), is_torch(residual_stack) or self._torch())


def _projection_2d(project: Any) -> Tuple[Optional[np.ndarray], bool]:
    """``project_output_onto`` as a float32 [d_model, k] array, and whether it was 1-d."""
    if project is None:
        return None, False
    p = np.asarray(to_numpy(project), dtype=np.float32)
    if p.ndim == 1:
        return p[:, None], True
    if p.ndim != 2:
        raise ValueError(f"project_output_onto must be [d_model] or [d_model, k], got shape {p.shape}")
    return p, False


def _tok_np(tokens: Any) -> Any:
    if isinstance(tokens, (int, np.integer)):
        return int(tokens)
    arr = np.asarray(to_numpy(tokens))
    return arr if arr.size > 1 else int(arr.reshape(-1)[0])


__all__ = ["ActivationCache"]
