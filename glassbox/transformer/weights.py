"""Weights of a :class:`~glassbox.HookedTransformer`: state dicts, TransformerLens weight
processing, and the stacked weight properties (``W_Q``, ``W_U``, ``QK``, ``OV`` ...).
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Tuple

import numpy as np

from glassbox.arrays import to_numpy, wants_torch, wrap
from glassbox.components import Component
from glassbox.config.hooked_transformer_config import HookedTransformerConfig
from glassbox.loading.stored import StoredMatrix

#: state-dict entries TransformerLens has that are buffers, not parameters
_BUFFER_SUFFIXES = (".mask", ".IGNORE", ".rotary_sin", ".rotary_cos")


def _default_init(cfg: HookedTransformerConfig, seed: Optional[int]) -> Dict[str, np.ndarray]:
    """TransformerLens's "gpt2" init: N(0, initializer_range) for matrices, zero biases,
    unit norm weights. Used when glassbox.loading.init is unavailable."""
    from glassbox.loading.shapes import param_shapes

    rng = np.random.default_rng(seed)
    sd: Dict[str, np.ndarray] = {}
    for name, shape in param_shapes(cfg).items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf.lstrip("_").startswith("W_"):
            sd[name] = rng.normal(0.0, cfg.initializer_range, size=shape).astype(np.float32)
        elif leaf == "w":
            sd[name] = np.ones(shape, np.float32)
        else:
            sd[name] = np.zeros(shape, np.float32)
    return sd


class WeightsMixin:
    """Part of :class:`glassbox.HookedTransformer` (see its docstring)."""

    def init_weights(self, seed: Optional[int] = None) -> None:
        """Random weights as TransformerLens initialises them (``cfg.init_mode``)."""
        seed = self.cfg.seed if seed is None else seed
        try:
            from glassbox.loading.init import init_weights as _init
        except ImportError:
            sd = _default_init(self.cfg, seed)
        else:
            sd = _init(self.cfg, seed=seed)
        self._virtual = None
        self._set_state(sd)

    def _set_state(self, sd: Dict[str, Any], strict: bool = True) -> None:
        """Install a TL-layout state dict into the components (new buffers)."""
        slots = self._param_slots()
        sd = {k: v for k, v in sd.items() if not k.endswith(_BUFFER_SUFFIXES)}
        if strict:
            missing = [k for k in slots if k not in sd]
            # biases are optional in many checkpoints: fill them with zeros
            for k in list(missing):
                leaf = k.rsplit(".", 1)[-1]
                if leaf.lstrip("_").startswith("b"):
                    from glassbox.loading.shapes import param_shapes

                    sd[k] = np.zeros(param_shapes(self.cfg)[k], np.float32)
                    missing.remove(k)
            if missing:
                raise ValueError(f"state dict is missing {len(missing)} parameter(s), e.g. {missing[:5]}")
            extra = [k for k in sd if k not in slots]
            if extra:
                raise ValueError(f"state dict has unexpected parameter(s) {extra[:5]}")
        from glassbox.loading.shapes import param_shapes

        shapes = param_shapes(self.cfg)
        for k, v in sd.items():
            if k not in slots:
                continue
            arr = v if isinstance(v, StoredMatrix) else to_numpy(v)
            if tuple(arr.shape) != tuple(shapes[k]):
                raise ValueError(f"parameter {k!r} has shape {tuple(arr.shape)}, expected {tuple(shapes[k])}")
            module, leaf = slots[k]
            if self._virtual is not None and k in self._virtual.scales and not isinstance(arr, StoredMatrix):
                raise ValueError(
                    f"cannot replace {k!r} alone: this model keeps weights in their stored dtype with "
                    f"layer norms folded virtually; load a complete state dict (strict=True) instead")
            if isinstance(arr, StoredMatrix):
                module._params[leaf] = arr  # kept in its stored dtype, never copied
            else:
                module._params[leaf] = np.array(arr, dtype=np.float32, order="C")
        self._engine_dirty = True
        from glassbox.display import weight_storage

        self.cfg.weight_dtype = "+".join(weight_storage(self))

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Dict[str, Any]:
        """Parameters by TransformerLens name (views of the model's buffers; float32 copies,
        processed as the model computes, for weights kept in their stored dtype)."""
        torch_mode = wants_torch()
        out = destination if destination is not None else {}
        for name, (module, leaf) in self._param_slots().items():
            if leaf in module._params:
                out[prefix + name] = wrap(module.param_np(leaf), torch_mode)
        return out

    def _state_dict_np(self) -> Dict[str, Any]:
        """Raw parameters: float32 arrays, or StoredMatrix for stored-dtype weights."""
        return {n: m._params[leaf] for n, (m, leaf) in self._param_slots().items() if leaf in m._params}

    def load_state_dict(self, state_dict: Dict[str, Any], strict: bool = True, assign: bool = False) -> None:
        """Load TL-named parameters as they are (no processing). TL buffers are ignored."""
        from glassbox.loading.virtual import has_stored

        if strict and not has_stored(state_dict):
            self._virtual = None  # every weight replaced by a plain float32 one
        self._set_state(dict(state_dict), strict=strict)

    def load_and_process_state_dict(
        self,
        state_dict: Dict[str, Any],
        fold_ln: bool = True,
        center_writing_weights: bool = True,
        center_unembed: bool = True,
        fold_value_biases: bool = True,
        refactor_factored_attn_matrices: bool = False,
    ) -> None:
        """Load a TL-layout state dict, then apply TransformerLens's weight processing.

        Values may be :class:`~glassbox.loading.stored.StoredMatrix` (weights kept in their stored
        dtype); processing is then virtual (see :mod:`glassbox.loading.virtual`)."""
        sd = {k: (v if isinstance(v, StoredMatrix) else to_numpy(v))
              for k, v in state_dict.items() if not k.endswith(_BUFFER_SUFFIXES)}
        self._process_and_install(
            sd, fold_ln, center_writing_weights, center_unembed, fold_value_biases, refactor_factored_attn_matrices
        )

    def _process_and_install(
        self,
        sd: Dict[str, np.ndarray],
        fold_ln: bool,
        center_writing_weights: bool,
        center_unembed: bool,
        fold_value_biases: bool,
        refactor_factored_attn_matrices: bool,
    ) -> None:
        if fold_ln and self.cfg.num_experts and self.cfg.num_experts > 1:
            fold_ln = False
        if refactor_factored_attn_matrices and self.cfg.positional_embedding_type == "rotary":
            from glassbox.loading.processing import RotaryRefactorError

            raise RotaryRefactorError(
                "refactor_factored_attn_matrices=True is not possible for a rotary model: with rotary "
                "embeddings the QK circuit depends on the query and key positions, so W_Q @ W_K^T "
                "cannot be re-factored (TransformerLens refuses it as well); pass "
                "refactor_factored_attn_matrices=False")
        from glassbox.loading.processing import process_weights
        from glassbox.loading.virtual import has_stored, process_weights_virtual

        opts = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                    center_unembed=center_unembed, fold_value_biases=fold_value_biases,
                    refactor_factored_attn_matrices=refactor_factored_attn_matrices)
        virtual = None
        if has_stored(sd) and self.cfg.normalization_type in ("LN", "LNPre") and any(opts.values()):
            # LayerNorm folding also centres and adds biases: it has to rewrite the matrices, so
            # they are widened to float32 (GPT-2-sized models; Llama-family models use RMSNorm)
            warnings.warn("weight processing of a LayerNorm model rewrites its matrices: the weights "
                          "kept in their stored dtype are widened to float32", stacklevel=3)
            sd = {k: v.to_tl() if isinstance(v, StoredMatrix) else v for k, v in sd.items()}
        if has_stored(sd):  # weights kept in their stored dtype: processed without rewriting them
            sd, updated, virtual = process_weights_virtual(sd, self.cfg, base=self._virtual, **opts)
        elif any(opts.values()):
            sd, updated = process_weights(sd, self.cfg, **opts)
        else:
            updated = {}
        self._virtual = virtual
        if updated:
            self._reconfigure(updated)
        self._set_state(sd)

    def _reconfigure(self, fields: Dict[str, Any]) -> None:
        """Change config fields that alter the module tree (e.g. LN → LNPre), keeping hooks."""
        old_hooks = {name: list(hp.fwd_hooks) for name, hp in self.hook_dict.items()}
        old_ctx = {name: hp.ctx for name, hp in self.hook_dict.items()}
        for k, v in fields.items():
            setattr(self.cfg, k, v)
        for key in ("embed", "hook_embed", "pos_embed", "hook_pos_embed", "hook_tokens", "blocks", "ln_final", "unembed"):
            self.__dict__.pop(key, None)
        self._build_modules()
        for name, hp in self.hook_dict.items():
            if name in old_hooks:
                hp.fwd_hooks = old_hooks[name]
                for h in hp.fwd_hooks:
                    h.hook._hook_point = hp
                hp.ctx = old_ctx[name]
        self._engine_dirty = True

    def process_weights_(
        self,
        fold_ln: bool = True,
        center_writing_weights: bool = True,
        center_unembed: bool = True,
        refactor_factored_attn_matrices: bool = False,
    ) -> None:
        """Apply TransformerLens's weight processing to this model in place."""
        sd = {k: (v if isinstance(v, StoredMatrix) else v.copy()) for k, v in self._state_dict_np().items()}
        self._process_and_install(
            sd, fold_ln, center_writing_weights, center_unembed, True, refactor_factored_attn_matrices
        )

    # TransformerLens's state-dict processing steps, as methods: each takes a TL-layout state dict
    # (torch tensors or NumPy arrays) and returns the processed dict in the same array kind; the
    # model itself is not changed (use process_weights_ / load_and_process_state_dict for that).
    def _sd_step(self, state_dict: Dict[str, Any], fn: Any, **kw: Any) -> Dict[str, Any]:
        torch_mode = any(type(v).__module__.startswith("torch") for v in state_dict.values())
        sd = {k: np.array(to_numpy(v), dtype=np.float32) for k, v in state_dict.items()}
        out = fn(sd, self.cfg, **kw)
        return {k: wrap(np.ascontiguousarray(v), torch_mode) for k, v in out.items()}

    def fold_layer_norm(self, state_dict: Dict[str, Any], fold_biases: bool = True,
                        center_weights: bool = True) -> Dict[str, Any]:
        """Fold each norm's weight (and bias, if ``fold_biases``) into the matrices reading from
        it, centring their input dimension if ``center_weights`` (TL's ``fold_layer_norm``); the
        norm parameters are dropped from the returned dict."""
        from glassbox.loading.processing import fold_layer_norm

        return self._sd_step(state_dict, fold_layer_norm, fold_biases=fold_biases, center_weights=center_weights)

    def center_writing_weights(self, state_dict: Dict[str, Any]) -> Dict[str, Any]:
        """Subtract the d_model mean from every matrix writing to the residual stream (W_E,
        W_pos, W_O, W_out and their biases)."""
        from glassbox.loading.processing import center_writing_weights

        return self._sd_step(state_dict, center_writing_weights)

    def center_unembed(self, state_dict: Dict[str, Any]) -> Dict[str, Any]:
        """Subtract the mean over the vocabulary from W_U and b_U (logits change by a constant
        per position; log-probs do not)."""
        from glassbox.loading.processing import center_unembed

        return self._sd_step(state_dict, center_unembed)

    def fold_value_biases(self, state_dict: Dict[str, Any]) -> Dict[str, Any]:
        """Move each head's value bias into the layer's output bias: b_O += sum_h b_V[h] @ W_O[h],
        b_V = 0."""
        from glassbox.loading.processing import fold_value_biases

        return self._sd_step(state_dict, fold_value_biases)

    def refactor_factored_attn_matrices(self, state_dict: Dict[str, Any]) -> Dict[str, Any]:
        """Re-factor W_Q W_K^T and W_V W_O by SVD (TL's choice of factorisation; the products
        and so the model's outputs are unchanged)."""
        from glassbox.loading.processing import refactor_factored_attn_matrices

        return self._sd_step(state_dict, refactor_factored_attn_matrices)

    def fill_missing_keys(self, state_dict: Dict[str, Any]) -> Dict[str, Any]:
        """Add the model's current values for every parameter ``state_dict`` lacks (warning for
        weight matrices, as TransformerLens); returns the (same, updated) dict."""
        import logging

        current = self.state_dict()
        for key in current:
            if key not in state_dict:
                if "W_" in key:
                    logging.warning("Missing key for a weight matrix in pretrained, filled in with an empty tensor: %s", key)
                state_dict[key] = current[key]
        return state_dict

    @property
    def has_stored_weights(self) -> bool:
        """True if some weight matrices are kept in their stored dtype (bf16/f16/GGUF blocks);
        those read back as float32 copies and cannot be edited."""
        return any(isinstance(v, StoredMatrix) for v in self._state_dict_np().values())

    def _param_slots(self) -> Dict[str, Tuple[Component, str]]:
        """``{state-dict name: (component, param name)}`` for the current config."""
        from glassbox.loading.shapes import param_shapes

        wanted = param_shapes(self.cfg)
        slots = {}
        for mod_name, module in self.named_modules():
            if isinstance(module, Component):
                for leaf in type(module).PARAMS:
                    name = f"{mod_name}.{leaf}"
                    if name in wanted:
                        slots[name] = (module, leaf)
        missing = [k for k in wanted if k not in slots]
        if missing:  # pragma: no cover - module tree and shapes table disagree
            raise RuntimeError(f"no module holds parameter(s) {missing[:5]}")
        return slots

    def _materialise_param(self, name: str, value: StoredMatrix) -> np.ndarray:
        """TL-layout float32 copy of a stored-dtype weight, with virtual processing applied."""
        if self._virtual is not None:
            return self._virtual.view(name, value)
        return value.to_tl()

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> Any:
        """Sum of the biases written to the residual stream before ``layer`` (b_O, and b_out
        if ``include_mlp_biases``; plus b_O of ``layer`` itself if ``mlp_input``)."""
        total = np.zeros(self.cfg.d_model, dtype=np.float32)
        for i in range(layer):
            block = self.blocks[i]
            total = total + block.attn._params["b_O"]
            if include_mlp_biases and hasattr(block, "mlp"):
                total = total + block.mlp._params["b_out"]
        if mlp_input:
            assert layer < self.cfg.n_layers, "Cannot include attn_bias from beyond the final layer"
            total = total + self.blocks[layer].attn._params["b_O"]
        return wrap(total.astype(np.float32), wants_torch())

    @property
    def n_params_total(self) -> int:
        return int(sum(int(np.prod(v.shape)) for v in self._state_dict_np().values()))

    def parameters(self, recurse: bool = True):
        """The parameters (views of the model's buffers), in state-dict order."""
        return iter(self.state_dict().values())

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """``(name, parameter)`` pairs in state-dict order, names with ``prefix`` prepended."""
        return iter(self.state_dict(prefix=prefix).items())

    def _stack(self, module: str, leaf: str) -> Any:
        arrs = []
        for block in self.blocks:
            m = getattr(block, module)
            if isinstance(m, Component) and leaf.startswith("_") is False and leaf in ("W_K", "W_V", "b_K", "b_V") and ("_" + leaf) in m._params:
                reps = self.cfg.n_heads // self.cfg.n_key_value_heads
                arrs.append(np.repeat(m.param_np("_" + leaf), reps, axis=0))
            else:
                arrs.append(m.param_np(leaf))
        return wrap(np.ascontiguousarray(np.stack(arrs)), wants_torch())

    @property
    def W_U(self) -> Any:
        """[d_model, d_vocab_out]"""
        return self.unembed.W_U

    @property
    def b_U(self) -> Any:
        return self.unembed.b_U

    @property
    def W_E(self) -> Any:
        """[d_vocab, d_model]"""
        return self.embed.W_E

    @property
    def W_pos(self) -> Any:
        """[n_ctx, d_model] (standard positions only)"""
        if "pos_embed" not in self.__dict__:
            raise AttributeError("W_pos is not available for rotary models")
        return self.pos_embed.W_pos

    @property
    def W_E_pos(self) -> Any:
        """[d_vocab + n_ctx, d_model]"""
        out = np.concatenate([self.embed.param_np("W_E"), self.pos_embed.param_np("W_pos")], axis=0)
        return wrap(out, wants_torch())

    W_Q = property(lambda self: self._stack("attn", "W_Q"), doc="[n_layers, n_heads, d_model, d_head]")

    W_K = property(lambda self: self._stack("attn", "W_K"), doc="[n_layers, n_heads, d_model, d_head] (GQA repeated)")

    W_V = property(lambda self: self._stack("attn", "W_V"), doc="[n_layers, n_heads, d_model, d_head] (GQA repeated)")

    W_O = property(lambda self: self._stack("attn", "W_O"), doc="[n_layers, n_heads, d_head, d_model]")

    b_Q = property(lambda self: self._stack("attn", "b_Q"), doc="[n_layers, n_heads, d_head]")

    b_K = property(lambda self: self._stack("attn", "b_K"), doc="[n_layers, n_heads, d_head]")

    b_V = property(lambda self: self._stack("attn", "b_V"), doc="[n_layers, n_heads, d_head]")

    b_O = property(lambda self: self._stack("attn", "b_O"), doc="[n_layers, d_model]")

    W_in = property(lambda self: self._stack("mlp", "W_in"), doc="[n_layers, d_model, d_mlp]")

    W_out = property(lambda self: self._stack("mlp", "W_out"), doc="[n_layers, d_mlp, d_model]")

    b_in = property(lambda self: self._stack("mlp", "b_in"), doc="[n_layers, d_mlp]")

    b_out = property(lambda self: self._stack("mlp", "b_out"), doc="[n_layers, d_model]")

    @property
    def W_gate(self) -> Any:
        """[n_layers, d_model, d_mlp], or None unless gated_mlp"""
        if not self.cfg.gated_mlp:
            return None
        return self._stack("mlp", "W_gate")

    @property
    def QK(self):
        """QK circuits: ``FactoredMatrix(W_Q, W_K^T)``, ``[n_layers, n_heads, d_model, d_model]``.

        Only the factors are held (``[L, H, d_model, d_head]`` each; GQA: W_K repeat-interleaved
        to n_heads, as TransformerLens); ``.AB`` multiplies out. ``model.QK[l, h]`` is one head."""
        from glassbox.components import _factored, _transpose

        return _factored(self.W_Q, _transpose(self.W_K))

    @property
    def OV(self):
        """OV circuits: ``FactoredMatrix(W_V, W_O)``, ``[n_layers, n_heads, d_model, d_model]``.

        Only the factors are held (GQA: W_V repeat-interleaved to n_heads); ``.AB`` multiplies
        out (340 MB for GPT-2 small). ``model.OV[l, h]`` is one head."""
        from glassbox.components import _factored

        return _factored(self.W_V, self.W_O)

    def all_composition_scores(self, mode: str) -> Any:
        """Composition scores of every pair of heads, ``[n_layers, n_heads, n_layers, n_heads]``.

        ``scores[l1, h1, l2, h2] = |OV_1 @ X_2|_F / (|OV_1|_F |X_2|_F)`` with ``X_2`` the QK
        circuit of the later head (``mode="Q"``), its transpose (``"K"``) or its OV circuit
        (``"V"``), as in A Mathematical Framework; zero unless ``l1 < l2``. See
        :func:`glassbox.utils.composition_scores`.
        """
        from glassbox.utils import composition_scores

        if mode not in ("Q", "K", "V"):
            raise ValueError(f"mode must be one of ['Q', 'K', 'V'] not {mode}")
        left = self.OV
        right = {"Q": lambda: self.QK, "K": lambda: self.QK.T, "V": lambda: self.OV}[mode]()
        scores = composition_scores(left, right, broadcast_dims=True)
        L = self.cfg.n_layers
        later = np.arange(L)[:, None, None, None] < np.arange(L)[None, None, :, None]
        if hasattr(scores, "masked_fill"):  # torch
            import torch

            return scores.masked_fill(~torch.from_numpy(later).to(scores.device), 0.0)
        return np.where(later, scores, np.zeros((), scores.dtype))
