"""Lightweight module tree of a HookedTransformer: weights and hook points.

These objects mirror TransformerLens's components (``Embed``, ``PosEmbed``,
``TransformerBlock``, ``Attention``/``GroupedQueryAttention``, ``MLP``/``GatedMLP``,
``LayerNorm``/``LayerNormPre``/``RMSNorm``/``RMSNormPre``, ``Unembed``) so that
``model.blocks[3].attn.W_Q``, ``model.blocks[0].attn.hook_z`` and ``model.embed.W_E``
work. They hold parameters (NumPy float32 arrays, TransformerLens names and
layouts) and :class:`~glassbox.hook_points.HookPoint` objects, but do no compute: the
forward pass runs in the C engine, which keeps references to these very arrays.

Reading a parameter gives the array (a torch tensor sharing its memory when torch is
the active array type, see :mod:`glassbox.arrays`), so in-place edits such as
``model.blocks[0].attn.W_Q[0] = 0`` or ``W_Q.data.zero_()`` change the model.
Assigning a parameter copies the new values into the existing buffer when the shape
matches, and otherwise replaces the array (the engine is then rebuilt lazily).
GQA models keep ``_W_K``/``_W_V``/``_b_K``/``_b_V`` with ``n_key_value_heads`` heads;
``W_K``/``W_V``/``b_K``/``b_V`` read them repeat-interleaved to ``n_heads`` (a copy).

Weights kept in their stored dtype (``from_pretrained(..., dtype="bfloat16")``, GGUF) are
:class:`~glassbox.loading.stored.StoredMatrix` objects. Reading one gives a float32 copy in
TransformerLens's layout, with any virtual weight processing applied (see
:mod:`glassbox.loading.virtual`); as a NumPy array that copy is read-only, so an in-place edit
raises instead of silently doing nothing. Assigning to such a parameter raises ``TypeError``:
stored-dtype weights cannot be edited (load with ``dtype="float32"`` to edit weights).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from glassbox.arrays import asarray_f32, to_numpy, wants_torch, wrap
from glassbox.hook_points import HookPoint, Module
from glassbox.loading.stored import StoredMatrix


class Component(Module):
    """A module with named parameters stored as float32 NumPy arrays."""

    #: parameter names in state-dict order
    PARAMS: tuple = ()

    def __init__(self, cfg: Any):
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "_on_replace", None)
        object.__setattr__(self, "_materialise", None)  # (name, StoredMatrix) -> TL float32 view
        object.__setattr__(self, "_prefix", "")  # state-dict name prefix, e.g. "blocks.0.attn."
        self.cfg = cfg

    # parameter access --------------------------------------------------------------------
    def param_np(self, key: str) -> np.ndarray:
        """Parameter ``key`` as a float32 NumPy array in TL layout: the buffer itself, or a
        (processed) copy for a weight kept in its stored dtype."""
        v = self._params[key]
        if isinstance(v, StoredMatrix):
            fn = self.__dict__.get("_materialise")
            return fn(self.__dict__.get("_prefix", "") + key, v) if fn is not None else v.to_tl()
        return v

    def __getattr__(self, key: str) -> Any:
        params = self.__dict__.get("_params")
        if params is not None and key in params:
            if isinstance(params[key], StoredMatrix):
                arr = self.param_np(key)
                arr.flags.writeable = False  # a copy: in-place edits could not reach the model
                return wrap(arr, wants_torch())
            return wrap(params[key], wants_torch())
        raise AttributeError(f"{type(self).__name__!s} has no attribute {key!r}")

    def __setattr__(self, key: str, value: Any) -> None:
        params = self.__dict__.get("_params")
        if params is not None and key in type(self).PARAMS:
            self.set_param(key, value)
        else:
            object.__setattr__(self, key, value)

    def set_param(self, key: str, value: Any) -> None:
        """Store ``value`` as parameter ``key`` (copy into the buffer if shapes match)."""
        old = self._params.get(key)
        if isinstance(old, StoredMatrix):
            raise TypeError(
                f"{self.__dict__.get('_prefix', '')}{key} is kept in its stored dtype ({old.dtype}) and "
                f"cannot be assigned or edited in place; load the model with dtype='float32' to edit "
                f"weights")
        new = to_numpy(value)
        if old is not None and old.shape == new.shape:
            if not np.shares_memory(old, new):
                old[...] = new
            return
        self._params[key] = np.array(new, dtype=np.float32, order="C")
        cb = self.__dict__.get("_on_replace")
        if cb is not None:
            cb()

    def named_parameters_np(self) -> Dict[str, np.ndarray]:
        return {k: self.param_np(k) for k in type(self).PARAMS if k in self._params}

    def __dir__(self):
        return list(super().__dir__()) + list(self._params)



class Identity(Module):
    """Stands in for ``nn.Identity`` (normalization_type None)."""


class Embed(Component):
    PARAMS = ("W_E",)  # W_E: [d_vocab, d_model]


class PosEmbed(Component):
    PARAMS = ("W_pos",)  # W_pos: [n_ctx, d_model]


class Unembed(Component):
    PARAMS = ("W_U", "b_U")  # W_U: [d_model, d_vocab_out], b_U: [d_vocab_out]

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        self.hook_in = HookPoint()  # [batch, pos, d_model]
        self.hook_out = HookPoint()  # [batch, pos, d_vocab_out]


class _Norm(Component):
    def __init__(self, cfg: Any):
        super().__init__(cfg)
        self.eps = cfg.eps
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]


class LayerNorm(_Norm):
    PARAMS = ("w", "b")


class LayerNormPre(_Norm):
    PARAMS = ()


class RMSNorm(_Norm):
    PARAMS = ("w",)


class RMSNormPre(_Norm):
    PARAMS = ()


NORM_CLASSES = {"LN": LayerNorm, "LNPre": LayerNormPre, "RMS": RMSNorm, "RMSPre": RMSNormPre}


def make_norm(kind: Optional[str], cfg: Any) -> Module:
    if kind is None:
        return Identity()
    try:
        return NORM_CLASSES[kind](cfg)
    except KeyError:
        raise ValueError(f"Invalid normalization_type passed in: {kind}") from None


def final_norm_kind(cfg: Any) -> Optional[str]:
    """TransformerLens's choice of ln_final class for a config."""
    nt = cfg.normalization_type
    if nt in ("RMS", "RMSPre", None):
        return nt
    if nt == "LN":
        return "RMS" if cfg.final_rms else "LN"
    if nt == "LNPre":
        return "RMSPre" if cfg.final_rms else "LNPre"
    raise ValueError(f"Invalid normalization_type passed in: {nt}")


