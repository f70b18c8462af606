"""``HookedTransformer``: TransformerLens's model class, backed by glassbox's C engine.

Same class name, constructor, ``from_pretrained``, ``forward`` signature, hook names,
hook shapes, cache keys and helper methods as ``transformer_lens.HookedTransformer``,
so an existing script only swaps its import line.

How a forward pass runs:

1. Text becomes tokens in Python (:mod:`glassbox.tokenization`); ``hook_tokens`` (if
   ``cfg.use_hook_tokens``) runs in Python on the token array.
2. One call into ``glassbox._C.Model.forward`` runs the whole pass with the GIL
   released. For each hook point the run has a plan: nothing; *copy into cache*
   (``run_with_cache`` preallocates arrays and the engine writes straight into them,
   no Python call); or *call back* (the point has hook functions: the engine calls
   :meth:`HookedTransformer._dispatch`, which runs them in registration order).
3. Outputs become TransformerLens-shaped objects (``Output``, ``ActivationCache``),
   as NumPy arrays or torch tensors sharing memory (see :mod:`glassbox.arrays`).

Hook contract (as TransformerLens): ``fn(activation, hook=hook_point)``; in-place
edits take effect; a returned array/tensor of the same shape replaces the
activation; any other shape raises ``ValueError`` naming the hook and both shapes;
an exception raised by a hook propagates unchanged (a note names the hook point),
temporary hooks are still removed and the model stays usable. ``ln1`` hooks fire
three times per block (for the q, k and v inputs). Backward hooks and gradients are
not available (no autograd).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Optional, Union

import numpy as np

from glassbox import utils
from glassbox.components import (
    Component,
    Embed,
    PosEmbed,
    TransformerBlock,
    Unembed,
    final_norm_kind,
    make_norm,
)
from glassbox.config.hooked_transformer_config import HookedTransformerConfig
from glassbox.hook_points import HookedRootModule, HookPoint, TypedModuleList
from glassbox.loading.arch_llama import rotary_inv_freq
from glassbox.tokenization import Tokenizer
from glassbox.transformer.engine import EngineMixin
from glassbox.transformer.pretrained import PretrainedMixin
from glassbox.transformer.run import Output, RunMixin, _CacheRequest, _RunState
from glassbox.transformer.tokens import TokensMixin
from glassbox.transformer.weights import WeightsMixin


def _dtype_name(x: Any) -> Optional[str]:
    """"float32", "bfloat16"... for a torch / NumPy dtype or a dtype name; None for anything else
    (a device)."""
    if isinstance(x, np.dtype):
        return x.name
    if isinstance(x, type):
        try:
            return np.dtype(x).name
        except TypeError:
            return None
    if type(x).__name__ == "dtype" and type(x).__module__.startswith("torch"):
        return str(x).replace("torch.", "")
    if isinstance(x, str) and x.replace("torch.", "") in (
            "float32", "float", "float16", "half", "bfloat16", "float64", "double"):
        return x.replace("torch.", "")
    return None


class HookedTransformer(PretrainedMixin, WeightsMixin, TokensMixin, EngineMixin, RunMixin, HookedRootModule):
    """A decoder-only transformer with hook points everywhere (TransformerLens API).

    Build from a config (random weights) or with :meth:`from_pretrained`:

    >>> model = HookedTransformer.from_pretrained("gpt2")            # doctest: +SKIP
    >>> logits, cache = model.run_with_cache("Hello world")          # doctest: +SKIP
    >>> cache["pattern", 0].shape                                    # doctest: +SKIP
    torch.Size([1, 12, 3, 3])
    """

    def __init__(
        self,
        cfg: Union[HookedTransformerConfig, Dict[str, Any]],
        tokenizer: Any = None,
        move_to_device: bool = True,
        default_padding_side: Optional[str] = None,
    ):
        super().__init__()
        if isinstance(cfg, str):
            raise ValueError(
                "Please pass in a config dictionary or HookedTransformerConfig object. If you want to "
                "load a pretrained model, use HookedTransformer.from_pretrained() instead."
            )
        self.cfg = HookedTransformerConfig.unwrap(cfg)
        from glassbox.utilities.devices import check_device

        check_device(self.cfg.device, "cfg.device")
        self._engine = None
        self._engine_dirty = True
        self._run: Optional[_RunState] = None
        self._cache_request: Optional[_CacheRequest] = None
        self._ungrouped: Dict[str, np.ndarray] = {}
        self._virtual = None  # glassbox.loading.virtual.VirtualProcessing for stored-dtype weights
        self._check_finite = False  # set_check_finite
        self.tokenizer: Optional[Tokenizer] = None
        if tokenizer is None and self.cfg.tokenizer_name is not None:
            from glassbox.transformer.tokens import tokenizer_from_name

            tokenizer = tokenizer_from_name(self.cfg.tokenizer_name)
        if tokenizer is not None:
            self.set_tokenizer(tokenizer, default_padding_side=default_padding_side)
        else:
            if self.cfg.d_vocab == -1:
                raise AssertionError("Must provide a tokenizer if d_vocab is not provided")
            if default_padding_side is not None:
                logging.warning("default_padding_side is explicitly given but ignored because tokenizer is not set.")
        self._build_modules()
        if self.cfg.init_weights:
            self.init_weights()
        self.dataset = None

    def _build_modules(self) -> None:
        cfg = self.cfg
        if cfg.d_vocab_out == -1:
            cfg.d_vocab_out = cfg.d_vocab
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        if cfg.positional_embedding_type != "rotary":
            self.pos_embed = PosEmbed(cfg)
            self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        if cfg.use_hook_tokens:
            self.hook_tokens = HookPoint()  # [batch, pos]
        self.blocks = TypedModuleList([TransformerBlock(cfg, i) for i in range(cfg.n_layers)])
        kind = final_norm_kind(cfg)
        if kind is not None:
            self.ln_final = make_norm(kind, cfg)
        self.unembed = Unembed(cfg)
        for mod_name, module in self.named_modules():
            if isinstance(module, Component):
                object.__setattr__(module, "_on_replace", self._mark_dirty)
                object.__setattr__(module, "_materialise", self._materialise_param)
                object.__setattr__(module, "_prefix", f"{mod_name}." if mod_name else "")
        self.setup()

    def _components(self) -> Iterable[Component]:
        for _, m in self.named_modules():
            if isinstance(m, Component):
                yield m

    def _mark_dirty(self) -> None:
        self._engine_dirty = True

    def check_hooks_to_add(self, hook_point, hook_point_name, hook, dir="fwd", is_permanent=False, prepend=False) -> None:
        if hook_point_name.endswith("attn.hook_result"):
            assert self.cfg.use_attn_result, f"Cannot add hook {hook_point_name} if use_attn_result_hook is False"
        if hook_point_name.endswith(("hook_q_input", "hook_k_input", "hook_v_input")):
            assert self.cfg.use_split_qkv_input, f"Cannot add hook {hook_point_name} if use_split_qkv_input is False"
        if hook_point_name.endswith("mlp_in"):
            assert self.cfg.use_hook_mlp_in, f"Cannot add hook {hook_point_name} if use_hook_mlp_in is False"
        if hook_point_name.endswith("attn_in"):
            assert self.cfg.use_attn_in, f"Cannot add hook {hook_point_name} if use_attn_in is False"

    def _set_flag(self, **flags: bool) -> None:
        # the engine refuses flag changes during a run: ask it first, so that a refusal leaves
        # the config as it was
        if self._engine is not None and not self._engine_dirty:
            self._engine.set_flags(**{k: bool(v) for k, v in flags.items()})
        elif self._run is not None:
            raise RuntimeError("cannot change hook flags while a forward pass runs")
        for k, v in flags.items():
            setattr(self.cfg, k, bool(v))

    def _refuse_hook_now(self, name: str) -> Optional[str]:
        run = self._run
        return run.refuse_new_hook(name) if run is not None else None

    def set_check_finite(self, check_finite: bool = True) -> None:
        """glassbox extension: with ``True``, every forward pass checks every activation and
        raises :class:`~glassbox.transformer.checks.NonFiniteActivationError` (a
        ``FloatingPointError``) naming the first hook point in firing order where a NaN or
        infinity appears, with its layer and position (masked attention scores, which are -inf
        by design, do not count). The check copies every activation (as ``run_with_cache()``
        does), so it costs memory and time; it is off by default."""
        if self._run is not None:
            raise RuntimeError("cannot change set_check_finite while a forward pass runs")
        self._check_finite = bool(check_finite)

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Toggle ``attn.hook_result`` (per-head outputs [batch, pos, head, d_model])."""
        self._set_flag(use_attn_result=use_attn_result)

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Toggle ``hook_q_input`` / ``hook_k_input`` / ``hook_v_input``."""
        self._set_flag(use_split_qkv_input=use_split_qkv_input)

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """Toggle ``hook_mlp_in``."""
        assert not self.cfg.attn_only, "Can't use hook_mlp_in with attn_only model"
        self._set_flag(use_hook_mlp_in=use_hook_mlp_in)

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """Toggle ``hook_attn_in`` (not available for grouped-query attention)."""
        assert self.cfg.n_key_value_heads is None, "Can't use attn_in with GroupedQueryAttention, please use split_qkv_input instead"
        self._set_flag(use_attn_in=use_attn_in)

    def set_ungroup_grouped_query_attention(self, ungroup_grouped_query_attention: bool) -> None:
        """Compute k/v with kv heads repeated to n_heads (hooks then see n_heads)."""
        self.cfg.ungroup_grouped_query_attention = bool(ungroup_grouped_query_attention)
        self._engine_dirty = True

    def generate(self, input: Any = "", max_new_tokens: int = 10, stop_at_eos: bool = True,
                 eos_token_id: Any = None, do_sample: bool = True, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, temperature: float = 1.0, freq_penalty: float = 0.0,
                 use_past_kv_cache: bool = True, prepend_bos: Optional[bool] = utils.USE_DEFAULT_VALUE,
                 padding_side: Optional[str] = utils.USE_DEFAULT_VALUE, return_type: Optional[str] = "input",
                 verbose: bool = True, **generation_kwargs: Any) -> Any:
        """Sample tokens after ``input`` (str, list[str], tokens or embeddings): TransformerLens's
        ``generate``, with a KV cache in the C engine by default (``use_past_kv_cache``).

        ``do_sample=False`` (or ``temperature=0``) is greedy; ``top_k`` / ``top_p`` /
        ``freq_penalty`` as TransformerLens; ``return_type`` "input" / "str" / "tokens" /
        "embeds"; ``eos_token_id`` an int or a list. Hooks attached with ``hooks()`` /
        ``add_hook`` fire at every step (new positions only with the cache). With torch input
        sampling uses torch's RNG exactly as TransformerLens does (same seed, same tokens).
        Extra keywords: ``output_logits``, ``repetition_penalty``, ``seed``. See
        :mod:`glassbox.generation` and docs/generation.md.
        """
        from glassbox.generation import generate as _generate

        with self._run_lock:
            return _generate(self, input, max_new_tokens=max_new_tokens, stop_at_eos=stop_at_eos,
                             eos_token_id=eos_token_id, do_sample=do_sample, top_k=top_k, top_p=top_p,
                             temperature=temperature, freq_penalty=freq_penalty,
                             use_past_kv_cache=use_past_kv_cache, prepend_bos=prepend_bos,
                             padding_side=padding_side, return_type=return_type, verbose=verbose,
                             **generation_kwargs)

    def loss_fn(self, logits: Any, tokens: Any, attention_mask: Any = None, per_token: bool = False) -> Any:
        """Next-token cross-entropy (``utils.lm_cross_entropy_loss``)."""
        return utils.lm_cross_entropy_loss(logits, tokens, attention_mask, per_token)

    def all_head_labels(self) -> List[str]:
        return [f"L{l}H{h}" for l in range(self.cfg.n_layers) for h in range(self.cfg.n_heads)]

    def get_device(self) -> str:
        return "cpu"

    def to(self, device_or_dtype: Any, print_details: bool = True) -> "HookedTransformer":
        """TransformerLens's ``model.to(device or dtype)``. glassbox computes on the CPU in
        float32: ``"cpu"`` / ``torch.device("cpu")`` / float32 leave the model as it is; any other
        device raises ``RuntimeError`` (nothing is moved, so saying yes would be a lie) and any
        other dtype ``ValueError`` (load with ``from_pretrained(..., dtype=...)`` to keep weights
        in bf16/f16)."""
        from glassbox.utilities.devices import check_device

        name = _dtype_name(device_or_dtype)
        if name is not None:
            if name not in ("float32", "float"):
                raise ValueError(
                    f"cannot convert the model to {device_or_dtype}: glassbox computes in float32; to keep "
                    f"weights in bfloat16/float16 load with from_pretrained(..., dtype={name!r})")
            return self
        check_device(device_or_dtype, "device")
        if print_details:
            print("Moving model to device: ", device_or_dtype)
        self.cfg.device = "cpu"
        return self

    def cpu(self) -> "HookedTransformer":
        return self.to("cpu", print_details=False)

    def cuda(self, device: Any = None) -> "HookedTransformer":
        """Always ``RuntimeError``: glassbox has no GPU path."""
        return self.to("cuda" if device is None else (f"cuda:{device}" if isinstance(device, int) else device))

    def mps(self) -> "HookedTransformer":
        """Always ``RuntimeError``: glassbox has no GPU path."""
        return self.to("mps")

    def eval(self) -> "HookedTransformer":
        return self

    def train(self, mode: bool = True) -> "HookedTransformer":
        return self

    def requires_grad_(self, requires_grad: bool = True) -> "HookedTransformer":
        return self

    def _repr_html_(self) -> str:
        from glassbox.display import model_html

        return model_html(self)



__all__ = ["HookedTransformer", "Output", "rotary_inv_freq"]
