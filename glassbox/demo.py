"""The main job: a short interpretability study on a real model, offline, every number computed.

Run ``python -m glassbox.demo`` (defaults to SmolLM2-135M-Instruct, a LLaMA-architecture model
shipped on PyPI as a Q4_1 GGUF; see :mod:`glassbox.demo_models`), or pass any model glassbox
loads: ``python -m glassbox.demo --model gpt2`` (from the local HF cache) or a local folder.

What it measures, in TransformerLens terms:

1. **Next-token prediction** — the top tokens after a factual prompt.
2. **Logit lens** — ``cache.accumulated_resid(apply_ln=True)`` projected onto ``W_U``: the layer at
   which the answer token becomes the model's top guess.
3. **Induction heads** — attention patterns (``hook_pattern``) on a repeated random token
   sequence; a head's induction score is its mean attention from each token of the second copy to
   the token right after that token's first occurrence.
4. **Activation patching** — for a clean/corrupted prompt pair, patch ``resid_pre`` of every
   layer and position from the clean run into the corrupted one (``run_with_hooks``) and measure
   how much of the clean logit difference each patch restores.
5. **Causal check of the induction heads** — zero-ablate the top induction heads via ``hook_z``
   and measure the loss on the repeated half before and after.

A JSON summary goes to ``--out`` (default ``glassbox_demo.json``) and, when matplotlib is
installed, the plots to PNG files beside it.
"""
from __future__ import annotations

import argparse
import json
import time
from functools import partial
from typing import Any, Dict, List

import numpy as np

import glassbox
from glassbox import HookedTransformer, utils


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def next_token(model: HookedTransformer, prompt: str, k: int = 5) -> List[Dict[str, Any]]:
    logits = model(prompt)
    probs = _softmax(utils.to_numpy(logits)[0, -1].astype(np.float64))
    top = np.argsort(-probs)[:k]
    return [{"token": model.to_single_str_token(int(t)), "prob": float(probs[t])} for t in top]


def logit_lens(model: HookedTransformer, prompt: str, answer: str) -> Dict[str, Any]:
    answer_id = model.to_single_token(answer)
    _, cache = model.run_with_cache(prompt, names_filter=lambda n: n.endswith(("resid_pre", "resid_post", "hook_scale")))
    resid, labels = cache.accumulated_resid(layer=-1, incl_mid=False, apply_ln=True, pos_slice=-1,
                                            return_labels=True)
    resid = utils.to_numpy(resid)[:, 0, :]  # [component, d_model] at the last position
    W_U = utils.to_numpy(model.W_U)
    b_U = utils.to_numpy(model.b_U)
    layer_logits = resid @ W_U + b_U
    ranks = (layer_logits > layer_logits[:, [answer_id]]).sum(-1)
    probs = _softmax(layer_logits.astype(np.float64))[:, answer_id]
    first_top = next((labels[i] for i in range(len(labels)) if ranks[i] == 0), None)
    return {"answer": answer, "labels": labels, "rank": ranks.tolist(), "prob": probs.tolist(),
            "first_layer_where_top1": first_top}


