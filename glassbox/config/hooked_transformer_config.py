"""``HookedTransformerConfig``: the hyperparameters of a HookedTransformer.

Same field names, defaults and derived values as TransformerLens 3.x
(``transformer_lens.config.hooked_transformer_config``). Fields that only make sense
for torch (``device``, ``n_devices``) are kept for compatibility; glassbox always
computes on the CPU in float32. ``dtype`` is ``torch.float32`` when torch is already
imported, the string ``"float32"`` otherwise.
"""
from __future__ import annotations

import pprint
import random
import sys
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Union

import numpy as np

from glassbox.config.validation import InvalidConfigError, as_int, check_config_fields

SUPPORTED_ACTIVATIONS = [
    "relu",
    "gelu",
    "silu",
    "gelu_new",
    "solu_ln",
    "gelu_fast",
    "gelu_pytorch_tanh",
    "solu",
    "xielu",
]


_INT_FIELDS = ("d_model", "d_head", "n_layers", "n_ctx", "n_heads", "d_mlp", "d_vocab", "d_vocab_out",
               "n_key_value_heads", "rotary_dim", "window_size")


def _require(condition: bool, message: str) -> None:
    """TransformerLens asserts these; ours survive ``python -O`` and are also ValueErrors."""
    if not condition:
        raise InvalidConfigError(message)


