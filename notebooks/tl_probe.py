"""Run the TransformerLens (or glassbox) load-and-cache workflow on one model and report, as
JSON on the last line of stdout, what happened at each step: the exception (type and text) or
the time, the peak resident memory, the dtype of the weights and what the cache holds.

Used by the study notebook (section 4) in a subprocess with a timeout, so a crash, a hang or a
memory blow-up in one library cannot take the notebook down:

    python notebooks/tl_probe.py tl       PROMPT MODEL [MODEL ...] [--via-transformers-gguf]
    python notebooks/tl_probe.py glassbox PROMPT MODEL [MODEL ...]

MODEL is a local folder (config.json + weights) or a .gguf file. When TransformerLens refuses the
model (its official-name allow-list), the probe measures the usual workaround too: transformers
loads the checkpoint in fp32, and a hand-written HookedTransformerConfig plus TransformerLens's
own weight converter build the model. For a GGUF that workaround (transformers dequantises the
whole file) runs only with --via-transformers-gguf, as it is slow. Nothing here is typed in: every
field is measured in this process.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
import traceback
import warnings


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def _rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _current_rss_mib() -> float:
    """Resident memory now (MiB), from /proc/self/statm (the peak where that is unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return _rss_mib()


def _err(exc: BaseException) -> dict:
    text = str(exc).strip().replace("\n", " ")
    if len(text) > 400:
        text = text[:400] + f" ... [{len(str(exc))} characters]"
    return {"ok": False, "error_type": type(exc).__name__, "error": text,
            "where": traceback.extract_tb(exc.__traceback__)[-1].filename.split("site-packages/")[-1]
            if exc.__traceback__ else ""}


def _step(report: dict, name: str, fn):
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = fn()
        for w in caught:  # e.g. TransformerLens 3.9's own deprecation notice, recorded as it was raised
            text = f"{w.category.__name__}: {str(w.message).strip()[:300]}"
            if text not in report.setdefault("warnings", []):
                report["warnings"].append(text)
        report["steps"].append({"step": name, "ok": True, "seconds": round(time.perf_counter() - t0, 2),
                                "rss_mib": round(_current_rss_mib(), 1), "peak_rss_mib": round(_rss_mib(), 1)})
        return value
    except Exception as exc:  # recorded, not hidden: the notebook prints it
        entry = {"step": name, "seconds": round(time.perf_counter() - t0, 2),
                 "rss_mib": round(_current_rss_mib(), 1), "peak_rss_mib": round(_rss_mib(), 1)}
        entry.update(_err(exc))
        report["steps"].append(entry)
        return None


def _inspect(report: dict, model, prompt: str) -> None:
    logits, cache = _step(report, "run_with_cache(prompt)", lambda: model.run_with_cache(prompt)) or (None, None)
    if cache is None:
        return
    names = list(cache.keys())
    report["cached_hooks"] = len(names)
    report["has_hook_rot_q"] = any(n.endswith("attn.hook_rot_q") for n in names)
    report["has_hook_pre_linear"] = any(n.endswith("mlp.hook_pre_linear") for n in names)
    report["hook_q_shape"] = list(cache["blocks.0.attn.hook_q"].shape)
    report["hook_k_shape"] = list(cache["blocks.0.attn.hook_k"].shape)
    w = model.blocks[0].attn.W_Q
    report["W_Q_dtype"] = str(getattr(w, "dtype", type(w).__name__))
    report["ln1_class"] = type(model.blocks[0].ln1).__name__
    import numpy as np
    last = np.asarray(logits[0, -1].detach().float().numpy() if hasattr(logits, "detach") else logits[0, -1])
    report["top_token"] = model.to_string([int(last.argmax())]) if hasattr(model, "to_string") else int(last.argmax())
    report["top_logit"] = float(last.max())


def _tl_by_hand(hf, tok):
    """TransformerLens on ``hf``'s weights without the allow-list: an explicit config from the
    HF config and TL's per-architecture converter (Llama / Mistral / Qwen2 / GPT-2)."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained import weight_conversions as wc

    c, arch = hf.config, type(hf).__name__
    if arch == "GPT2LMHeadModel":
        cfg = HookedTransformerConfig(
            d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head, d_mlp=4 * c.n_embd,
            n_layers=c.n_layer, n_ctx=c.n_positions, eps=c.layer_norm_epsilon, d_vocab=c.vocab_size,
            act_fn=c.activation_function, normalization_type="LN", original_architecture=arch,
            model_name=os.path.basename(str(c._name_or_path)) or "gpt2-like", device="cpu",
            dtype=torch.float32, default_prepend_bos=True)
        sd = wc.convert_gpt2_weights(hf, cfg)
    else:
        H, D = c.num_attention_heads, c.hidden_size
        G = getattr(c, "num_key_value_heads", None) or H
        d = getattr(c, "head_dim", None) or D // H
        rope = {}
        for attr in ("rope_parameters", "rope_scaling"):
            if isinstance(getattr(c, attr, None), dict):
                rope.update(getattr(c, attr))
        theta = getattr(c, "rope_theta", None) or rope.get("rope_theta", 10000.0)
        cfg = HookedTransformerConfig(
            d_model=D, d_head=d, n_heads=H, d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers,
            n_ctx=min(int(c.max_position_embeddings), 2048), eps=c.rms_norm_eps, d_vocab=c.vocab_size,
            act_fn="silu", n_key_value_heads=G if G != H else None, normalization_type="RMS",
            positional_embedding_type="rotary", rotary_adjacent_pairs=False, rotary_dim=d,
            rotary_base=float(theta), final_rms=True, gated_mlp=True, original_architecture=arch,
            model_name="by-hand", device="cpu", dtype=torch.float32, default_prepend_bos=True)
        convert = {"LlamaForCausalLM": wc.convert_llama_weights, "MistralForCausalLM": wc.convert_mistral_weights,
                   "Qwen2ForCausalLM": wc.convert_qwen2_weights}[arch]
        sd = convert(hf, cfg)
    model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
    model.load_and_process_state_dict(sd, fold_ln=True, center_writing_weights=True, center_unembed=True,
                                      fold_value_biases=True)
    model.eval()
    return model


def run_tl(spec: str, prompt: str, via_transformers_gguf: bool = False) -> dict:
    report: dict = {"library": "transformer_lens", "model": spec, "steps": []}
    t0 = time.perf_counter()
    import transformer_lens
    report["version"] = getattr(transformer_lens, "__version__", None) or _dist_version("transformer-lens")
    report["import_seconds"] = round(time.perf_counter() - t0, 2)
    report["has_HookedTransformer"] = hasattr(transformer_lens, "HookedTransformer")
    try:
        from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES
        report["allow_list_size"] = len(OFFICIAL_MODEL_NAMES)
    except ImportError:
        pass
    if not report["has_HookedTransformer"]:
        return report
    from transformer_lens import HookedTransformer
    model = _step(report, f"HookedTransformer.from_pretrained({os.path.basename(spec)!r})",
                  lambda: HookedTransformer.from_pretrained(spec, device="cpu"))
    if model is None and (not spec.endswith(".gguf") or via_transformers_gguf):
        # The allow-list refuses any name or path it does not know. The workaround a researcher
        # uses: transformers loads the checkpoint in fp32 (dequantising a GGUF), a
        # HookedTransformerConfig is written out from its config, and TransformerLens's own
        # weight converter and processing install the weights.
        held = {}

        def load_hf():
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
            if spec.endswith(".gguf"):
                d, f = os.path.split(spec)
                held["hf"] = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
                held["tok"] = AutoTokenizer.from_pretrained(d, gguf_file=f)
            else:
                held["hf"] = AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32)
                held["tok"] = AutoTokenizer.from_pretrained(spec)
            report["hf_architecture"] = type(held["hf"]).__name__
            report["hf_fp32_bytes"] = int(sum(p.numel() * p.element_size() for p in held["hf"].parameters()))
        _step(report, "transformers: load the checkpoint in fp32" + (" (dequantise the GGUF)" if spec.endswith(".gguf") else ""), load_hf)
        if "hf" in held:
            model = _step(report, "HookedTransformer(explicit config) + TL's weight converter + processing",
                          lambda: _tl_by_hand(held["hf"], held["tok"]))
            held.clear()
    if model is not None:
        report["weight_bytes"] = int(sum(p.numel() * p.element_size() for p in model.parameters()))
        report["n_params"] = int(sum(p.numel() for p in model.parameters()))
        _inspect(report, model, prompt)
    return report


def run_glassbox(spec: str, prompt: str) -> dict:
    report: dict = {"library": "glassbox", "model": spec, "steps": []}
    t0 = time.perf_counter()
    import glassbox
    from glassbox.display import weight_storage
    report["version"] = getattr(glassbox, "__version__", None) or _dist_version("glassbox-lens")
    report["import_seconds"] = round(time.perf_counter() - t0, 2)
    model = _step(report, f"HookedTransformer.from_pretrained({os.path.basename(spec)!r})",
                  lambda: glassbox.HookedTransformer.from_pretrained(spec))
    if model is not None:
        report["weight_bytes"] = int(sum(b for _, b in weight_storage(model).values()))
        report["n_params"] = int(model.n_params_total)
        _inspect(report, model, prompt)
        report["W_Q_stored_as"] = str(model.cfg.weight_dtype)
    return report


def main(argv) -> None:
    """``tl_probe.py tl|glassbox PROMPT MODEL [MODEL ...]`` [``--via-transformers-gguf``]: one
    JSON list (one report per model) on the last line of stdout. One process per library, so
    the library is imported once; ``rss_mib`` after each step shows what that model holds."""
    flags = [a for a in argv if a.startswith("--")]
    which, prompt, *specs = [a for a in argv if not a.startswith("--")]
    reports = []
    for spec in specs:
        base = _current_rss_mib()
        rep = run_tl(spec, prompt, "--via-transformers-gguf" in flags) if which == "tl" else run_glassbox(spec, prompt)
        rep["rss_before_mib"] = round(base, 1)
        rep["peak_rss_mib"] = round(_rss_mib(), 1)
        reports.append(rep)
        import gc
        gc.collect()
    print(json.dumps(reports))


if __name__ == "__main__":
    main(sys.argv[1:])