class Attention(Component):
    """Multi-head attention weights: W_Q/W_K/W_V [H, D, d], W_O [H, d, D]."""

    PARAMS = ("W_Q", "W_O", "b_Q", "b_O", "W_K", "W_V", "b_K", "b_V")

    def __init__(self, cfg: Any, layer_id: Optional[int] = None):
        super().__init__(cfg)
        self.layer_id = layer_id
        self.attn_scale = float(cfg.attn_scale) if cfg.use_attn_scale else 1.0
        if cfg.scale_attn_by_inverse_layer_idx and layer_id is not None:
            self.attn_scale *= layer_id + 1
        self.hook_k = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_q = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_v = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_z = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head_index, query_pos, key_pos]
        self.hook_pattern = HookPoint()  # [batch, head_index, query_pos, key_pos]
        self.hook_result = HookPoint()  # [batch, pos, head_index, d_model]
        if cfg.positional_embedding_type == "rotary":
            self.hook_rot_k = HookPoint()  # [batch, pos, head_index, d_head]
            self.hook_rot_q = HookPoint()  # [batch, pos, head_index, d_head]

    @property
    def QK(self):
        """QK circuit of every head: ``FactoredMatrix(W_Q, W_K^T)``, ``[n_heads, d_model, d_model]``
        of rank d_head (GQA: W_K repeated to n_heads). ``attn.QK[h]`` is head h's."""
        return _factored(self.W_Q, _transpose(self.W_K))

    @property
    def OV(self):
        """OV circuit of every head: ``FactoredMatrix(W_V, W_O)``, ``[n_heads, d_model, d_model]``
        of rank d_head (GQA: W_V repeated to n_heads). ``attn.OV[h]`` is head h's."""
        return _factored(self.W_V, self.W_O)


