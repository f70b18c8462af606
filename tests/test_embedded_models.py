"""The tiny models shipped in glassbox/models/: load by name offline, match HF, do their tasks.

The numbers asserted here are the ones in each model card (glassbox/models/*/README.md, measured
by scripts/train_embedded_models.py) minus a margin, so a loader or engine regression that bends
the logits, or a broken dataset generator, fails here.
"""
from __future__ import annotations

import fnmatch
import importlib.resources
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import glassbox
from glassbox import HookedTransformer
from glassbox.loading import EMBEDDED_MODELS, embedded_model_path, embedded_models, resolve_model_files
from glassbox.models import tasks
from glassbox.utils import get_act_name

ROOT = Path(__file__).resolve().parent.parent
GPT2, LLAMA = "glassbox/tiny-gpt2-ioi", "glassbox/tiny-llama-ioi"
NAMES = [GPT2, LLAMA]
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md")

#: per model: bounds a little inside the measured values of the model cards (in comments)
THRESHOLDS = {
    # measured: acc 1.000, logit diff 13.23, repeated/first half 0.000/4.17 (seq_len 20), top
    # induction scores 0.989 / 0.985 (L1H0, L1H1), median 0.011, best head-patching score 1.01 (L0H0)
    GPT2: dict(heldout_acc=0.95, heldout_ld=10.0, rep_loss=0.1, first_loss=3.8, top_ind=0.8,
               median_ind=0.1, patch_top=0.5),
    # measured: acc 1.000, logit diff 9.36, repeated/first half 0.41/4.34 (seq_len 20),
    # top induction score 0.79 (L2H1), median 0.028, best head-patching score 0.55 (L2H2)
    LLAMA: dict(heldout_acc=0.95, heldout_ld=6.0, rep_loss=0.8, first_loss=3.8, top_ind=0.6,
                median_ind=0.1, patch_top=0.35),
}

_models = {}


def model(name: str, processed: bool = False) -> HookedTransformer:
    key = (name, processed)
    if key not in _models:
        load = HookedTransformer.from_pretrained if processed else HookedTransformer.from_pretrained_no_processing
        _models[key] = load(name)
    return _models[key]


@pytest.fixture(autouse=True)
def _numpy_backend():
    glassbox.set_array_backend("numpy")
    yield
    glassbox.set_array_backend("auto")


# ------------------------------------------------------------------ registry and package data
def test_embedded_names_are_listed():
    assert embedded_models() == sorted(NAMES)
    assert set(EMBEDDED_MODELS) == set(NAMES)
    for name in NAMES:
        folder = Path(embedded_model_path(name))
        assert folder.parent == Path(glassbox.__file__).parent / "models"
        assert embedded_model_path(name.upper()) == str(folder)  # case-insensitive
    with pytest.raises(ValueError, match="tiny-gpt2-ioi"):
        embedded_model_path("glassbox/no-such-model")


