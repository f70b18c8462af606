"""``HookedTransformer.from_pretrained``: names, folders and files to a processed model."""
from __future__ import annotations

import logging
from typing import Any, Optional


from glassbox.config.hooked_transformer_config import HookedTransformerConfig
from glassbox.tokenization import Tokenizer


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


class PretrainedMixin:
    """Part of :class:`glassbox.HookedTransformer` (see its docstring)."""

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
    ) -> Any:
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

        Memory-mapped weights tie the model to its files: a file changed after loading makes
        the next run raise ``WeightFileChangedError``. ``copy_weights=True`` copies them into RAM
        at load instead (docs/reliability.md).
        """
        from glassbox.loading.pretrained import load_pretrained_parts
        from glassbox.utilities.devices import check_device

        check_device(device, "device")
        if checkpoint_index is not None or checkpoint_value is not None:
            raise NotImplementedError("training checkpoints are not supported by glassbox")
        if hf_model is not None:
            raise NotImplementedError("hf_model= is not supported: glassbox loads weights from files")
        if n_devices != 1:
            raise NotImplementedError("glassbox runs on the CPU: n_devices must be 1")
        dtype = from_pretrained_kwargs.pop("torch_dtype", dtype)
        load_kw = {k: from_pretrained_kwargs.pop(k) for k in ("revision", "cache_dir", "copy_weights") if k in from_pretrained_kwargs}
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
        name, cfg.tokenizer_name = cfg.tokenizer_name, None  # the tokenizer (if any) was loaded above
        model = cls(cfg, tokenizer=tokenizer, default_padding_side=default_padding_side)
        model.cfg.tokenizer_name = name
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
    ) -> Any:
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
