#!/usr/bin/env python
"""Train the two models shipped in ``glassbox/models/`` (run by hand; never imported by glassbox).

    OMP_NUM_THREADS=1 python scripts/train_embedded_models.py            # both models
    OMP_NUM_THREADS=1 python scripts/train_embedded_models.py --only gpt2 --steps 500 --out /tmp/x

Builds a word-level byte-level tokenizer from the task vocabulary of
:mod:`glassbox.models.tasks`, trains a ``GPT2LMHeadModel`` and a ``LlamaForCausalLM`` (HF model
classes, torch, one thread, fixed seeds) on a mix of IOI prompts (training name pairs and
templates only) and repeated random tokens, saves them as standard HF folders, then measures
them *with glassbox* (held-out IOI accuracy and logit difference, induction losses and scores,
head ablations and head patching), checks glassbox's logits against HF's, and writes each
folder's ``README.md`` model card with those numbers. The measurements are also written to
``<folder>/metrics.json`` and the training run's settings and final losses to
``<folder>/training.json`` (both shipped with the weights).

Needs torch and transformers (the test extras) and a built glassbox (``python setup.py
build_ext --inplace``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from glassbox.models import tasks  # noqa: E402

BOS = "<|endoftext|>"
UNK = "<|unk|>"
PUNCTUATION = (",", ".")

#: the architecture of each model: name -> (folder, HF class, config kwargs)
N_CTX = 128
D_MODEL = 64
N_LAYERS = 3
N_HEADS = 4
MODELS = {
    "gpt2": dict(folder="tiny-gpt2-ioi", seed=1, d_mlp=256),
    "llama": dict(folder="tiny-llama-ioi", seed=2, d_mlp=192, n_kv_heads=2),
}
#: induction curriculum: segment lengths L in IND_MIN_LEN..IND_SHORT_LEN for the first
#: IND_SHORT_PHASE of training, then the upper end grows linearly to IND_MAX_LEN at IND_RAMP_END;
#: a segment is repeated 2..IND_MAX_COPIES times within IND_MAX_TOKENS tokens (BOS included)
IND_MIN_LEN, IND_SHORT_LEN, IND_MAX_LEN = 2, 10, 32
IND_SHORT_PHASE, IND_RAMP_END, IND_MAX_COPIES, IND_MAX_TOKENS = 0.4, 0.7, 4, 65
#: the --resume phase: segment lengths and the most copies (tokens distinct within a segment)
RESUME_LEN, RESUME_COPIES = (8, 32), 3
#: --alphabet K: half of the induction batches are instead BOS + x + x with x of ALPHABET_LEN
#: tokens drawn with replacement from K symbols (K of the pool, chosen per row). Every symbol
#: recurs within x, so knowing which tokens occurred (the bag-of-words shortcut that distinct
#: segments reward) is worth nothing there: only looking up what followed the current token's
#: earlier occurrences lowers the loss, which is the pressure that grows an induction head
ALPHABET_LEN = (16, 32)
#: loss weight of the IOI answer token (every other target has weight 1)
ANSWER_WEIGHT = 4.0


# --------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------
def build_tokenizer():
    """Word-level vocabulary in GPT-2's byte-level form: ``"ĠMary"`` is the token for " Mary"."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab: Dict[str, int] = {}
    for t in (BOS, UNK) + PUNCTUATION:
        vocab[t] = len(vocab)
    for w in tasks.vocabulary_words():
        vocab.setdefault("\u0120" + w, len(vocab))
        if w[0].isupper():  # sentence-initial form, e.g. "When" right after BOS
            vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(BOS, special=True), AddedToken(UNK, special=True)])
    return tok