def induction_scores(model: HookedTransformer, seq_len: int = 40, batch: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lo, hi = 1000, min(model.cfg.d_vocab, 20000)
    half = rng.integers(lo, hi, size=(batch, seq_len))
    bos = model.tokenizer.bos_token_id if model.tokenizer is not None and model.tokenizer.bos_token_id is not None else 0
    tokens = np.concatenate([np.full((batch, 1), bos), half, half], axis=1).astype(np.int64)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    L, H = model.cfg.n_layers, model.cfg.n_heads
    scores = np.zeros((L, H))
    q = np.arange(1 + seq_len, 1 + 2 * seq_len)  # second copy
    k = q - seq_len + 1  # the token after the first occurrence
    for layer in range(L):
        pattern = utils.to_numpy(cache["pattern", layer])  # [batch, head, q, k]
        scores[layer] = pattern[:, :, q, k].mean(axis=(0, 2))
    return scores


def repeated_loss(model: HookedTransformer, heads: List[tuple], seq_len: int = 40, batch: int = 4, seed: int = 1) -> Dict[str, float]:
    rng = np.random.default_rng(seed)
    half = rng.integers(1000, min(model.cfg.d_vocab, 20000), size=(batch, seq_len))
    tokens = np.concatenate([half, half], axis=1).astype(np.int64)

    def second_half_loss(logits: Any) -> float:
        per_tok = utils.to_numpy(model.loss_fn(logits, tokens, per_token=True))
        return float(per_tok[:, seq_len:].mean())

    clean = second_half_loss(model(tokens))

    def zero_heads(z, hook, hs):
        for h in hs:
            z[:, :, h, :] = 0.0

    by_layer: Dict[int, List[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    hooks = [(utils.get_act_name("z", layer), partial(zero_heads, hs=hs)) for layer, hs in by_layer.items()]
    ablated = second_half_loss(model.run_with_hooks(tokens, fwd_hooks=hooks))
    return {"loss_repeated_half": clean, "loss_with_heads_ablated": ablated}


def patch_resid(model: HookedTransformer, clean: str, corrupted: str, right: str, wrong: str) -> Dict[str, Any]:
    clean_tokens = model.to_tokens(clean)
    corrupted_tokens = model.to_tokens(corrupted)
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError("clean and corrupted prompts must have the same number of tokens")
    r, w = model.to_single_token(right), model.to_single_token(wrong)

    def logit_diff(logits: Any) -> float:
        lg = utils.to_numpy(logits)[0, -1]
        return float(lg[r] - lg[w])

    clean_logits, clean_cache = model.run_with_cache(clean_tokens, names_filter=lambda n: n.endswith("resid_pre"))
    clean_diff = logit_diff(clean_logits)
    corrupted_diff = logit_diff(model(corrupted_tokens))
    L, P = model.cfg.n_layers, clean_tokens.shape[1]
    restored = np.zeros((L, P))

    def patch(resid, hook, pos, source):
        resid[:, pos, :] = source[:, pos, :]

    for layer in range(L):
        source = clean_cache["resid_pre", layer]
        for pos in range(P):
            logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[
                (utils.get_act_name("resid_pre", layer), partial(patch, pos=pos, source=source))])
            restored[layer, pos] = (logit_diff(logits) - corrupted_diff) / (clean_diff - corrupted_diff)
    return {"clean_logit_diff": clean_diff, "corrupted_logit_diff": corrupted_diff,
            "str_tokens": model.to_str_tokens(clean_tokens), "restored_fraction": restored}


def _plots(out_prefix: str, lens: Dict[str, Any], induction: np.ndarray, patching: Dict[str, Any]) -> List[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    files = []
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    axes[0].plot(lens["prob"], marker="o")
    axes[0].set_xticks(range(len(lens["labels"])), lens["labels"], rotation=90, fontsize=6)
    axes[0].set_title(f"Logit lens: p({lens['answer']!r}) by layer")
    im = axes[1].imshow(induction, aspect="auto", cmap="viridis")
    axes[1].set_title("Induction score per head")
    axes[1].set_xlabel("head")
    axes[1].set_ylabel("layer")
    fig.colorbar(im, ax=axes[1])
    rf = patching["restored_fraction"]
    im = axes[2].imshow(rf, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
    axes[2].set_xticks(range(rf.shape[1]), patching["str_tokens"], rotation=90, fontsize=7)
    axes[2].set_title("Patching resid_pre: fraction of logit diff restored")
    axes[2].set_ylabel("layer")
    fig.colorbar(im, ax=axes[2])
    fig.tight_layout()
    path = out_prefix + ".png"
    fig.savefig(path, dpi=110)
    files.append(path)
    return files


def main(argv: Any = None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model name or path (default: SmolLM2-135M GGUF from PyPI)")
    ap.add_argument("--out", default="glassbox_demo.json", help="where to write the JSON summary")
    ap.add_argument("--prompt", default="The Eiffel Tower is located in the city of")
    ap.add_argument("--answer", default=" Paris")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    if args.model is None:
        from glassbox.demo_models import smollm2_path

        args.model = smollm2_path()
    model = HookedTransformer.from_pretrained(args.model)
    from glassbox import _C

    print(f"glassbox {glassbox.__version__} | SIMD path: {_C.isa()} | "
          f"loaded in {time.perf_counter() - t0:.1f}s")

    summary: Dict[str, Any] = {"model": args.model, "cfg": {k: getattr(model.cfg, k) for k in (
        "n_layers", "d_model", "n_heads", "n_key_value_heads", "d_mlp", "d_vocab",
        "normalization_type", "positional_embedding_type")}}

    top = next_token(model, args.prompt)
    summary["next_token"] = top
    print(f"\n1. Next token after {args.prompt!r}:")
    for t in top:
        print(f"   {t['token']!r:>14}  p = {t['prob']:.3f}")

    lens = logit_lens(model, args.prompt, args.answer)
    summary["logit_lens"] = lens
    print(f"\n2. Logit lens for {args.answer!r}: rank by layer (0 = top guess)")
    print("   " + " ".join(f"{lab}:{rk}" for lab, rk in zip(lens["labels"], lens["rank"])))
    print(f"   first residual stream where it is the top guess: {lens['first_layer_where_top1']}")

    ind = induction_scores(model)
    order = np.dstack(np.unravel_index(np.argsort(-ind, axis=None), ind.shape))[0]
    top_heads = [(int(l), int(h)) for l, h in order[:5]]
    summary["induction_scores"] = ind.tolist()
    summary["top_induction_heads"] = [{"layer": l, "head": h, "score": float(ind[l, h])} for l, h in top_heads]
    print("\n3. Induction heads (mean attention to the token after the previous occurrence):")
    for l, h in top_heads:
        print(f"   L{l}H{h}: {ind[l, h]:.3f}")
    print(f"   median head: {np.median(ind):.3f}")

    abl = repeated_loss(model, top_heads)
    summary["induction_ablation"] = abl
    print(f"\n4. Loss on the repeated half: {abl['loss_repeated_half']:.3f} nats; "
          f"with those 5 heads zero-ablated: {abl['loss_with_heads_ablated']:.3f}")

    clean = "When Mary and John went to the store, John gave a drink to"
    corrupted = "When Mary and John went to the store, Mary gave a drink to"
    try:
        patching = patch_resid(model, clean, corrupted, " Mary", " John")
    except (ValueError, AssertionError) as exc:  # a tokenizer that splits the names differently
        patching = None
        print(f"\n5. Activation patching skipped: {exc}")
    if patching is not None:
        rf = patching["restored_fraction"]
        summary["patching"] = {**patching, "restored_fraction": rf.tolist()}
        print(f"\n5. Activation patching of resid_pre (IOI prompt): clean logit diff "
              f"{patching['clean_logit_diff']:.2f}, corrupted {patching['corrupted_logit_diff']:.2f}")
        P = rf.shape[1]
        for pos in range(P):
            best = int(np.argmax(np.abs(rf[:, pos])))
            if np.abs(rf[:, pos]).max() > 0.2:
                print(f"   pos {pos:2d} {patching['str_tokens'][pos]!r:>10}: restores up to "
                      f"{rf[best, pos]:+.2f} (layer {best}); layers restoring > 0.5: "
                      f"{[int(l) for l in np.where(rf[:, pos] > 0.5)[0]]}")
        files = _plots(args.out.rsplit(".", 1)[0], lens, ind, patching)
    else:
        files = []
    with open(args.out, "w") as fh:
        json.dump(summary, fh, indent=1, default=float)
    print(f"\nWrote {args.out}" + (f" and {', '.join(files)}" if files else "")
          + f" in {time.perf_counter() - t0:.1f}s total.")
    return summary


if __name__ == "__main__":
    main()