class GroupedQueryAttention(Attention):
    """GQA: K/V stored un-repeated as _W_K/_W_V [G, D, d], _b_K/_b_V [G, d]."""

    PARAMS = ("W_Q", "W_O", "b_Q", "b_O", "_W_K", "_W_V", "_b_K", "_b_V")

    def _repeat(self, key: str) -> Any:
        arr = self.param_np(key)
        reps = self.cfg.n_heads // self.cfg.n_key_value_heads
        return wrap(np.ascontiguousarray(np.repeat(arr, reps, axis=0)), wants_torch())

    @property
    def repeat_kv_heads(self) -> int:
        return self.cfg.n_heads // self.cfg.n_key_value_heads

    W_K = property(lambda self: self._repeat("_W_K"), lambda self, v: self.set_param("_W_K", v))
    W_V = property(lambda self: self._repeat("_W_V"), lambda self, v: self.set_param("_W_V", v))
    b_K = property(lambda self: self._repeat("_b_K"), lambda self, v: self.set_param("_b_K", v))
    b_V = property(lambda self: self._repeat("_b_V"), lambda self, v: self.set_param("_b_V", v))

    def __setattr__(self, key: str, value: Any) -> None:
        if key in ("W_K", "W_V", "b_K", "b_V") and self.__dict__.get("_params") is not None:
            self.set_param("_" + key, value)
        else:
            super().__setattr__(key, value)


class MLP(Component):
    """W_in [D, M], b_in [M], W_out [M, D], b_out [D]."""

    PARAMS = ("W_in", "b_in", "W_out", "b_out")

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        self.act_fn_name = cfg.act_fn
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]


class GatedMLP(Component):
    """SwiGLU-style: W_in (up) [D, M], W_gate [D, M], W_out [M, D]."""

    PARAMS = ("W_in", "W_out", "W_gate", "b_in", "b_out")

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        self.act_fn_name = cfg.act_fn
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]  (gate pre-activation)
        self.hook_pre_linear = HookPoint()  # [batch, pos, d_mlp]  (up projection)
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]


class TransformerBlock(Module):
    """One residual block: ln1, attn, ln2, mlp and the block-level hook points."""

    def __init__(self, cfg: Any, block_index: int):
        self.cfg = cfg
        self.layer_id = block_index
        self.ln1 = make_norm(cfg.normalization_type, cfg)
        if not cfg.attn_only:
            self.ln2 = make_norm(cfg.normalization_type, cfg)
        gqa = cfg.n_key_value_heads is not None
        self.attn = (GroupedQueryAttention if gqa else Attention)(cfg, block_index)
        if not cfg.attn_only:
            self.mlp = GatedMLP(cfg) if cfg.gated_mlp else MLP(cfg)
        self.hook_attn_in = HookPoint()  # [batch, pos, n_heads, d_model]
        self.hook_q_input = HookPoint()  # [batch, pos, n_heads, d_model]
        self.hook_k_input = HookPoint()  # [batch, pos, n_kv_heads, d_model]
        self.hook_v_input = HookPoint()  # [batch, pos, n_kv_heads, d_model]
        self.hook_mlp_in = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        if not cfg.parallel_attn_mlp:
            self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]



def _transpose(x: Any) -> Any:
    from glassbox.utils import transpose

    return transpose(x)


def _factored(a: Any, b: Any) -> Any:
    """``FactoredMatrix(a, b)``: the product is never multiplied out (see glassbox.FactoredMatrix)."""
    from glassbox.FactoredMatrix import FactoredMatrix

    return FactoredMatrix(a, b)


__all__ = [
    "Component",
    "Identity",
    "Embed",
    "PosEmbed",
    "Unembed",
    "LayerNorm",
    "LayerNormPre",
    "RMSNorm",
    "RMSNormPre",
    "Attention",
    "GroupedQueryAttention",
    "MLP",
    "GatedMLP",
    "TransformerBlock",
    "make_norm",
    "final_norm_kind",
]
