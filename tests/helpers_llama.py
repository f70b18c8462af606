"""Fixture builders for the LLaMA-family parity tests (Llama, Mistral, Qwen2).

Checkpoints are built locally (no model hub) with every parameter random: HF initialises RMSNorm
weights to 1 and biases to 0, which would hide a forgotten norm weight or bias, so we draw them.
References on the very same weights: the HF model (eager attention, float32) and TransformerLens's
``HookedTransformer`` built offline from an explicit ``HookedTransformerConfig`` and TL's own
per-architecture converter (``convert_llama_weights`` / ``convert_mistral_weights`` /
``convert_qwen2_weights``) plus ``load_and_process_state_dict``.

The TL config is written out field by field from the HF config, because TL's generic Llama branch
does not read ``rope_theta``/rope scaling or ``head_dim`` from config.json (tl-api-surface §5.2):
the reference must use the true values.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

ARCH_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
}


@dataclass(frozen=True)
class LlamaSpec:
    """One LLaMA-family checkpoint shape. ``extra`` holds further HF config kwargs (JSON text)."""

    name: str
    arch: str = "llama"
    hidden_size: int = 64
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    num_hidden_layers: int = 2
    intermediate_size: int = 96
    vocab_size: int = 101
    max_position_embeddings: int = 64
    seed: int = 0
    std: float = 0.15
    extra: str = "{}"

    def kwargs(self) -> Dict[str, Any]:
        kw = dict(hidden_size=self.hidden_size, num_attention_heads=self.num_attention_heads,
                  num_key_value_heads=self.num_key_value_heads,
                  num_hidden_layers=self.num_hidden_layers, intermediate_size=self.intermediate_size,
                  vocab_size=self.vocab_size, max_position_embeddings=self.max_position_embeddings,
                  rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=1, pad_token_id=None)
        kw.update(json.loads(self.extra))
        return kw

    @property
    def H(self) -> int:
        return self.num_attention_heads

    @property
    def G(self) -> int:
        return self.num_key_value_heads

    @property
    def d_head(self) -> int:
        return int(self.kwargs().get("head_dim") or self.hidden_size // self.num_attention_heads)

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True) + "|llama-v1"
        return self.name + "-" + hashlib.sha1(blob.encode()).hexdigest()[:10]


def spec(name: str, **kw) -> LlamaSpec:
    extra = kw.pop("extra", {})
    return LlamaSpec(name, extra=json.dumps(extra, sort_keys=True), **kw)


# ------------------------------------------------------------------------------------------
# HF model / folder


def make_hf(s: LlamaSpec, dtype: Optional[str] = None):
    """The HF ``*ForCausalLM`` with every parameter random (norm weights ~ 1 + noise, biases too)."""
    import torch
    import transformers

    cfg_cls, model_cls = (getattr(transformers, n) for n in ARCH_CLASSES[s.arch])
    cfg = cfg_cls(**s.kwargs())
    torch.manual_seed(s.seed)
    model = model_cls(cfg)
    g = torch.Generator().manual_seed(s.seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.3 * noise)
            elif "embed_tokens" in name:
                p.copy_(noise)  # O(1) embeddings, as real models have after RMSNorm
            else:
                p.copy_(s.std * noise)
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    model.eval()
    return model


def save_folder(s: LlamaSpec, folder: Path, dtype: Optional[str] = None) -> Path:
    """config.json + model.safetensors for ``s`` (weights stored in ``dtype``, default float32)."""
    folder = Path(folder)
    done = folder / ".complete"
    if done.exists():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model = make_hf(s, dtype=dtype)
    model.save_pretrained(str(folder), safe_serialization=True)
    assert (folder / "model.safetensors").exists(), list(folder.iterdir())
    done.write_text("ok")
    return folder


def load_hf(folder: Path, dtype: str = "float32"):
    """The HF reference, eager attention, computing in ``dtype`` (float32: weights up-cast)."""
    import torch
    import transformers

    cfg = json.loads((Path(folder) / "config.json").read_text())
    model_cls = getattr(transformers, cfg["architectures"][0])
    model = model_cls.from_pretrained(str(folder), attn_implementation="eager",
                                      dtype=getattr(torch, dtype))
    model.eval()
    return model


# ------------------------------------------------------------------------------------------
# TransformerLens reference


def _rope(hf_cfg) -> Dict[str, Any]:
    params: Dict[str, Any] = {}
    for attr in ("rope_parameters", "rope_scaling"):
        v = getattr(hf_cfg, attr, None)
        if isinstance(v, dict):
            params.update(v)
    theta = getattr(hf_cfg, "rope_theta", None)
    if theta is not None:
        params["rope_theta"] = theta
    params.setdefault("rope_theta", 10000.0)
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def tl_config(hf_model, processed: bool, **flags):
    """An explicit ``HookedTransformerConfig`` with the checkpoint's true values."""
    import torch
    from transformer_lens import HookedTransformerConfig

    c = hf_model.config
    H, D = c.num_attention_heads, c.hidden_size
    G = c.num_key_value_heads or H
    d = getattr(c, "head_dim", None) or D // H
    arch = type(hf_model).__name__
    rope = _rope(c)
    kw: Dict[str, Any] = dict(
        d_model=D, d_head=d, n_heads=H, d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers,
        n_ctx=c.max_position_embeddings, eps=c.rms_norm_eps, d_vocab=c.vocab_size, act_fn="silu",
        n_key_value_heads=G if (G != H or arch != "LlamaForCausalLM") else None,
        normalization_type="RMSPre" if processed else "RMS", positional_embedding_type="rotary",
        rotary_adjacent_pairs=False, rotary_dim=d, rotary_base=float(rope["rope_theta"]),
        final_rms=True, gated_mlp=True, original_architecture=arch, model_name="llama-fixture",
        init_weights=False, device="cpu", dtype=torch.float32, default_prepend_bos=True,
    )
    if rope["rope_type"] == "llama3":
        kw.update(use_NTK_by_parts_rope=True, NTK_by_parts_factor=float(rope["factor"]),
                  NTK_by_parts_low_freq_factor=float(rope["low_freq_factor"]),
                  NTK_by_parts_high_freq_factor=float(rope["high_freq_factor"]),
                  NTK_original_ctx_len=int(rope["original_max_position_embeddings"]))
    elif rope["rope_type"] == "linear":
        kw["rotary_scaling_factor"] = float(rope["factor"])
    window = getattr(c, "sliding_window", None) if arch == "MistralForCausalLM" else None
    if window:
        kw.update(use_local_attn=True, window_size=int(window), attn_types=["local"] * c.num_hidden_layers)
    kw.update(flags)
    return HookedTransformerConfig(**kw)


def load_tl(hf_model, processed: bool = True, **flags):
    """TL ``HookedTransformer`` on ``hf_model``'s weights via TL's own converter and processing."""
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained import weight_conversions as wc

    cfg = tl_config(hf_model, processed, **flags)
    convert = {"LlamaForCausalLM": wc.convert_llama_weights,
               "MistralForCausalLM": wc.convert_mistral_weights,
               "Qwen2ForCausalLM": wc.convert_qwen2_weights}[type(hf_model).__name__]
    model = HookedTransformer(cfg, move_to_device=False)
    sd = convert(hf_model, cfg)
    # TL's Llama converter writes zero q/k/v biases; attention_bias checkpoints are not used here.
    model.load_and_process_state_dict(
        sd, fold_ln=processed, center_writing_weights=processed, center_unembed=processed,
        fold_value_biases=processed, refactor_factored_attn_matrices=False)
    model.eval()
    return model


def round_to_bf16_(hf_model) -> None:
    """Round every parameter of an fp32 HF model to bfloat16 values, in place (kept as fp32)."""
    import torch

    with torch.no_grad():
        for p in hf_model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
