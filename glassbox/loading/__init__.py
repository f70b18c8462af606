"""Loading: name or path -> (TL config fields, TL state dict, tokenizer files), plus TL's weight
processing and random initialisation, all on NumPy.

Public entry points used by ``glassbox.HookedTransformer``:

* :func:`load_pretrained_parts(name_or_path, *, dtype="float32", n_ctx=None, first_n_layers=None)
  <glassbox.loading.pretrained.load_pretrained_parts>` -> :class:`LoadedModel`
* :func:`process_weights(sd, cfg, fold_ln=True, center_writing_weights=True, center_unembed=True,
  fold_value_biases=True, refactor_factored_attn_matrices=False) <glassbox.loading.processing.process_weights>`
  -> ``(state_dict, updated_cfg_fields)``
* :func:`init_weights(cfg, seed=None) <glassbox.loading.init.init_weights>` -> state dict
* :func:`embedded_models() <glassbox.loading.embedded.embedded_models>` -> the names of the tiny
  models shipped in the package (``"glassbox/tiny-gpt2-ioi"``, ...), loadable offline by name

Runtime dependencies: numpy, huggingface_hub (Hub cache resolution only).
"""
from __future__ import annotations

from .arch_llama import rotary_inv_freq
from .embedded import EMBEDDED_MODELS, embedded_model_path, embedded_models, is_embedded_name
from .hub import MODEL_ALIASES, ModelFiles, official_model_name, resolve_model_files
from .init import init_weights
from .pretrained import (
    ADAPTERS,
    LoadedModel,
    convert_hf_config,
    get_adapter,
    load_pretrained_parts,
    supported_architectures,
)
from .processing import (
    RotaryRefactorError,
    center_unembed,
    center_writing_weights,
    fold_layer_norm,
    fold_value_biases,
    process_weights,
    refactor_factored_attn_matrices,
)
from .safetensors_io import (
    SafeTensor,
    SafetensorsError,
    SafetensorsFile,
    load_safetensors,
    open_safetensors,
    read_safetensors,
    read_safetensors_sharded,
    save_safetensors,
)
from .shapes import check_state_dict, param_shapes

__all__ = [
    "load_pretrained_parts", "LoadedModel", "process_weights", "init_weights",
    "fold_layer_norm", "center_writing_weights", "center_unembed", "fold_value_biases",
    "refactor_factored_attn_matrices", "RotaryRefactorError",
    "embedded_models", "embedded_model_path", "is_embedded_name", "EMBEDDED_MODELS",
    "resolve_model_files", "ModelFiles", "MODEL_ALIASES", "official_model_name",
    "ADAPTERS", "get_adapter", "supported_architectures", "convert_hf_config",
    "param_shapes", "check_state_dict", "rotary_inv_freq",
    "SafeTensor", "SafetensorsError", "SafetensorsFile", "open_safetensors", "read_safetensors",
    "read_safetensors_sharded", "load_safetensors", "save_safetensors",
]
