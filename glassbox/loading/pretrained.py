"""``load_pretrained_parts``: name or path -> (TL config fields, TL state dict, tokenizer files).

This is the loading half of ``HookedTransformer.from_pretrained``: it resolves the checkpoint
(:mod:`glassbox.loading.hub`), reads ``config.json``, picks the architecture adapter registered
for ``config.json["architectures"][0]``, converts the config to ``HookedTransformerConfig`` field
values and the safetensors weights to TransformerLens names and layouts, and validates every
shape. Weight processing (``fold_ln`` & co.) is separate: :func:`glassbox.loading.processing.process_weights`.
"""
from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Dict, Optional

import numpy as np

from ..config.validation import as_int, check_config_fields
from . import arch_gpt2, arch_llama
from .hub import ModelFiles, resolve_model_files
from .mapped import copy_to_memory
from .safetensors_io import SafeTensor, read_safetensors, read_safetensors_sharded
from .shapes import check_state_dict
from .source import TensorSource
from .stored import StoredMatrix

__all__ = ["LoadedModel", "load_pretrained_parts", "ADAPTERS", "supported_architectures",
           "get_adapter", "convert_hf_config"]

#: ``config.json["architectures"][0]`` -> adapter module.
ADAPTERS: Dict[str, ModuleType] = {}
for _mod in (arch_gpt2, arch_llama):
    for _arch in _mod.ARCHITECTURES:
        ADAPTERS[_arch] = _mod


def supported_architectures() -> list:
    """The HF architecture names glassbox can load."""
    return sorted(ADAPTERS)


def get_adapter(architecture: str) -> ModuleType:
    """The adapter module for an HF architecture name; ``ValueError`` listing the supported ones."""
    try:
        return ADAPTERS[architecture]
    except KeyError:
        raise ValueError(f"architecture {architecture!r} is not supported by glassbox; supported "
                         f"architectures: {', '.join(supported_architectures())}") from None


@dataclass
class LoadedModel:
    """What :func:`load_pretrained_parts` returns.

    Attributes:
        config: ``HookedTransformerConfig`` field values (TL names), ready for ``from_dict``.
        state_dict: ``{TL parameter name: float32 C-contiguous array}`` in TL layouts (matrices
            are :class:`~glassbox.loading.stored.StoredMatrix` when loaded with a reduced or
            ``"auto"`` dtype; GQA K/V as
            ``blocks.{l}.attn._W_K`` etc.). Arrays may be copy-on-write views of the memory-mapped
            checkpoint: writing to them never touches the file.
        tokenizer_dir: the folder holding the tokenizer files (None when there are none).
        tokenizer_files: ``{file name: path}`` for tokenizer.json, tokenizer_config.json,
            special_tokens_map.json, vocab.json, merges.txt, ... that exist.
        source: the resolved folder or file the weights came from.
        hf_config: the raw ``config.json`` contents.
    """

    config: Dict[str, Any]
    state_dict: Dict[str, np.ndarray]
    tokenizer_dir: Optional[str] = None
    tokenizer_files: Dict[str, str] = field(default_factory=dict)
    source: str = ""
    hf_config: Dict[str, Any] = field(default_factory=dict)


_DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "float": "float32", "f32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
    "f16": "float16", "half": "float16", "auto": "auto",
}
#: ``dtype`` name -> what :meth:`TensorSource.stored` keeps (None: float32 arrays).
STORED_KEEP = {"float32": None, "bfloat16": "BF16", "float16": "F16", "auto": "auto"}


