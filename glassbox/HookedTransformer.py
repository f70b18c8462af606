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
import warnings
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from glassbox import arrays as _arr
from glassbox import utils
from glassbox.ActivationCache import ActivationCache
from glassbox.arrays import asarray_f32, is_torch, to_numpy, wants_torch, wrap
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
from glassbox.hook_points import (
    HookedRootModule,
    HookPoint,
    ModuleList,
    NamesFilter,
    _make_names_filter,
    _store_activation,
)
from glassbox.loading.stored import StoredMatrix
from glassbox.loading.arch_llama import rotary_inv_freq
from glassbox.tokenization import Tokenizer
from glassbox.utils import USE_DEFAULT_VALUE, LocallyOverridenDefaults, Slice

_ENGINE_ACTS = ("relu", "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "silu")
#: state-dict entries TransformerLens has that are buffers, not parameters
_BUFFER_SUFFIXES = (".mask", ".IGNORE", ".rotary_sin", ".rotary_cos")


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


class HookedTransformer(HookedRootModule):
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
        self._engine = None
        self._engine_dirty = True
        self._run: Optional[_RunState] = None
        self._cache_request: Optional[_CacheRequest] = None
        self._ungrouped: Dict[str, np.ndarray] = {}
        self._virtual = None  # glassbox.loading.virtual.VirtualProcessing for stored-dtype weights
        self.tokenizer: Optional[Tokenizer] = None
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

    # ------------------------------------------------------------------------------------
    # structure
    # ------------------------------------------------------------------------------------
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
        self.blocks = ModuleList([TransformerBlock(cfg, i) for i in range(cfg.n_layers)])
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

    def _materialise_param(self, name: str, value: StoredMatrix) -> np.ndarray:
        """TL-layout float32 copy of a stored-dtype weight, with virtual processing applied."""
        if self._virtual is not None:
            return self._virtual.view(name, value)
        return value.to_tl()

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

    # ------------------------------------------------------------------------------------
    # weights
    # ------------------------------------------------------------------------------------
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

    def state_dict(self) -> Dict[str, Any]:
        """Parameters by TransformerLens name (views of the model's buffers; float32 copies,
        processed as the model computes, for weights kept in their stored dtype)."""
        torch_mode = wants_torch()
        out = {}
        for name, (module, leaf) in self._param_slots().items():
            if leaf in module._params:
                out[name] = wrap(module.param_np(leaf), torch_mode)
        return out

    def _state_dict_np(self) -> Dict[str, Any]:
        """Raw parameters: float32 arrays, or StoredMatrix for stored-dtype weights."""
        return {n: m._params[leaf] for n, (m, leaf) in self._param_slots().items() if leaf in m._params}

    def load_state_dict(self, state_dict: Dict[str, Any], strict: bool = True) -> None:
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

    # ------------------------------------------------------------------------------------
    # loading
    # ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_name: str,
        fold_ln: bool = True,
        center_writing_weights: bool = True,
        center_unembed: bool = True,
        refactor_factored_attn_matrices: bool = False,
        checkpoint_index: Optional[int] = None,
        checkpoint_value: Optional[int] = None,
        hf_model: Any = None,
        device: Any = None,
        n_devices: int = 1,
        tokenizer: Any = None,
        move_to_device: bool = True,
        fold_value_biases: bool = True,
        default_prepend_bos: Optional[bool] = None,
        default_padding_side: Optional[str] = None,
        dtype: Any = "float32",
        first_n_layers: Optional[int] = None,
        n_ctx: Optional[int] = None,
        **from_pretrained_kwargs: Any,
    ) -> "HookedTransformer":
        """Load a pretrained model (a TransformerLens name/alias, a Hub repo id in the local
        cache, or a local folder) and apply TransformerLens's weight processing.

        ``dtype``: ``"float32"`` (default) loads every weight as an editable float32 array.
        ``"bfloat16"``, ``"float16"`` or ``"auto"`` (LLaMA-family checkpoints; ``torch.bfloat16``
        etc. work too) keep the big matrices in that dtype — memory-mapped straight from the
        safetensors file when it already stores them so (``"auto"``: whatever the file holds) —
        and the C engine widens them inside its matrix products, so a bf16 model needs about
        its file size in RAM rather than twice that. Activations, hooks and the cache are still
        float32 (unlike TransformerLens, which computes in bf16 for ``dtype=torch.bfloat16``).
        Such weights read back (``model.W_Q``, ``blocks[l].attn.W_Q``, ``state_dict()``) as float32
        copies and cannot be edited in place or assigned. Weight processing is then *virtual*:
        the stored matrices are never rewritten, yet the model computes and shows exactly what
        TransformerLens's processed model does (see :mod:`glassbox.loading.virtual`).
        """
        from glassbox.loading.pretrained import load_pretrained_parts

        if checkpoint_index is not None or checkpoint_value is not None:
            raise NotImplementedError("training checkpoints are not supported by glassbox")
        if hf_model is not None:
            raise NotImplementedError("hf_model= is not supported: glassbox loads weights from files")
        if n_devices != 1:
            raise NotImplementedError("glassbox runs on the CPU: n_devices must be 1")
        dtype = from_pretrained_kwargs.pop("torch_dtype", dtype)
        load_kw = {k: from_pretrained_kwargs.pop(k) for k in ("revision", "cache_dir") if k in from_pretrained_kwargs}
        dtype_name = _dtype_name(dtype)
        loaded = load_pretrained_parts(
            model_name, dtype=dtype_name, n_ctx=n_ctx, first_n_layers=first_n_layers, **load_kw
        )
        cfg_fields = dict(loaded.config)
        allowed = set(HookedTransformerConfig.__dataclass_fields__)
        cfg_fields = {k: v for k, v in cfg_fields.items() if k in allowed}
        cfg_fields["init_weights"] = False
        cfg_fields["dtype"] = None
        if default_prepend_bos is not None:
            cfg_fields["default_prepend_bos"] = default_prepend_bos
        if cfg_fields.get("positional_embedding_type") == "shortformer":
            fold_ln = center_writing_weights = center_unembed = False
        if float(cfg_fields.get("output_logits_soft_cap", -1.0) or -1.0) > 0:
            center_unembed = False
        cfg = HookedTransformerConfig(**cfg_fields)
        if tokenizer is None:
            tokenizer = _load_tokenizer(loaded)
        model = cls(cfg, tokenizer=tokenizer, default_padding_side=default_padding_side)
        from glassbox.loading.virtual import has_stored

        if dtype_name in ("float16", "bfloat16") and fold_ln and not has_stored(loaded.state_dict):
            logging.warning(
                "With reduced precision, it is advised to use `from_pretrained_no_processing` instead "
                "of `from_pretrained`."
            )
        model._process_and_install(
            dict(loaded.state_dict),
            fold_ln,
            center_writing_weights,
            center_unembed,
            fold_value_biases,
            refactor_factored_attn_matrices,
        )
        print(f"Loaded pretrained model {model_name} into HookedTransformer")
        return model

    @classmethod
    def from_pretrained_no_processing(
        cls,
        model_name: str,
        fold_ln: bool = False,
        center_writing_weights: bool = False,
        center_unembed: bool = False,
        refactor_factored_attn_matrices: bool = False,
        fold_value_biases: bool = False,
        dtype: Any = "float32",
        default_prepend_bos: Optional[bool] = None,
        default_padding_side: Optional[str] = None,
        **from_pretrained_kwargs: Any,
    ) -> "HookedTransformer":
        """``from_pretrained`` with every weight-processing step off."""
        return cls.from_pretrained(
            model_name,
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            refactor_factored_attn_matrices=refactor_factored_attn_matrices,
            fold_value_biases=fold_value_biases,
            dtype=dtype,
            default_prepend_bos=default_prepend_bos,
            default_padding_side=default_padding_side,
            **from_pretrained_kwargs,
        )

    # ------------------------------------------------------------------------------------
    # tokenizer
    # ------------------------------------------------------------------------------------
    def set_tokenizer(self, tokenizer: Any, default_padding_side: Optional[str] = None) -> None:
        """Use ``tokenizer`` (a glassbox Tokenizer, a ``tokenizers.Tokenizer``, a transformers
        tokenizer or a folder path); sets ``cfg.tokenizer_prepends_bos`` and, if unset,
        ``cfg.d_vocab``."""
        if default_padding_side not in ("right", "left", None):
            raise AssertionError(f"padding_side must be 'right', 'left' or 'None', got {default_padding_side}")
        tok = Tokenizer.wrap(tokenizer)
        if default_padding_side is not None:
            tok.padding_side = default_padding_side
        if tok.padding_side is None:
            tok.padding_side = "right"
        self.tokenizer = tok
        self.cfg.tokenizer_prepends_bos = tok.tokenizer_prepends_bos
        if self.cfg.d_vocab == -1:
            self.cfg.d_vocab = tok.vocab_size
        if self.cfg.d_vocab_out == -1:
            self.cfg.d_vocab_out = self.cfg.d_vocab

    def _require_tokenizer(self, what: str) -> Tokenizer:
        if self.tokenizer is None:
            raise AssertionError(f"Cannot use {what} without a tokenizer")
        return self.tokenizer

    def to_tokens(
        self,
        input: Union[str, List[str]],
        prepend_bos: Optional[bool] = USE_DEFAULT_VALUE,
        padding_side: Optional[str] = USE_DEFAULT_VALUE,
        move_to_device: bool = True,
        truncate: bool = True,
    ) -> Any:
        """Text (or a list of texts, padded) → tokens [batch, pos] int64. torch tensor when
        torch is importable (see glassbox.arrays), NumPy otherwise."""
        tokens, _ = self._tokenize(input, prepend_bos, padding_side, truncate)
        return wrap(tokens, wants_torch(input))

    def _tokenize(
        self,
        input: Union[str, List[str]],
        prepend_bos: Optional[bool],
        padding_side: Optional[str],
        truncate: bool = True,
    ) -> Tuple[np.ndarray, np.ndarray]:
        tok = self._require_tokenizer("to_tokens")
        with LocallyOverridenDefaults(self, prepend_bos=prepend_bos, padding_side=padding_side):
            return tok.encode_batch(
                input,
                prepend_bos=self.cfg.default_prepend_bos,
                padding_side=tok.padding_side,
                max_length=self.cfg.n_ctx if truncate else None,
            )

    def to_string(self, tokens: Any) -> Union[str, List[str]]:
        """Tokens → text: a string for a scalar / [pos] input, a list for [batch, pos]."""
        tok = self._require_tokenizer("to_string")
        arr = np.asarray(to_numpy(tokens))
        if arr.ndim == 2:
            return tok.batch_decode(arr, clean_up_tokenization_spaces=False)
        if arr.ndim <= 1:
            return tok.decode(arr, clean_up_tokenization_spaces=False)
        raise ValueError(f"Invalid shape passed in: {arr.shape}")

    def to_str_tokens(
        self,
        input: Any,
        prepend_bos: Optional[bool] = USE_DEFAULT_VALUE,
        padding_side: Optional[str] = USE_DEFAULT_VALUE,
    ) -> Union[List[str], List[List[str]]]:
        """Text or tokens ([pos] / [1, pos]) → list of token strings (a list per item for
        a list input)."""
        tok = self._require_tokenizer("to_str_tokens")
        if isinstance(input, list):
            return [self.to_str_tokens(item, prepend_bos, padding_side) for item in input]
        if isinstance(input, str):
            tokens, _ = self._tokenize(input, prepend_bos, padding_side)
            ids = tokens[0]
        elif is_torch(input) or isinstance(input, np.ndarray):
            ids = np.asarray(to_numpy(input)).squeeze()
            if ids.ndim == 0:
                ids = ids[None]
            if ids.ndim != 1:
                raise AssertionError(f"Invalid tokens input to to_str_tokens, has shape: {tuple(ids.shape)}")
        elif isinstance(input, (int, np.integer)):
            ids = np.asarray([int(input)])
        else:
            raise ValueError(f"Invalid input type to to_str_tokens: {type(input)}")
        return tok.batch_decode([[int(t)] for t in ids], clean_up_tokenization_spaces=False)

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token (AssertionError otherwise)."""
        tokens, _ = self._tokenize(string, False, None)
        ids = tokens.squeeze()
        if ids.shape != ():
            raise AssertionError(f"Input string: {string} is not a single token!")
        return int(ids)

    def to_single_str_token(self, int_token: int) -> str:
        if not isinstance(int_token, (int, np.integer)):
            raise AssertionError("int_token must be an int")
        out = self.to_str_tokens(np.asarray([int(int_token)]))
        return out[0]

    def get_token_position(
        self,
        single_token: Union[str, int],
        input: Any,
        mode: str = "first",
        prepend_bos: Optional[bool] = USE_DEFAULT_VALUE,
        padding_side: Optional[str] = USE_DEFAULT_VALUE,
    ) -> int:
        """Position of ``single_token`` in ``input`` (text or [pos] / [1, pos] tokens)."""
        if isinstance(input, str):
            tokens, _ = self._tokenize(input, prepend_bos, padding_side)
        else:
            tokens = np.asarray(to_numpy(input))
        if tokens.ndim == 2:
            if tokens.shape[0] != 1:
                raise AssertionError(f"If tokens are rank two, they must have shape [1, seq_len], not {tokens.shape}")
            tokens = tokens[0]
        if isinstance(single_token, str):
            single_token = self.to_single_token(single_token)
        elif is_torch(single_token) or isinstance(single_token, np.ndarray):
            single_token = int(to_numpy(single_token).reshape(-1)[0])
        idx = np.nonzero(tokens == single_token)[0]
        if len(idx) == 0:
            raise AssertionError("The token does not occur in the prompt")
        if mode == "first":
            return int(idx[0])
        if mode == "last":
            return int(idx[-1])
        raise ValueError(f"mode must be 'first' or 'last', not {mode}")

    def tokens_to_residual_directions(self, tokens: Any) -> Any:
        """Unembedding directions ``W_U[:, tokens]``: [d_model], [pos, d_model] or
        [batch, pos, d_model]."""
        W_U = self.unembed.param_np("W_U")
        torch_mode = wants_torch(tokens)
        if (is_torch(tokens) or isinstance(tokens, np.ndarray)) and np.asarray(to_numpy(tokens)).size > 1:
            ids = np.asarray(to_numpy(tokens)).astype(np.int64)
            return wrap(np.ascontiguousarray(np.moveaxis(W_U[:, ids], 0, -1)), torch_mode)
        if isinstance(tokens, str):
            token = self.to_single_token(tokens)
        elif isinstance(tokens, (int, np.integer)):
            token = int(tokens)
        elif is_torch(tokens) or isinstance(tokens, np.ndarray):
            token = int(np.asarray(to_numpy(tokens)).reshape(-1)[0])
        else:
            raise ValueError(f"Invalid token type: {type(tokens)}")
        return wrap(np.ascontiguousarray(W_U[:, token]), torch_mode)

    # ------------------------------------------------------------------------------------
    # flags
    # ------------------------------------------------------------------------------------
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
        for k, v in flags.items():
            setattr(self.cfg, k, bool(v))
        if self._engine is not None and not self._engine_dirty:
            self._engine.set_flags(**{k: bool(v) for k, v in flags.items()})

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

    # ------------------------------------------------------------------------------------
    # engine
    # ------------------------------------------------------------------------------------
    def _check_supported(self) -> None:
        cfg = self.cfg
        problems = []
        if cfg.attn_only:
            problems.append("attn_only")
        if cfg.parallel_attn_mlp:
            problems.append("parallel_attn_mlp")
        if cfg.positional_embedding_type not in ("standard", "rotary"):
            problems.append(f"positional_embedding_type={cfg.positional_embedding_type!r}")
        if cfg.act_fn not in _ENGINE_ACTS:
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
            "act_fn": cfg.act_fn,
            "gated_mlp": bool(cfg.gated_mlp),
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

    # ------------------------------------------------------------------------------------
    # forward
    # ------------------------------------------------------------------------------------
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
        if self.cfg.positional_embedding_type == "standard" and tokens.shape[1] > self.cfg.n_ctx:
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
        if shortformer_pos_embed is not None:
            raise NotImplementedError("shortformer models are not supported by glassbox")
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

    def _run_engine(self, tokens, residual, mask, positions, start, stop, return_type, torch_mode, B, P):
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

    # ------------------------------------------------------------------------------------
    # caching
    # ------------------------------------------------------------------------------------
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

    # ------------------------------------------------------------------------------------
    # losses and misc
    # ------------------------------------------------------------------------------------
    def generate(self, input: Any = "", max_new_tokens: int = 10, stop_at_eos: bool = True,
                 eos_token_id: Any = None, do_sample: bool = True, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, temperature: float = 1.0, freq_penalty: float = 0.0,
                 use_past_kv_cache: bool = True, prepend_bos: Optional[bool] = None,
                 padding_side: Optional[str] = None, return_type: Optional[str] = "input",
                 verbose: bool = True, **kwargs: Any) -> Any:
        """Sample tokens after ``input`` (str, list[str] or tokens), TransformerLens's ``generate``.

        ``do_sample=False`` (or ``temperature=0``) is greedy; ``return_type`` "input" / "str" /
        "tokens". Hooks attached with ``hooks()`` / ``add_hook`` fire at every step. Each step
        recomputes the sequence (no KV cache yet; ``use_past_kv_cache`` is accepted). Extra
        keyword: ``repetition_penalty``, ``seed`` (for sampling). See :mod:`glassbox.generation`.
        """
        from glassbox.generation import generate as _generate

        unknown = set(kwargs) - {"repetition_penalty", "seed"}
        if unknown:
            raise TypeError(f"generate() got unexpected keyword arguments {sorted(unknown)}")
        return _generate(self, input, max_new_tokens=max_new_tokens, stop_at_eos=stop_at_eos,
                         eos_token_id=eos_token_id, do_sample=do_sample, top_k=top_k, top_p=top_p,
                         temperature=temperature, freq_penalty=freq_penalty,
                         use_past_kv_cache=use_past_kv_cache, prepend_bos=prepend_bos,
                         padding_side=padding_side, return_type=return_type, verbose=verbose, **kwargs)

    def loss_fn(self, logits: Any, tokens: Any, attention_mask: Any = None, per_token: bool = False) -> Any:
        """Next-token cross-entropy (``utils.lm_cross_entropy_loss``)."""
        return utils.lm_cross_entropy_loss(logits, tokens, attention_mask, per_token)

    def all_head_labels(self) -> List[str]:
        return [f"L{l}H{h}" for l in range(self.cfg.n_layers) for h in range(self.cfg.n_heads)]

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

    def get_device(self) -> str:
        return "cpu"

    def to(self, *args: Any, **kwargs: Any) -> "HookedTransformer":
        """No-op (glassbox runs on the CPU in float32); kept for script compatibility."""
        return self

    def cpu(self) -> "HookedTransformer":
        return self

    def cuda(self, *args: Any, **kwargs: Any) -> "HookedTransformer":
        raise NotImplementedError("glassbox runs on the CPU only")

    def eval(self) -> "HookedTransformer":
        return self

    def train(self, mode: bool = True) -> "HookedTransformer":
        return self

    def requires_grad_(self, requires_grad: bool = True) -> "HookedTransformer":
        return self

    def parameters(self):
        return iter(self.state_dict().values())

    def named_parameters(self):
        return iter(self.state_dict().items())

    @property
    def n_params_total(self) -> int:
        return int(sum(int(np.prod(v.shape)) for v in self._state_dict_np().values()))

    # ------------------------------------------------------------------------------------
    # stacked weights
    # ------------------------------------------------------------------------------------
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
        from glassbox.components import _factored, _transpose

        return _factored(self.W_Q, _transpose(self.W_K))

    @property
    def OV(self):
        from glassbox.components import _factored

        return _factored(self.W_V, self.W_O)

    def __repr__(self) -> str:
        return (
            f"HookedTransformer(model_name={self.cfg.model_name!r}, n_layers={self.cfg.n_layers}, "
            f"d_model={self.cfg.d_model}, n_heads={self.cfg.n_heads}, d_vocab={self.cfg.d_vocab})"
        )


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------
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


def _dtype_name(dtype: Any) -> str:
    """"float32", "bfloat16", "float16" or "auto" from a name or a NumPy / torch dtype."""
    from glassbox.loading.pretrained import _check_dtype

    return _check_dtype(dtype)


def _load_tokenizer(loaded: Any) -> Optional[Tokenizer]:
    files = getattr(loaded, "tokenizer_files", None) or {}
    path = files.get("tokenizer.json")
    folder = getattr(loaded, "tokenizer_dir", None)
    if path is None and folder:
        import os

        candidate = os.path.join(folder, "tokenizer.json")
        if os.path.exists(candidate):
            path = candidate
    if path is None:
        logging.warning("no tokenizer.json found for this model; string input will not work")
        return None
    import os

    return Tokenizer.from_file(path, folder or os.path.dirname(path))


__all__ = ["HookedTransformer", "Output", "rotary_inv_freq"]