@dataclass
class HookedTransformerConfig:
    """Configuration of a HookedTransformer (see TransformerLens for field meanings).

    Required: ``d_model``, ``d_head``, ``n_layers``, ``n_ctx``. Derived in
    ``__post_init__``: ``n_heads`` (d_model // d_head if -1), ``d_mlp`` (4·d_model),
    ``d_vocab_out`` (= d_vocab), ``rotary_dim`` (= d_head for rotary), ``attn_scale``
    (sqrt(d_head)), ``initializer_range`` (0.8/sqrt(d_model) for gpt2 init), ``n_params``.

    Invalid values raise :class:`~glassbox.config.validation.InvalidConfigError` (a
    ``ValueError``, and an ``AssertionError`` where TransformerLens asserts) naming the field and
    the value: sizes that are not positive integers, ``n_heads`` not a multiple of
    ``n_key_value_heads``, an odd ``rotary_dim`` or one larger than ``d_head``, ...
    (:func:`~glassbox.config.validation.check_config_fields`).
    """

    d_model: int
    d_head: int
    n_layers: int
    n_ctx: int
    n_heads: int = -1
    d_mlp: Optional[int] = None
    d_vocab: int = -1
    device: Optional[str] = None
    use_attn_result: bool = False
    use_split_qkv_input: bool = False
    default_prepend_bos: bool = True
    positional_embedding_type: str = "standard"
    n_key_value_heads: Optional[int] = None
    attn_only: bool = False
    gated_mlp: bool = False
    uses_rms_norm: bool = False
    eps: float = 1e-5
    layer_norm_folding: bool = False
    act_fn: Optional[str] = "relu"
    normalization_type: Optional[str] = "LN"
    num_experts: Optional[int] = None
    experts_per_token: Optional[int] = None
    final_rms: bool = False
    dtype: Any = None
    model_name: str = "custom"
    use_attn_scale: bool = True
    attn_scale: float = -1.0
    use_hook_mlp_in: bool = False
    use_attn_in: bool = False
    use_qk_norm: bool = False
    clip_qkv: Optional[float] = None
    use_logn_attn: bool = False
    train_seq_length: Optional[int] = None
    use_dynamic_ntk_rope: bool = False
    use_local_attn: bool = False
    ungroup_grouped_query_attention: bool = False
    original_architecture: Optional[str] = None
    #: glassbox: how the weights are stored, e.g. ``"float32"``, ``"bfloat16"``, ``"Q4_1+Q8_0+float32"``
    #: (set by ``from_pretrained``; ``dtype`` is the compute dtype, always float32 here)
    weight_dtype: Optional[str] = None
    from_checkpoint: bool = False
    checkpoint_index: Optional[int] = None
    checkpoint_label_type: Optional[str] = None
    checkpoint_value: Optional[int] = None
    tokenizer_name: Optional[str] = None
    window_size: Optional[int] = None
    attn_types: Optional[List] = None
    init_mode: str = "gpt2"
    n_devices: int = 1
    attention_dir: str = "causal"
    seed: Optional[int] = None
    initializer_range: float = -1.0
    init_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    d_vocab_out: int = -1
    parallel_attn_mlp: bool = False
    rotary_dim: Optional[int] = None
    n_params: Optional[int] = None
    use_hook_tokens: bool = False
    tokenizer_prepends_bos: Optional[bool] = None
    post_embedding_ln: bool = False
    rotary_base: Union[float, int] = 10000
    rotary_base_local: Optional[Union[float, int]] = None
    rotary_scaling_factor: float = 1.0
    trust_remote_code: bool = False
    rotary_adjacent_pairs: bool = False
    load_in_4bit: bool = False
    quantization_method: Optional[str] = None
    relative_attention_max_distance: Optional[int] = None
    relative_attention_num_buckets: Optional[int] = None
    decoder_start_token_id: Optional[int] = None
    tie_word_embeddings: bool = False
    use_normalization_before_and_after: bool = False
    attn_scores_soft_cap: float = -1.0
    output_logits_soft_cap: float = -1.0
    use_NTK_by_parts_rope: bool = False
    NTK_by_parts_low_freq_factor: float = 1.0
    NTK_by_parts_high_freq_factor: float = 4.0
    NTK_by_parts_factor: float = 8.0
    NTK_original_ctx_len: int = 8192
    use_yarn_rope: bool = False
    yarn_factor: float = 1.0
    yarn_attention_factor: float = 1.0
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    yarn_original_max_position_embeddings: int = 4096
    yarn_truncate: bool = True
    yarn_global_attn_only: bool = False
    use_attention_sinks: bool = False
    norm_topk_prob: bool = False

    def __post_init__(self) -> None:
        d_model = as_int(self.d_model, "HookedTransformerConfig: d_model")
        d_head = as_int(self.d_head, "HookedTransformerConfig: d_head")
        if self.n_heads == -1:
            if d_model % d_head != 0:
                raise InvalidConfigError(
                    f"HookedTransformerConfig: d_model ({d_model}) must be divisible by d_head "
                    f"({d_head}) when n_heads is not given")
            self.n_heads = d_model // d_head
        if self.device is None:
            self.device = "cpu"
        if self.d_mlp is None:
            self.d_mlp = self.d_model * 4
        if self.dtype is None:
            torch = sys.modules.get("torch")
            self.dtype = torch.float32 if torch is not None else "float32"
        if self.seed is not None:
            self.set_seed_everywhere(self.seed)
        if self.use_local_attn:
            _require(self.window_size is not None, "window_size must be specified for local attention")
            _require(self.attn_types is not None, "attn_types must be specified for local attention")
        if not self.attn_only:
            _require(self.act_fn is not None, "act_fn must be specified for non-attn-only models")
            _require(self.act_fn in SUPPORTED_ACTIVATIONS,
                     f"act_fn={self.act_fn} must be one of {SUPPORTED_ACTIVATIONS}")
        if self.initializer_range < 0:
            self.initializer_range = 0.8 / np.sqrt(self.d_model) if self.init_mode == "gpt2" else 1.0
        if self.d_vocab_out == -1:
            self.d_vocab_out = self.d_vocab
        if self.positional_embedding_type == "rotary" and self.rotary_dim is None:
            self.rotary_dim = self.d_head
        if self.num_experts is not None:
            _require(self.experts_per_token is not None, "experts_per_token must be set if num_experts is set")
        if self.experts_per_token is not None:
            _require(self.num_experts is not None, "num_experts must be set if experts_per_token is set")
        check_config_fields(self)
        for name in _INT_FIELDS:  # checked integral above: plain ints from here on (4096.0, np.int64)
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool) and type(value) is not int:
                setattr(self, name, int(value))
        self.n_params = self.n_layers * (self.d_model * self.d_head * self.n_heads * 4)
        if not self.attn_only:
            per_layer = self.d_model * self.d_mlp * (2 + int(self.gated_mlp))
            if self.num_experts:
                per_layer = (per_layer + self.d_model) * self.num_experts
            self.n_params += self.n_layers * per_layer
        if self.use_attn_scale and self.attn_scale == -1.0:
            self.attn_scale = float(np.sqrt(self.d_head))
        for name, value in list(self.__dict__.items()):  # plain Python values in reprs and dumps
            if isinstance(value, np.generic):
                setattr(self, name, value.item())
        _require(self.default_prepend_bos in (True, False),
                 f"default_prepend_bos must be either True or False, but {self.default_prepend_bos} is given")

    @classmethod
    def unwrap(cls, config: Union[Dict, "HookedTransformerConfig"]) -> "HookedTransformerConfig":
        """A config from a dict or a config (returned as is)."""
        if isinstance(config, dict):
            return cls.from_dict(config)
        if isinstance(config, cls):
            return config
        return cls.from_dict(dict(config.to_dict()))

    @classmethod
    def from_dict(cls, config_dict: Dict[str, Any]) -> "HookedTransformerConfig":
        """Build from a dict; unknown keys raise TypeError like the dataclass constructor."""
        return cls(**config_dict)

    def to_dict(self) -> Dict[str, Any]:
        return self.__dict__

    def __repr__(self) -> str:
        return "HookedTransformerConfig:\n" + pprint.pformat(self.to_dict())

    def _repr_html_(self) -> str:
        from glassbox.display import config_html

        return config_html(self)

    def set_seed_everywhere(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.manual_seed(seed)

    def is_layer_norm_activation(self) -> bool:
        return self.act_fn is not None and self.act_fn.endswith("_ln")


def config_field_names() -> list[str]:
    """Names of all config fields (used to filter loader output)."""
    return [f.name for f in fields(HookedTransformerConfig)]


__all__ = ["HookedTransformerConfig", "SUPPORTED_ACTIVATIONS", "config_field_names"]