def _mem_available() -> Optional[int]:
    """Bytes the kernel says can be allocated without swapping (``MemAvailable``), or None."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_float32_fits(src: Any, name: Any) -> None:
    """Refuse, before allocating, a float32 conversion the machine cannot hold: the kernel's
    OOM killer would otherwise end the process (a notebook kernel and all its state) half-way
    through the load. The float32 copy plus the transposes made while converting need about
    1.1x the float32 bytes."""
    import numpy as _np

    need = 0
    for t in src.tensors.values():
        need += int(_np.prod(t.shape, dtype=_np.int64)) * 4
    avail = _mem_available()
    if avail is not None and need * 1.1 > avail:
        raise MemoryError(
            f"loading {name!s} as float32 needs about {need * 1.1 / 2**30:.1f} GiB but only "
            f"{avail / 2**30:.1f} GiB are available: pass dtype='bfloat16' (or 'float16', 'auto') "
            f"to keep the weights as stored, memory-mapped from the file (no copy)")


def _check_dtype(dtype: Any) -> str:
    """``"float32"``, ``"bfloat16"``, ``"float16"`` or ``"auto"`` from a name, NumPy or torch dtype."""
    name = str(getattr(dtype, "__name__", dtype)).lower()
    if name.startswith("torch."):
        name = name[len("torch."):]
    if name in _DTYPE_NAMES:
        return _DTYPE_NAMES[name]
    try:
        if np.dtype(dtype) == np.float32:
            return "float32"
        if np.dtype(dtype) == np.float16:
            return "float16"
    except TypeError:
        pass
    raise ValueError(f"dtype={dtype!r} is not supported: use 'float32' (default), 'bfloat16', "
                     f"'float16' or 'auto'")


def _read_config(path: str) -> Dict[str, Any]:
    try:
        with open(path, "r", encoding="utf-8") as fh:
            hf = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return hf


def convert_hf_config(hf: Dict[str, Any], *, model_name: str = "custom",
                      tokenizer_name: Optional[str] = None, where: str = "config.json") -> Dict[str, Any]:
    """Convert an HF ``config.json`` dict to ``HookedTransformerConfig`` field values.

    Every field is checked (types, ranges, divisibility: see
    :class:`glassbox.config.validation.FieldReader` and
    :func:`~glassbox.config.validation.check_config_fields`); a bad value is a ``ValueError``
    naming ``where`` (the file), the field and the value.
    """
    if not isinstance(hf, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(hf).__name__}")
    archs = hf.get("architectures") or []
    if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
        raise ValueError(f"{where} has no valid 'architectures' entry (got {archs!r}); supported "
                         f"architectures: {', '.join(supported_architectures())}")
    arch = archs[0]
    adapter = get_adapter(arch)
    try:
        if "where" in inspect.signature(adapter.convert_config).parameters:
            cfg = adapter.convert_config(hf, where=where)
        else:
            cfg = adapter.convert_config(hf)
    except KeyError as exc:
        raise ValueError(f"{where} for {arch} lacks required field {exc.args[0]!r}") from None
    cfg.setdefault("default_prepend_bos", True)
    cfg["d_vocab_out"] = cfg["d_vocab"]
    cfg["original_architecture"] = arch
    cfg["model_name"] = model_name.rstrip("/").split("/")[-1]
    cfg["tokenizer_name"] = tokenizer_name if tokenizer_name is not None else model_name
    cfg["init_weights"] = False
    cfg["dtype"] = "float32"
    check_config_fields(cfg, where)
    return cfg


def _open_tensors(files: ModelFiles) -> Dict[str, SafeTensor]:
    if files.index_path:
        return read_safetensors_sharded(files.index_path)
    tensors: Dict[str, SafeTensor] = {}
    for f in files.weight_files:
        for name, t in read_safetensors(f).items():
            if name in tensors:
                raise ValueError(f"{f}: tensor {name!r} also appears in {tensors[name].file}")
            tensors[name] = t
    return tensors


def apply_overrides(cfg: Dict[str, Any], *, n_ctx: Optional[int], first_n_layers: Optional[int]) -> None:
    """TransformerLens's ``from_pretrained(n_ctx=..., first_n_layers=...)``: truncate the blocks
    and/or override the context length of a converted config, in place."""
    if first_n_layers is not None:
        cfg["n_layers"] = as_int(first_n_layers, "first_n_layers", minimum=1, maximum=cfg["n_layers"])
        if cfg.get("attn_types"):
            cfg["attn_types"] = cfg["attn_types"][: cfg["n_layers"]]
    if n_ctx is not None:
        cfg["n_ctx"] = as_int(n_ctx, "n_ctx")


def load_pretrained_parts(
    name_or_path: str,
    *,
    dtype: Any = "float32",
    n_ctx: Optional[int] = None,
    first_n_layers: Optional[int] = None,
    revision: Optional[str] = None,
    cache_dir: Optional[str] = None,
    copy_weights: bool = False,
) -> LoadedModel:
    """Load a checkpoint's config, weights (TL layout) and tokenizer file paths.

    Args:
        name_or_path: a local folder (``config.json`` + ``*.safetensors``), a ``.safetensors``
            file next to ``config.json``, a Hub repo id found in the local HF cache, or a
            TransformerLens GPT-2 alias (``"gpt2"``, ``"gpt2-small"``, ``"distilgpt2"``, ...).
        dtype: ``"float32"`` (default): every weight is a float32 array. ``"bfloat16"``,
            ``"float16"`` or ``"auto"`` (LLaMA family only): the big matrices are returned as
            :class:`~glassbox.loading.stored.StoredMatrix` in the file's layout, memory-mapped
            when the file already holds that dtype (``"auto"``: whatever it holds), rounded to
            it in memory otherwise; norm weights and biases stay float32. Architectures without
            stored-weight support load as float32 (with a warning).
        n_ctx: override the context length (as TL's ``from_pretrained(n_ctx=...)``); for learned
            positions the extra rows of ``W_pos`` are dropped, and a larger value than the
            checkpoint has positions raises ``ValueError``.
        first_n_layers: keep only the first n blocks (TL's ``first_n_layers``).
        revision, cache_dir: Hub revision and cache folder for repo ids.
        copy_weights: copy every weight that would stay memory-mapped from its file (bf16/f16
            matrices kept as stored, GGUF blocks) into RAM, so that later changes to the files
            cannot affect the model (see :mod:`glassbox.loading.mapped`). Costs the file size in
            RAM; without it a changed file makes the next run raise ``WeightFileChangedError``.

    Raises:
        ValueError: unsupported architecture, malformed config/weights, or a config whose
            shapes disagree with the weights (the message names the tensor and both shapes).
        OSError: missing files, or a repo id that is not in the local HF cache.
    """
    # --- GGUF files (llama.cpp): matrices kept as stored, see glassbox.loading.gguf_io ---
    if str(name_or_path).lower().endswith(".gguf"):
        from .gguf_io import load_gguf

        return load_gguf(str(name_or_path), n_ctx=n_ctx, first_n_layers=first_n_layers,
                         copy_weights=copy_weights)
    # --- end GGUF ---
    dtype_name = _check_dtype(dtype)
    files = resolve_model_files(name_or_path, revision=revision, cache_dir=cache_dir)
    hf = _read_config(files.config_path)
    tokenizer_name = files.official_name if files.repo_id else files.folder
    cfg = convert_hf_config(hf, model_name=files.official_name, tokenizer_name=tokenizer_name,
                            where=files.config_path)
    cfg["dtype"] = dtype_name
    apply_overrides(cfg, n_ctx=n_ctx, first_n_layers=first_n_layers)

    adapter = get_adapter(cfg["original_architecture"])
    src = TensorSource(_open_tensors(files), files.source, cfg["original_architecture"])
    keep = STORED_KEEP[dtype_name]
    if keep == "auto":
        reduced = sorted({t.dtype for t in src.tensors.values() if t.dtype in ("BF16", "F16")})
        if not reduced:
            keep = None  # a float32 checkpoint: plain (editable) float32 arrays
        cfg["dtype"] = {"BF16": "bfloat16", "F16": "float16"}[reduced[0]] if reduced else "float32"
    if keep is not None and "stored" not in inspect.signature(adapter.convert_weights).parameters:
        logging.warning("dtype=%r: %s weights cannot be kept in a reduced dtype; loading them as "
                        "float32", dtype_name, cfg["original_architecture"])
        keep = None
        cfg["dtype"] = "float32"
    if keep is None:
        _check_float32_fits(src, name_or_path)
        sd = adapter.convert_weights(src, cfg, hf)
    else:
        sd = adapter.convert_weights(src, cfg, hf, stored=keep)
    for k, v in sd.items():
        if isinstance(v, StoredMatrix):
            continue
        if v.dtype != np.float32 or not v.flags.c_contiguous or not v.flags.aligned:
            # a new array: ascontiguousarray would keep a view at an odd file offset unaligned
            sd[k] = np.array(v, dtype=np.float32, order="C", copy=True)
    check_state_dict(sd, cfg, what=f"{files.source}: converted state dict")
    if copy_weights:
        sd = copy_to_memory(sd)
    tok = files.tokenizer_files
    return LoadedModel(
        config=cfg,
        state_dict=sd,
        tokenizer_dir=files.folder if tok else None,
        tokenizer_files=dict(tok),
        source=files.source,
        hf_config=hf,
    )
