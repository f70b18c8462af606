"""Building the C engine (``glassbox._C.Model``) from a model's config and weights."""
from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np

from glassbox.components import final_norm_kind
from glassbox.loading.stored import StoredMatrix
from glassbox.loading.arch_llama import rotary_inv_freq

from glassbox.transformer.run import _c_module

#: activation functions the C engine implements
_ENGINE_ACTS = ("relu", "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "silu")


class EngineMixin:
    """Part of :class:`glassbox.HookedTransformer` (see its docstring)."""

    def _check_supported(self) -> None:
        cfg = self.cfg
        problems = []
        if cfg.parallel_attn_mlp:
            problems.append("parallel_attn_mlp")
        if cfg.positional_embedding_type not in ("standard", "rotary", "shortformer"):
            problems.append(f"positional_embedding_type={cfg.positional_embedding_type!r}")
        if not cfg.attn_only and cfg.act_fn not in _ENGINE_ACTS:
            problems.append(f"act_fn={cfg.act_fn!r}")
        for flag in ("use_qk_norm", "post_embedding_ln", "use_normalization_before_and_after", "use_yarn_rope", "use_attention_sinks"):
            if getattr(cfg, flag, False):
                problems.append(flag)
        if cfg.use_local_attn:
            types = cfg.attn_types or ["local"] * cfg.n_layers
            if any(t != "local" for t in types) or not isinstance(cfg.window_size, int) or cfg.window_size <= 0:
                problems.append("use_local_attn with mixed local/global layers (only one sliding window for every layer)")
        if cfg.num_experts:
            problems.append("mixture of experts")
        if cfg.attn_scores_soft_cap is not None and cfg.attn_scores_soft_cap > 0:
            problems.append("attn_scores_soft_cap")
        if cfg.output_logits_soft_cap is not None and cfg.output_logits_soft_cap > 0:
            problems.append("output_logits_soft_cap")
        if cfg.attention_dir != "causal":
            problems.append(f"attention_dir={cfg.attention_dir!r}")
        if problems:
            raise NotImplementedError("glassbox's engine does not support: " + ", ".join(problems))

    def _engine_cfg(self) -> Dict[str, Any]:
        cfg = self.cfg
        G = cfg.n_key_value_heads if cfg.n_key_value_heads is not None else cfg.n_heads
        if cfg.ungroup_grouped_query_attention:
            G = cfg.n_heads
        out = {
            "n_layers": cfg.n_layers,
            "d_model": cfg.d_model,
            "n_heads": cfg.n_heads,
            "d_head": cfg.d_head,
            "d_mlp": cfg.d_mlp,
            "d_vocab": int(self.embed._params["W_E"].shape[0]),
            "n_ctx": cfg.n_ctx,
            "n_key_value_heads": int(G),
            "normalization_type": cfg.normalization_type or "none",
            "final_normalization_type": final_norm_kind(cfg) or "none",
            "eps": float(cfg.eps),
            "positional_embedding_type": cfg.positional_embedding_type,
            "act_fn": cfg.act_fn if cfg.act_fn in _ENGINE_ACTS else "relu",  # unused when attn_only
            "gated_mlp": bool(cfg.gated_mlp),
            "attn_only": bool(cfg.attn_only),
            "attn_scale": float(cfg.attn_scale) if cfg.use_attn_scale else 1.0,
            "scale_attn_by_inverse_layer_idx": bool(cfg.scale_attn_by_inverse_layer_idx),
            "rotary_dim": int(cfg.rotary_dim or 0),
            "rotary_adjacent_pairs": bool(cfg.rotary_adjacent_pairs),
            "window_size": int(cfg.window_size) if cfg.use_local_attn else 0,
            "use_attn_result": bool(cfg.use_attn_result),
            "use_split_qkv_input": bool(cfg.use_split_qkv_input),
            "use_attn_in": bool(cfg.use_attn_in),
            "use_hook_mlp_in": bool(cfg.use_hook_mlp_in),
        }
        v = self._virtual
        if v is not None:  # virtual weight processing (glassbox.loading.virtual)
            if v.engine_normalization_type is not None:
                out["normalization_type"] = v.engine_normalization_type
            if v.engine_final_normalization_type is not None:
                out["final_normalization_type"] = v.engine_final_normalization_type
                # hook_in must see the unit-RMS vector, as in TL's processed model
                out["final_gain_after_unembed_in"] = True
            if v.center_unembed:
                out["center_unembed_logits"] = True
        return out

    def _engine_weights(self) -> Dict[str, np.ndarray]:
        """TL state dict → engine keys (un-underscored GQA K/V, rotary_inv_freq)."""
        w: Dict[str, np.ndarray] = {}
        self._ungrouped = {}
        reps = 1
        if self.cfg.n_key_value_heads is not None:
            reps = self.cfg.n_heads // self.cfg.n_key_value_heads
        for name, arr in self._state_dict_np().items():
            mod, leaf = name.rsplit(".", 1)
            key = name
            if leaf.startswith("_"):
                key = f"{mod}.{leaf[1:]}"
                if self.cfg.ungroup_grouped_query_attention and reps > 1:
                    if isinstance(arr, StoredMatrix):
                        arr = arr.repeat_heads(reps)  # a K/V-sized copy in the stored dtype
                    else:
                        rep = np.ascontiguousarray(np.repeat(arr, reps, axis=0))
                        self._ungrouped[key] = rep
                        arr = rep
            w[key] = arr.engine_spec() if isinstance(arr, StoredMatrix) else arr
        if self._virtual is not None:
            w.update(self._virtual.norm_weights)
        if self.cfg.positional_embedding_type == "rotary":
            w["rotary_inv_freq"] = rotary_inv_freq(self.cfg)
        return w

    def _refresh_ungrouped(self) -> None:
        """Keep repeated K/V copies in step with in-place edits of _W_K/_W_V."""
        if not self._ungrouped:
            return
        reps = self.cfg.n_heads // self.cfg.n_key_value_heads
        sd = self._state_dict_np()
        for key, rep in self._ungrouped.items():
            mod, leaf = key.rsplit(".", 1)
            rep[...] = np.repeat(sd[f"{mod}._{leaf}"], reps, axis=0)

    def _get_engine(self):
        if self._engine is None or self._engine_dirty:
            self._check_supported()
            _C = _c_module()
            self._engine = _C.Model(self._engine_cfg(), self._engine_weights())
            self._engine_dirty = False
            self._site_of: Dict[str, Tuple[int, int]] = {}
            self._name_of: Dict[Tuple[int, int], str] = {}
            for site_id, suffix, per_layer in _C.HOOK_SITES:
                layers = range(self.cfg.n_layers) if per_layer else (-1,)
                for l in layers:
                    name = f"blocks.{l}.{suffix}" if per_layer else suffix
                    self._site_of[name] = (site_id, l)
                    self._name_of[(site_id, l)] = name
        else:
            self._refresh_ungrouped()
        return self._engine