def test_unknown_model_error_lists_embedded_models(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(OSError) as info:
        resolve_model_files("some-org/not-a-cached-model")
    assert GPT2 in str(info.value) and LLAMA in str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_package_data_holds_the_files(name):
    folder = EMBEDDED_MODELS[name][0]
    res = importlib.resources.files("glassbox.models") / folder
    for f in FILES:
        assert (res / f).is_file(), f"{name}: {f} missing from the package"
    with importlib.resources.as_file(res / "model.safetensors") as weights:
        assert os.path.getsize(weights) < 1_000_000  # the size budget: well under a MB each
    hf = json.loads((res / "config.json").read_text())
    assert hf["architectures"] == [{"glassbox/tiny-gpt2-ioi": "GPT2LMHeadModel",
                                    "glassbox/tiny-llama-ioi": "LlamaForCausalLM"}[name]]
    # pyproject's package-data globs (what the wheel and `pip install .` copy) cover every file
    import tomllib

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["glassbox.models"]
    for f in FILES:
        assert any(fnmatch.fnmatch(f"{folder}/{f}", g) for g in globs), f"{folder}/{f} not in package-data"


# ------------------------------------------------------------------ loading and tokenizer
@pytest.mark.parametrize("name", NAMES)
def test_loads_by_name_without_network(name, monkeypatch):
    import huggingface_hub

    def no_hub(*a, **k):
        raise AssertionError("the Hub must not be consulted for an embedded model")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    for load in (HookedTransformer.from_pretrained, HookedTransformer.from_pretrained_no_processing):
        m = load(name)
        assert m.cfg.model_name == name.split("/")[1]
        assert m.cfg.n_layers == 3 and m.cfg.d_model == 64 and m.cfg.n_heads == 4
        assert m.cfg.original_architecture == json.loads(
            (Path(embedded_model_path(name)) / "config.json").read_text())["architectures"][0]
    if name == LLAMA:
        assert m.cfg.n_key_value_heads == 2 and m.cfg.positional_embedding_type == "rotary"
        assert m.cfg.normalization_type == "RMS" and m.cfg.gated_mlp
    else:
        assert m.cfg.positional_embedding_type == "standard" and m.cfg.normalization_type == "LN"


@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_gives_single_token_names_and_bos(name):
    m = model(name)
    tok = m.tokenizer
    assert tok.bos_token == "<|endoftext|>" and tok.bos_token_id == 0 and m.cfg.default_prepend_bos
    prompt = "When Mary and John went to the store, John gave a drink to"
    toks = m.to_tokens(prompt)
    assert toks.shape == (1, 15) and toks[0, 0] == 0
    assert m.to_str_tokens(prompt) == ["<|endoftext|>", "When", " Mary", " and", " John", " went", " to",
                                       " the", " store", ",", " John", " gave", " a", " drink", " to"]
    assert m.to_tokens(prompt, prepend_bos=False).shape == (1, 14)
    assert m.to_string(toks[0]) == "<|endoftext|>" + prompt
    for nm in tasks.NAMES:
        assert m.to_str_tokens(m.to_single_token(" " + nm)) == [" " + nm]
        m.to_single_token(nm)  # the sentence-initial form is one token too
    assert m.tokenizer.encode("Mary zyzzyva", add_special_tokens=False)[-1] == tok.convert_tokens_to_ids("<|unk|>")


# ------------------------------------------------------------------ parity with transformers
@pytest.mark.parametrize("name", NAMES)
def test_logits_equal_hf(name):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(embedded_model_path(name)).eval()
    batch = tasks.ioi_batch(name, n=16, seed=3, templates="all", names="all")
    ind = tasks.induction_tokens(name, batch=4, seq_len=30, seed=3)
    for toks, mask in ((batch.clean_tokens, batch.attention_mask.astype(bool)), (ind, np.ones(ind.shape, bool))):
        with torch.no_grad():
            ref = hf(torch.from_numpy(toks)).logits.numpy()
        raw = model(name)(toks)
        # right padding: causal attention leaves the real positions untouched
        assert np.abs(raw - ref)[mask].max() < 1e-4
        proc = model(name, processed=True)(toks)  # TL weight processing: logits up to a constant
        centred = (proc - proc.mean(-1, keepdims=True)) - (ref - ref.mean(-1, keepdims=True))
        assert np.abs(centred)[mask].max() < 1e-3


# ------------------------------------------------------------------ the tasks
@pytest.mark.parametrize("name", NAMES)
def test_heldout_ioi_accuracy_and_logit_diff(name):
    th = THRESHOLDS[name]
    m = model(name, processed=True)
    batch = tasks.ioi_batch(m, n=256, seed=0)  # names pairs and templates never seen in training
    logits = m(batch.clean_tokens)
    assert batch.accuracy(logits) >= th["heldout_acc"]
    assert batch.logit_diff(logits).mean() >= th["heldout_ld"]
    # swapped corruption: the corrupted prompt's answer is the clean S
    corr = m(batch.corrupted_tokens)
    assert batch.accuracy(corr, batch.corrupted_answer_tokens) >= th["heldout_acc"]
    assert batch.logit_diff(corr).mean() <= -th["heldout_ld"]


@pytest.mark.parametrize("name", NAMES)
def test_induction_loss_and_heads(name):
    th = THRESHOLDS[name]
    m = model(name, processed=True)
    toks = tasks.induction_tokens(m, batch=16, seq_len=20, seed=0)
    logits, cache = m.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_pattern"))
    losses = tasks.induction_losses(logits, toks, 20)
    scores = tasks.induction_scores(cache, 20)
    assert scores.shape == (3, 4) and np.median(scores) < th["median_ind"]
    assert losses["first_half"] >= th["first_loss"]
    assert losses["repeated_half"] <= th["rep_loss"] and scores.max() >= th["top_ind"]
    # causal: zeroing the two top induction heads hurts far more than zeroing two other heads
    top = np.dstack(np.unravel_index(np.argsort(-scores, axis=None)[:2], scores.shape))[0]
    others = [(l, h) for l in range(3) for h in range(4) if not any((l, h) == tuple(t) for t in top)]

    def zero(heads):
        hooks = []
        for l, h in heads:
            def fn(z, hook, h=int(h)):
                z[:, :, h, :] = 0.0
            hooks.append((get_act_name("z", int(l)), fn))
        return hooks

    rep = lambda hooks: tasks.induction_losses(m.run_with_hooks(toks, fwd_hooks=hooks), toks, 20)["repeated_half"]
    top_loss = rep(zero(top))
    rng = np.random.default_rng(0)
    other_losses = [rep(zero([others[i] for i in rng.choice(len(others), 2, replace=False)])) for _ in range(4)]
    assert top_loss - losses["repeated_half"] > 3 * (max(other_losses) - losses["repeated_half"])


@pytest.mark.parametrize("name", NAMES)
def test_ioi_head_patching_localises(name):
    th = THRESHOLDS[name]
    m = model(name, processed=True)
    batch = tasks.ioi_batch(m, n=32, seed=5)
    clean_logits, cache = m.run_with_cache(batch.clean_tokens, names_filter=lambda n: n.endswith("hook_z"))
    ld_clean = batch.logit_diff(clean_logits).mean()
    ld_corr = batch.logit_diff(m(batch.corrupted_tokens)).mean()
    restored = np.zeros((3, 4))
    for l in range(3):
        src = cache["z", l]
        for h in range(4):
            def fn(z, hook, h=h):
                z[:, :, h, :] = src[:, :, h, :]
            lg = m.run_with_hooks(batch.corrupted_tokens, fwd_hooks=[(get_act_name("z", l), fn)])
            restored[l, h] = (batch.logit_diff(lg).mean() - ld_corr) / (ld_clean - ld_corr)
    ordered = np.sort(restored, axis=None)[::-1]
    assert ordered[0] >= th["patch_top"]
    assert ordered[0] > 3 * abs(np.median(restored))  # a few heads carry it, not all


# ------------------------------------------------------------------ dataset generators
def test_ioi_generators_are_deterministic_and_respect_the_splits():
    a = tasks.ioi_batch(GPT2, n=40, seed=11)
    b = tasks.ioi_batch(GPT2, n=40, seed=11)
    c = tasks.ioi_batch(GPT2, n=40, seed=12)
    assert np.array_equal(a.clean_tokens, b.clean_tokens) and not np.array_equal(a.clean_tokens, c.clean_tokens)
    train_pairs = set(tasks.name_pairs("train"))
    held_pairs = set(tasks.name_pairs("heldout"))
    assert not train_pairs & held_pairs and len(train_pairs | held_pairs) == 32 * 31 // 2
    for p, q in zip(a.prompts, a.corrupted_prompts):
        pair = tuple(sorted((p.a, p.b), key=tasks.NAMES.index))
        assert pair in held_pairs and p.template in tasks.HELDOUT_TEMPLATES
        assert {p.io, p.s} == {p.a, p.b} and p.text.count(p.s) == 2 and p.text.count(p.io) == 1
        assert (p.io == p.a) == (p.order == "ABBA")
        assert q.io == p.s and q.s == p.io and q.text.count(p.io) == 2  # "swap" corruption
    assert {p.order for p in a.prompts} == {"ABBA", "BABA"}
    tok = tasks.get_tokenizer(GPT2)
    for i, p in enumerate(a.prompts):
        row = a.clean_tokens[i, : a.end_positions[i] + 1]
        assert tok.decode(row) == "<|endoftext|>" + p.text
        assert a.clean_tokens[i, a.positions["IO"][i]] in (a.io_tokens[i], tok.convert_tokens_to_ids(p.io))
        assert a.clean_tokens[i, a.positions["S2"][i]] == a.s_tokens[i]
        assert a.positions["S1"][i] < a.positions["S2"][i] < a.end_positions[i]
    abc = tasks.ioi_batch(GPT2, n=8, corruption="abc", seed=11)
    for p, q in zip(abc.prompts, abc.corrupted_prompts):
        words = q.text.replace(",", " ").replace(".", " ").split()
        used = [w for w in words if w in tasks.NAMES]
        assert len(used) == 3 and len(set(used)) == 3 and not set(used) & {p.a, p.b}
    train = tasks.ioi_prompts(50, names="train", templates="train", seed=1)
    assert all(tuple(sorted((p.a, p.b), key=tasks.NAMES.index)) in train_pairs for p in train)
    assert all(p.template in tasks.TRAIN_TEMPLATES for p in train)


def test_induction_tokens_shape_and_determinism():
    t = tasks.induction_tokens(LLAMA, batch=3, seq_len=7, seed=2)
    assert t.shape == (3, 15) and t.dtype == np.int64 and (t[:, 0] == 0).all()
    assert np.array_equal(t[:, 1:8], t[:, 8:])
    assert np.array_equal(t, tasks.induction_tokens(LLAMA, batch=3, seq_len=7, seed=2))
    assert (t[:, 1:] > 1).all()  # no special tokens
    assert all(len(set(row[1:8])) == 7 for row in t)  # distinct within a copy (7 <= 64 pool words)
    words = {tasks.get_tokenizer(LLAMA).convert_tokens_to_ids("\u0120" + w) for w in tasks.RANDOM_WORDS}
    assert set(t[:, 1:].ravel()) <= words
    w = tasks.induction_tokens(LLAMA, batch=2, seq_len=5, pool="random_words", prepend_bos=False)
    assert w.shape == (2, 10)


def test_generators_reject_bad_arguments():
    with pytest.raises(ValueError, match="names"):
        tasks.ioi_prompts(4, names="valid")
    with pytest.raises(ValueError, match="templates"):
        tasks.ioi_prompts(4, templates=[99])
    with pytest.raises(ValueError, match="n="):
        tasks.ioi_prompts(0)
    with pytest.raises(ValueError, match="kind"):
        tasks.corrupt_prompts(tasks.ioi_prompts(2), kind="nope")
    with pytest.raises(ValueError, match="seq_len"):
        tasks.induction_tokens(GPT2, seq_len=0)
    with pytest.raises(ValueError, match="pool"):
        tasks.induction_tokens(GPT2, pool="names")
    batch = tasks.ioi_batch(GPT2, n=4)
    with pytest.raises(ValueError, match="logits"):
        batch.logit_diff(np.zeros((4, 3, 5)))


@pytest.mark.parametrize("name", NAMES)
def test_task_metrics_match_an_independent_computation(name):
    """induction_losses / induction_scores / IOIBatch metrics on glassbox's run equal the same
    quantities computed directly (torch cross-entropy, HF eager attention weights)."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(embedded_model_path(name), attn_implementation="eager").eval()
    m = model(name)
    seq_len = 12
    toks = tasks.induction_tokens(m, batch=4, seq_len=seq_len, seed=9)
    logits, cache = m.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_pattern"))
    with torch.no_grad():
        out = hf(torch.from_numpy(toks), output_attentions=True)
    nll = torch.nn.functional.cross_entropy(out.logits[:, :-1].transpose(1, 2), torch.from_numpy(toks[:, 1:]),
                                            reduction="none").numpy()  # [B, P-1]; nll[:, t-1] predicts t
    got = tasks.induction_losses(logits, toks, seq_len)
    assert abs(got["first_half"] - nll[:, 1:seq_len].mean()) < 1e-4  # targets 2..L
    assert abs(got["repeated_half"] - nll[:, seq_len + 1:2 * seq_len].mean()) < 1e-4  # targets L+2..2L
    scores = tasks.induction_scores(cache, seq_len)
    for l, att in enumerate(out.attentions):
        a = att.numpy()
        want = np.mean([a[:, :, i, i - seq_len + 1] for i in range(1 + seq_len, 1 + 2 * seq_len)], axis=(0, 1))  # [H]
        assert np.abs(scores[l] - want).max() < 1e-5
    batch = tasks.ioi_batch(m, n=12, seed=4, names="all", templates="all")
    lg = m(batch.clean_tokens)
    rows = np.arange(12)
    end = lg[rows, batch.end_positions]
    np.testing.assert_allclose(batch.logit_diff(lg), end[rows, batch.io_tokens] - end[rows, batch.s_tokens], atol=1e-5)
    assert batch.accuracy(lg) == np.mean(end.argmax(-1) == batch.io_tokens)