def save_tokenizer(tok, folder: Path) -> None:
    tok.save(str(folder / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": BOS, "pad_token": BOS, "unk_token": UNK,
        "add_bos_token": False, "add_prefix_space": False,
        "model_max_length": N_CTX, "padding_side": "right",
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    special = {"bos_token": BOS, "eos_token": BOS, "pad_token": BOS, "unk_token": UNK}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
class Data:
    """Training batches: IOI prompts + answer (training pairs and templates) and induction rows."""

    def __init__(self, tok, seed: int):
        self.tok = tok
        self.rng = np.random.default_rng(seed)
        self.bos = tok.token_to_id(BOS)
        self.pairs = tasks.name_pairs("train")
        self.pool = np.array([tok.token_to_id("\u0120" + w) for w in tasks.RANDOM_WORDS])
        self._cache: Dict[str, List[int]] = {}

    def encode(self, text: str) -> List[int]:
        ids = self.tok.encode(text).ids
        if self.tok.token_to_id(UNK) in ids:
            raise ValueError(f"unknown word in {text!r}")
        return ids

    def ioi(self, n: int) -> Tuple[np.ndarray, np.ndarray]:
        rows = []
        r = self.rng
        for _ in range(n):
            x, y = self.pairs[r.integers(len(self.pairs))]
            a, b = (x, y) if r.integers(2) == 0 else (y, x)
            order = "ABBA" if r.integers(2) == 0 else "BABA"
            t = tasks.TRAIN_TEMPLATES[r.integers(len(tasks.TRAIN_TEMPLATES))]
            p = tasks._make_prompt(t, a, b, order, tasks.PLACES[r.integers(len(tasks.PLACES))],
                                   tasks.OBJECTS[r.integers(len(tasks.OBJECTS))],
                                   tasks.VERBS[r.integers(len(tasks.VERBS))])
            rows.append([self.bos] + self.encode(p.text + p.answer))
        width = max(map(len, rows))
        toks = np.full((n, width), self.bos, dtype=np.int64)
        weight = np.zeros((n, width), dtype=np.float32)
        for i, row in enumerate(rows):
            toks[i, :len(row)] = row
            weight[i, 1:len(row)] = 1.0  # every real target (position 0 is the BOS input)
            weight[i, len(row) - 1] = ANSWER_WEIGHT
        return toks, weight

    fixed = None
    alphabet = 0

    def induction(self, n: int, progress: float) -> Tuple[np.ndarray, np.ndarray, int]:
        if self.alphabet and self.rng.random() < 0.5:
            L = int(self.rng.integers(ALPHABET_LEN[0], ALPHABET_LEN[1] + 1))
            syms = self.pool[np.argsort(self.rng.random((n, len(self.pool))), axis=1)[:, :self.alphabet]]
            seg = np.take_along_axis(syms, self.rng.integers(self.alphabet, size=(n, L)), 1)
            toks = np.concatenate([np.full((n, 1), self.bos), seg, seg], 1).astype(np.int64)
            weight = np.ones(toks.shape, dtype=np.float32)
            weight[:, 0] = 0.0
            return toks, weight, L
        if self.fixed:
            (lo, hi), max_copies = self.fixed
            L = int(self.rng.integers(lo, hi + 1))
        else:
            ramp = min(1.0, max(0.0, (progress - IND_SHORT_PHASE) / (IND_RAMP_END - IND_SHORT_PHASE)))
            top = IND_SHORT_LEN + (IND_MAX_LEN - IND_SHORT_LEN) * ramp
            L = int(self.rng.integers(IND_MIN_LEN, int(round(top)) + 1))
            max_copies = IND_MAX_COPIES
        copies = int(self.rng.integers(2, max(2, min(max_copies, (IND_MAX_TOKENS - 1) // L)) + 1))
        if self.fixed:  # distinct tokens within a segment (as in tasks.induction_tokens)
            seg = self.pool[np.argsort(self.rng.random((n, len(self.pool))), axis=1)[:, :L]]
        else:
            seg = self.pool[self.rng.integers(len(self.pool), size=(n, L))]
        toks = np.concatenate([np.full((n, 1), self.bos)] + [seg] * copies, 1).astype(np.int64)
        weight = np.ones(toks.shape, dtype=np.float32)
        weight[:, 0] = 0.0
        return toks, weight, L


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------
def make_model(kind: str, vocab_size: int, untied: bool = False, n_heads: int = 0):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    spec = MODELS[kind]
    torch.manual_seed(spec["seed"])
    if kind == "gpt2":
        cfg = GPT2Config(vocab_size=vocab_size, n_positions=N_CTX, n_embd=D_MODEL, n_layer=N_LAYERS,
                         n_head=n_heads or N_HEADS, n_inner=spec["d_mlp"], activation_function="gelu_new",
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0,
                         tie_word_embeddings=not untied)
        model = GPT2LMHeadModel(cfg)
    else:
        cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=D_MODEL, intermediate_size=spec["d_mlp"],
                          num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
                          num_key_value_heads=spec["n_kv_heads"], max_position_embeddings=N_CTX,
                          rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu",
                          attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
                          bos_token_id=0, eos_token_id=0, pad_token_id=0, initializer_range=0.02)
        model = LlamaForCausalLM(cfg)
    return model


def weighted_loss(logits, toks, weight):
    """Weighted mean next-token NLL, and the [batch, pos - 1] NLL matrix."""
    import torch

    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    nll = -logp.gather(-1, toks[:, 1:, None])[..., 0]
    w = weight[:, 1:]
    return (nll * w).sum() / w.sum(), nll.detach()


def train(kind: str, tok, steps: int, lr: float, b_ioi: int, b_ind: int, log_every: int = 100,
          resume: Path = None, distinct: bool = False, alphabet: int = 0,
          schedule: str = "cosine", untied: bool = False, n_heads: int = 0,
          alphabet_until: float = 1.0, weight_decay: float = 0.05):
    """Train from scratch, or (``resume``: a saved folder) continue with the resume curriculum:
    induction segments of RESUME_LEN[0]..RESUME_LEN[1] distinct tokens, 2..RESUME_COPIES
    copies. ``distinct``: use that induction data from scratch too (instead of the curriculum).
    ``alphabet``: mix in small-alphabet induction rows (ALPHABET_LEN) for the first
    ``alphabet_until`` of the steps (then distinct segments only). ``schedule``: after the
    warm-up, "cosine" decays the lr to 10%, "constant" keeps it."""
    import torch

    if resume is None:
        model = make_model(kind, tok.get_vocab_size(), untied=untied, n_heads=n_heads)
    else:
        from transformers import AutoModelForCausalLM

        torch.manual_seed(MODELS[kind]["seed"] + 100)
        model = AutoModelForCausalLM.from_pretrained(str(resume))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[{kind}] {n_params:,} parameters; {steps} steps, batch {b_ioi} IOI + {b_ind} induction"
          + (f", resumed from {resume}" if resume else ""))
    data = Data(tok, seed=1000 + MODELS[kind]["seed"] + (500 if resume else 0))
    data.fixed = (RESUME_LEN, RESUME_COPIES) if resume or distinct else None
    data.alphabet = alphabet
    # weight decay on matrices, not on GPT-2's position embeddings (decay shrinks them below
    # the token embeddings' scale, and the previous-token heads need them)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "wpe" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "wpe" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))
    warm = max(1, steps // 20)
    if schedule == "constant":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    model.train()
    t0 = time.time()
    hist = []
    for step in range(steps):
        if alphabet and step == int(alphabet_until * steps):
            data.alphabet = 0
        tn, mn, seg_len = data.induction(b_ind, step / steps)
        ln, nll_n = weighted_loss(model(torch.from_numpy(tn)).logits, torch.from_numpy(tn), torch.from_numpy(mn))
        if b_ioi:
            ti, mi = data.ioi(b_ioi)
            li, nll_i = weighted_loss(model(torch.from_numpy(ti)).logits, torch.from_numpy(ti), torch.from_numpy(mi))
            ans = torch.from_numpy((mi[:, 1:] == ANSWER_WEIGHT).astype(np.float32))
            ans_loss = float((nll_i * ans).sum() / ans.sum())
        else:
            li, ans_loss = torch.zeros(()), 0.0
        loss = li + ln
        rep_loss = float(nll_n[:, seg_len:].mean())  # targets from the second copy on
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        hist.append((li.item(), ln.item(), ans_loss, rep_loss))
        if (step + 1) % log_every == 0 or step == 0:
            a = np.mean(hist[-log_every:], 0)
            print(f"[{kind}] step {step + 1:5d}  ioi loss {a[0]:.3f} (answer {a[2]:.3f})  induction loss "
                  f"{a[1]:.3f} (after the first copy {a[3]:.3f})  {time.time() - t0:6.0f}s", flush=True)
    model.eval()
    return model, {"steps": steps, "lr": lr, "batch_ioi": b_ioi, "batch_induction": b_ind,
                   "induction_data": "distinct" if data.fixed else "curriculum",
                   "alphabet": alphabet, "alphabet_until": alphabet_until, "schedule": schedule,
                   "n_heads": model.config.num_attention_heads, "weight_decay": weight_decay,
                   "seconds": round(time.time() - t0, 1), "parameters": n_params,
                   "final_ioi_loss": float(np.mean(hist[-100:], 0)[0]),
                   "final_induction_loss": float(np.mean(hist[-100:], 0)[1])}


# --------------------------------------------------------------------------------------------
# measurements, with glassbox
# --------------------------------------------------------------------------------------------
def measure(folder: Path, seed: int = 0) -> Dict[str, Any]:
    """Every number of the model card, computed with glassbox (plus a logits check vs HF)."""
    import torch
    from transformers import AutoModelForCausalLM

    from glassbox import HookedTransformer
    from glassbox.utils import get_act_name

    gb = HookedTransformer.from_pretrained_no_processing(str(folder))
    gbp = HookedTransformer.from_pretrained(str(folder))
    hf = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    L, H = gb.cfg.n_layers, gb.cfg.n_heads
    out: Dict[str, Any] = {}

    # --- IOI accuracy / logit diff per split -----------------------------------------------
    ioi = {}
    for names in ("train", "heldout"):
        for templates in ("train", "heldout"):
            b = tasks.ioi_batch(gb, n=256, names=names, templates=templates, seed=seed)
            lg = gb(b.clean_tokens)
            ld = b.logit_diff(lg)
            ioi[f"names={names},templates={templates}"] = {
                "accuracy": b.accuracy(lg), "logit_diff_mean": float(ld.mean()),
                "logit_diff_min": float(ld.min()), "frac_logit_diff_positive": float((ld > 0).mean())}
    out["ioi"] = ioi
    held = tasks.ioi_batch(gb, n=256, seed=seed)  # held-out names and templates
    lg_gb = np.asarray(gb(held.clean_tokens))
    with torch.no_grad():
        lg_hf = hf(torch.from_numpy(held.clean_tokens)).logits.numpy()
    mask = held.attention_mask.astype(bool)
    out["max_abs_logit_diff_glassbox_vs_hf"] = float(np.abs(lg_gb - lg_hf)[mask].max())
    out["hf_heldout_accuracy"] = held.accuracy(lg_hf)
    lg_p = np.asarray(gbp(held.clean_tokens))
    out["processed_heldout_accuracy"] = held.accuracy(lg_p)
    out["processed_max_abs_logit_diff_minus_mean"] = float(np.abs(
        (lg_p - lg_p.mean(-1, keepdims=True)) - (lg_gb - lg_gb.mean(-1, keepdims=True)))[mask].max())

    # --- induction --------------------------------------------------------------------------
    ind = {}
    for seq_len in (10, 20, 30):
        toks = tasks.induction_tokens(gb, batch=32, seq_len=seq_len, seed=seed)
        lg, cache = gb.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_pattern"))
        ind[seq_len] = {**tasks.induction_losses(lg, toks, seq_len),
                        "scores": tasks.induction_scores(cache, seq_len).round(4).tolist()}
    out["induction"] = ind
    scores = np.asarray(ind[20]["scores"])
    flat = [(float(scores[l, h]), l, h) for l in range(L) for h in range(H)]
    flat.sort(reverse=True)
    out["induction_top_heads"] = [(l, h, s) for s, l, h in flat[:3]]
    out["induction_median_score"] = float(np.median(scores))

    def zero_heads(heads):
        by: Dict[int, List[int]] = {}
        for l, h in heads:
            by.setdefault(l, []).append(h)

        def mk(hs):
            def fn(z, hook):
                z[:, :, hs, :] = 0.0
            return fn
        return [(get_act_name("z", l), mk(hs)) for l, hs in by.items()]

    rng = np.random.default_rng(seed + 7)
    all_heads = [(l, h) for l in range(L) for h in range(H)]

    def random_sets(k, n=10, exclude=()):
        cand = [x for x in all_heads if x not in exclude]
        return [[cand[i] for i in rng.choice(len(cand), k, replace=False)] for _ in range(n)]

    toks = tasks.induction_tokens(gb, batch=32, seq_len=20, seed=seed + 1)
    ind_heads = [(l, h) for _, l, h in flat[:2]]
    abl = {"heads": ind_heads,
           "clean": tasks.induction_losses(gb(toks), toks, 20)["repeated_half"],
           "top2_zeroed": tasks.induction_losses(gb.run_with_hooks(toks, fwd_hooks=zero_heads(ind_heads)),
                                                 toks, 20)["repeated_half"]}
    rl = [tasks.induction_losses(gb.run_with_hooks(toks, fwd_hooks=zero_heads(hs)), toks, 20)["repeated_half"]
          for hs in random_sets(2, exclude=ind_heads)]
    abl["random2_zeroed_mean"] = float(np.mean(rl))
    abl["random2_zeroed_max"] = float(np.max(rl))
    out["induction_ablation_repeated_half_loss"] = abl

    # --- IOI head patching (hook_z, clean -> corrupted, "swap" corruption) -----------------
    b = tasks.ioi_batch(gb, n=64, seed=seed + 2)
    clean_lg, cache = gb.run_with_cache(b.clean_tokens, names_filter=lambda n: n.endswith("hook_z"))
    corr_lg = gb(b.corrupted_tokens)
    ld_clean = float(b.logit_diff(clean_lg).mean())
    ld_corr = float(b.logit_diff(corr_lg).mean())
    patch = np.zeros((L, H))
    for l in range(L):
        src = np.asarray(cache["z", l])
        for h in range(H):
            def fn(z, hook, h=h, src=src):
                z[:, :, h, :] = src[:, :, h, :]
            lg = gb.run_with_hooks(b.corrupted_tokens, fwd_hooks=[(get_act_name("z", l), fn)])
            patch[l, h] = (float(b.logit_diff(lg).mean()) - ld_corr) / (ld_clean - ld_corr)
    out["ioi_head_patching"] = {"clean_logit_diff": ld_clean, "corrupted_logit_diff": ld_corr,
                                "restored_fraction": patch.round(4).tolist()}
    order = sorted(all_heads, key=lambda x: -patch[x])
    top = order[:2]
    ha = tasks.ioi_batch(gb, n=256, seed=seed + 3)
    acc_clean = ha.accuracy(gb(ha.clean_tokens))
    acc_top = ha.accuracy(gb.run_with_hooks(ha.clean_tokens, fwd_hooks=zero_heads(top)))
    accs = [ha.accuracy(gb.run_with_hooks(ha.clean_tokens, fwd_hooks=zero_heads(hs)))
            for hs in random_sets(2, exclude=top)]
    out["ioi_ablation_accuracy"] = {"heads": top, "clean": acc_clean, "top2_zeroed": acc_top,
                                    "random2_zeroed_mean": float(np.mean(accs)),
                                    "random2_zeroed_min": float(np.min(accs))}
    return out


# --------------------------------------------------------------------------------------------
# model card
# --------------------------------------------------------------------------------------------
def resume_lines(r: Dict[str, Any]) -> List[str]:
    return [
        f"Then a second phase (`--resume`: the saved weights, a fresh optimizer): "
        f"{r['steps']} steps, lr {r['lr']:g} ({'constant after the warm-up' if r.get('schedule') == 'constant' else 'warm-up, cosine'}), batches of {r['batch_ioi']} IOI + "
        f"{r['batch_induction']} induction rows with segments of {RESUME_LEN[0]}..{RESUME_LEN[1]} distinct "
        f"tokens repeated 2 to {RESUME_COPIES} times: {r['seconds'] / 60:.1f} min. Final training losses: "
        f"IOI {r['final_ioi_loss']:.3f}, induction {r['final_induction_loss']:.3f} nats/token"
        + (f" (half of the induction batches small-alphabet, {r['alphabet']} symbols)." if r.get("alphabet") else "."),
        "",
    ]


def write_card(folder: Path, kind: str, name: str, train_info: Dict[str, Any], m: Dict[str, Any],
               args: argparse.Namespace) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    size = (folder / "model.safetensors").stat().st_size
    if kind == "gpt2":
        arch = (f"`GPT2LMHeadModel`: {cfg['n_layer']} layers, d_model {cfg['n_embd']}, "
                f"{cfg['n_head']} heads (d_head {cfg['n_embd'] // cfg['n_head']}), d_mlp {cfg['n_inner']}, "
                f"LayerNorm, learned absolute positions (n_ctx {cfg['n_positions']}), GELU (`gelu_new`), "
                + ("tied embedding / unembedding" if cfg.get("tie_word_embeddings", True) else
                   "untied unembedding (`lm_head.weight`; GPT-2 itself ties it to `wte`)"))
    else:
        arch = (f"`LlamaForCausalLM`: {cfg['num_hidden_layers']} layers, d_model {cfg['hidden_size']}, "
                f"{cfg['num_attention_heads']} query heads / {cfg['num_key_value_heads']} key-value heads "
                f"(grouped-query attention, d_head {cfg['hidden_size'] // cfg['num_attention_heads']}), "
                f"SwiGLU MLP (d_mlp {cfg['intermediate_size']}), RMSNorm, rotary positions "
                f"(theta 10000, n_ctx {cfg['max_position_embeddings']}), untied unembedding")
    ioi = m["ioi"]
    held = ioi["names=heldout,templates=heldout"]
    ind = m["induction"]
    s = np.asarray(ind[20]["scores"])
    until = train_info.get("alphabet_until", 1.0)
    alpha_when = "" if until >= 1.0 else f"first {until:.0%} of the "
    lines = [
        f"# {name}",
        "",
        "A tiny model with known mechanisms, shipped inside glassbox for offline demos, notebooks and",
        "tests. Load it by name, no network:",
        "",
        "```python",
        "from glassbox import HookedTransformer",
        "from glassbox.models import tasks",
        f'model = HookedTransformer.from_pretrained("{name}")',
        "batch = tasks.ioi_batch(model, n=64)          # held-out names and templates",
        "print(batch.accuracy(model(batch.clean_tokens)))",
        "```",
        "",
        "It is a standard Hugging Face folder (transformers loads it with `AutoModelForCausalLM`).",
        "",
        "## Architecture",
        "",
        f"{arch}; vocabulary {cfg['vocab_size']} tokens; {train_info['parameters']:,} parameters, "
        f"{size / 1e6:.2f} MB as float32 safetensors.",
        "",
        "Tokenizer: word level, in GPT-2's byte-level form (`tokenizer.json`, `tokenizers` library):",
        "every task word is one token with a leading space (`\" Mary\"`), capitalised words also",
        "without one (`\"When\"` after BOS), plus `,` `.`, `<|endoftext|>` (id 0: BOS, EOS and PAD)",
        "and `<|unk|>` (id 1) for anything else. `to_tokens` prepends the BOS (TransformerLens's",
        "`prepend_bos=True`); the model was trained with it.",
        "",
        "## Training",
        "",
        "Synthetic data from `glassbox/models/tasks.py`, two tasks:",
        "",
        f"* **IOI**: `BOS` + a prompt such as \"When Mary and John went to the store, John gave a drink",
        f"  to\" + the answer \" Mary\"; {len(tasks.NAMES)} names, {len(tasks.PLACES)} places, "
        f"{len(tasks.OBJECTS)} objects, {len(tasks.VERBS)} verbs, ABBA and BABA orders;",
        f"  only the {len(tasks.name_pairs('train'))} training name pairs (of {len(tasks.name_pairs('all'))}) "
        f"and the {len(tasks.TRAIN_TEMPLATES)} training templates (of {len(tasks.IOI_TEMPLATES)}).",
        *([f"* **Induction**: `BOS` + a segment of L random tokens (uniform over the {len(tasks.RANDOM_WORDS)} "
           f"`tasks.RANDOM_WORDS`) repeated 2 to {IND_MAX_COPIES} times (at most {IND_MAX_TOKENS} tokens in all).",
           f"  Curriculum: L uniform in {IND_MIN_LEN}..{IND_SHORT_LEN} for the first {IND_SHORT_PHASE:.0%} of the "
           f"steps, then the upper end grows linearly to {IND_MAX_LEN} (reached at {IND_RAMP_END:.0%})."]
          if train_info.get("induction_data", "curriculum") == "curriculum" else
          [f"* **Induction**: `BOS` + a segment of L distinct random tokens (L uniform in {RESUME_LEN[0]}..{RESUME_LEN[1]}, "
           f"drawn from the {len(tasks.RANDOM_WORDS)} `tasks.RANDOM_WORDS`) repeated 2 to {RESUME_COPIES} times."]),
        *([f"  In half of the {alpha_when}steps the induction rows are instead `BOS` + x + x, x of {ALPHABET_LEN[0]}..{ALPHABET_LEN[1]} "
           f"tokens drawn with replacement from {train_info['alphabet']} symbols (chosen per row from the same pool):",
           "  every symbol recurs within x, so only an induction lookup (what followed the current",
           "  token before) predicts the second copy (`--alphabet`)."] if train_info.get("alphabet") else []),
        f"  The IOI answer token has loss weight {ANSWER_WEIGHT:g}, every other target 1.",
        "",
        f"Next-token cross-entropy on every position, {train_info['steps']} steps of AdamW "
        f"(lr {train_info.get('lr', args.lr):g}, warm-up then "
        + ("constant" if train_info.get("schedule") == "constant" else "cosine decay to 10%")
        + f", weight decay {train_info.get('weight_decay', 0.05):g} on matrices"
        + (" other than the position embeddings" if kind == "gpt2" and "weight_decay" in train_info else "")
        + ", gradient clip 1),",
        f"batches of {train_info.get('batch_ioi', args.batch_ioi)} IOI + {train_info.get('batch_induction', args.batch_induction)} induction rows"
        + (" (induction only: the circuit forms first, IOI comes in the second phase)" if not train_info.get('batch_ioi', args.batch_ioi) else "")
        + ", one CPU thread, seed "
        f"{MODELS[kind]['seed']}: {train_info['seconds'] / 60:.1f} min. Final training losses: IOI "
        f"{train_info['final_ioi_loss']:.3f}, induction {train_info['final_induction_loss']:.3f} nats/token.",
        "",
        *(resume_lines(train_info["resume"]) if "resume" in train_info else []),
        "Command (from the repository root, after `python setup.py build_ext --inplace`):",
        "",
        "```bash",
        f"OMP_NUM_THREADS=1 python scripts/train_embedded_models.py --only {kind} --steps {train_info['steps']} "
        f"--lr {train_info['lr']:g} --batch-ioi {train_info['batch_ioi']} --batch-induction {train_info['batch_induction']}"
        + (" --induction-data distinct" if train_info.get("induction_data") == "distinct" else "")
        + (f" --alphabet {train_info['alphabet']}" if train_info.get("alphabet") else "")
        + (f" --alphabet-until {train_info['alphabet_until']:g}" if train_info.get("alphabet_until", 1.0) < 1.0 else "")
        + (" --schedule constant" if train_info.get("schedule") == "constant" else "")
        + (f" --weight-decay {train_info['weight_decay']:g}" if train_info.get("weight_decay", 0.05) != 0.05 else "")
        + (f" --heads {train_info['n_heads']}" if kind == "gpt2" and train_info.get("n_heads", N_HEADS) != N_HEADS else "")
        + (" --untied" if kind == "gpt2" and not cfg.get("tie_word_embeddings", True) else ""),
        *([f"OMP_NUM_THREADS=1 python scripts/train_embedded_models.py --only {kind} --resume "
           f"--steps {r['steps']} --lr {r['lr']:g} --batch-ioi {r['batch_ioi']} --batch-induction {r['batch_induction']}"
           + (f" --alphabet {r['alphabet']}" if r.get("alphabet") else "")
           + (" --schedule constant" if r.get("schedule") == "constant" else "")
           for r in ([train_info["resume"]] if "resume" in train_info else [])]),
        "```",
        "",
        "## Measured with glassbox",
        "",
        "All numbers below come from `scripts/train_embedded_models.py` (its `measure()`), run with",
        "glassbox on this folder, seed 0; `tests/test_embedded_models.py` checks them with some margin.",
        "",
        "**IOI** (256 prompts per row, `tasks.ioi_batch`; accuracy = top-1 over the whole vocabulary",
        "is the indirect object; logit difference = logit(IO) - logit(S) at the final \" to\"):",
        "",
        "| name pairs | templates | accuracy | mean logit diff | min logit diff |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, v in ioi.items():
        n, t = key.replace("names=", "").replace("templates=", "").split(",")
        lines.append(f"| {n} | {t} | {v['accuracy']:.3f} | {v['logit_diff_mean']:.2f} | {v['logit_diff_min']:.2f} |")
    abl = m["induction_ablation_repeated_half_loss"]
    ia = m["ioi_ablation_accuracy"]
    hp = m["ioi_head_patching"]
    pr = np.asarray(hp["restored_fraction"])
    lines += [
        "",
        f"Held out (name pairs never seen together, templates never seen): accuracy {held['accuracy']:.3f}, "
        f"mean logit difference {held['logit_diff_mean']:.2f}.",
        "",
        "**Induction** (32 rows of `tasks.induction_tokens`; mean loss in nats on r_2..r_L of each copy):",
        "",
        "| seq_len | first-half loss | repeated-half loss |",
        "| --- | --- | --- |",
    ]
    for L_, v in ind.items():
        lines.append(f"| {L_} | {v['first_half']:.3f} | {v['repeated_half']:.3f} |")
    top = m["induction_top_heads"]
    lines += [
        "",
        "**Mechanisms.**",
        "",
        f"* Induction scores (seq_len 20; mean attention from i to i - seq_len + 1 over the second copy):",
        f"  top heads " + ", ".join(f"L{l}H{h} {sc:.3f}" for l, h, sc in top) +
        f"; median over the {s.size} heads {m['induction_median_score']:.3f}.",
        "  Per layer (rows) and head (columns):",
        "",
        "  ```",
        *("  " + " ".join(f"{x:6.3f}" for x in row) for row in s),
        "  ```",
        f"* Zero-ablating the top two induction heads ({', '.join(f'L{l}H{h}' for l, h in abl['heads'])}) "
        f"via `hook_z` raises the repeated-half loss (seq_len 20) from {abl['clean']:.3f} to "
        f"{abl['top2_zeroed']:.3f}; two random other heads: {abl['random2_zeroed_mean']:.3f} on average "
        f"(worst of 10 draws {abl['random2_zeroed_max']:.3f}).",
        f"* IOI head patching (`hook_z` of one head from the clean run into the \"swap\"-corrupted run, 64",
        f"  held-out prompts; fraction of the logit difference restored; clean {hp['clean_logit_diff']:.2f},",
        f"  corrupted {hp['corrupted_logit_diff']:.2f}):",
        "",
        "  ```",
        *("  " + " ".join(f"{x:6.3f}" for x in row) for row in pr),
        "  ```",
        f"* Zero-ablating the two heads that patching ranks first ({', '.join(f'L{l}H{h}' for l, h in ia['heads'])}) "
        f"drops held-out IOI accuracy from {ia['clean']:.3f} to {ia['top2_zeroed']:.3f}; two random other "
        f"heads: {ia['random2_zeroed_mean']:.3f} on average (worst of 10 draws {ia['random2_zeroed_min']:.3f}).",
        "",
        f"glassbox (`from_pretrained_no_processing`) vs transformers on 256 held-out prompts: max |logit "
        f"difference| {m['max_abs_logit_diff_glassbox_vs_hf']:.2e}; HF's held-out accuracy {m['hf_heldout_accuracy']:.3f}, "
        f"glassbox's with weight processing (`from_pretrained`) {m['processed_heldout_accuracy']:.3f}.",
        "",
        "## Limits",
        "",
        *([f"**No clean induction head.** The top induction score is {top[0][2]:.2f} (below 0.5) and the "
           f"repeated half is only partly predicted: within this training budget the model learned the IOI task "
           f"but not a sharp induction circuit (the Llama model did). Use `glassbox/tiny-llama-ioi` for "
           f"induction-head demos; retraining with more steps is a follow-up.", ""]
          if top[0][2] < 0.5 else []),
        "Only the task vocabulary is known (other words become `<|unk|>`); the model has never seen",
        f"natural text. Positions beyond {IND_MAX_TOKENS} tokens were never trained"
        + (" (GPT-2's learned position embeddings there are at their random init)." if kind == "gpt2"
           else " (rotary positions may extrapolate; untested)."),
        "",
    ]
    (folder / "README.md").write_text("\n".join(lines))


def build_parser() -> argparse.ArgumentParser:
    """The command line (the model cards' commands use it; tests parse them with it)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "glassbox" / "models"), help="parent folder of the model folders")
    ap.add_argument("--only", choices=sorted(MODELS), action="append", help="train only this model")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--batch-ioi", type=int, default=32)
    ap.add_argument("--batch-induction", type=int, default=32)
    ap.add_argument("--measure-only", action="store_true", help="re-measure saved folders, no training")
    ap.add_argument("--induction-data", choices=("curriculum", "distinct"), default="curriculum",
                    help="from scratch: the length curriculum, or the --resume phase's segments of distinct tokens")
    ap.add_argument("--alphabet", type=int, default=0,
                    help="mix small-alphabet induction rows from this many symbols into half the batches (0: none)")
    ap.add_argument("--alphabet-until", type=float, default=1.0,
                    help="fraction of the steps with the --alphabet rows (then distinct segments only)")
    ap.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay on the matrices")
    ap.add_argument("--heads", type=int, default=0, help=f"gpt2: attention heads per layer (default {N_HEADS})")
    ap.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    ap.add_argument("--untied", action="store_true",
                    help="gpt2: a separate lm_head instead of GPT-2's tied unembedding (experiments)")
    ap.add_argument("--resume", action="store_true",
                    help="continue training the saved folders (fresh optimizer, the RESUME_* induction curriculum)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    tok = build_tokenizer()
    print(f"tokenizer: {tok.get_vocab_size()} tokens")
    for kind in args.only or sorted(MODELS):
        folder = Path(args.out) / MODELS[kind]["folder"]
        name = "glassbox/" + MODELS[kind]["folder"]
        info_path = folder / "training.json"
        if args.measure_only:
            info = json.loads(info_path.read_text())
        else:
            model, info = train(kind, tok, args.steps, args.lr, args.batch_ioi, args.batch_induction,
                                resume=folder if args.resume else None,
                                distinct=args.induction_data == "distinct",
                                alphabet=args.alphabet, schedule=args.schedule, untied=args.untied,
                                n_heads=args.heads if kind == "gpt2" else 0,
                                alphabet_until=args.alphabet_until, weight_decay=args.weight_decay)
            if args.resume:
                before = json.loads(info_path.read_text())
                info = {**before, "resume": info}
            folder.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(str(folder), safe_serialization=True)
            save_tokenizer(tok, folder)
            for extra in ("generation_config.json",):
                if (folder / extra).exists():
                    (folder / extra).unlink()
            info_path.write_text(json.dumps(info, indent=2) + "\n")
        t0 = time.time()
        m = measure(folder)
        print(f"[{kind}] measured in {time.time() - t0:.0f}s")
        print(json.dumps({k: v for k, v in m.items() if k != "induction"}, indent=1, default=str))
        for L_, v in m["induction"].items():
            print(f"[{kind}] induction seq_len {L_}: first half {v['first_half']:.3f}, repeated half {v['repeated_half']:.3f}")
        write_card(folder, kind, name, info, m, args)
        (folder / "metrics.json").write_text(json.dumps(m, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
