"""Proof on the embedded models: the library's techniques find the mechanisms the models are
known to have, and the causal checks confirm them (issue 7, "proof on the embedded models").

* (a) **induction heads** stand out in the induction scores (``tasks.induction_scores``) *and* in
  the data the attention view embeds (``glassbox.visualization.attention_view``, decoded back
  from its quantised payload): the top head is one of the model's known induction heads, each of
  them >= 0.5 while the median head is < 0.1; its previous-token heads sit in an earlier layer;
* (b) **activation patching** over heads (``patching.get_act_patch_attn_head_out_all_pos``, clean
  -> "swap"-corrupted IOI prompts) localises the heads that carry the IOI answer: the head it
  ranks first is the one whose single-head mean ablation costs the most logit difference, the
  top-3 of both rankings share >= 2 heads, the heads with an effect are the same in both (>= 0.1
  of the logit difference restored <=> >= 1 nat lost), and mean-ablating the top-3 together
  costs >= 40% of the logit difference and more (by > 1 nat, and in the fraction of prompts
  with the IO name above S) than any of 8 random triples of the other heads;
* (c) **causal scrubbing** (``glassbox.causal_scrubbing``) of the induction circuit (previous-token
  heads -> induction heads by K-composition, on the repeated half, and the later layers reading
  them) recovers >= 0.8 of the loss with the true key heads (the previous-token heads; on
  tiny-gpt2-ioi also the diffuse L0H3) and <= 0.5 with the other earlier heads, on every seed;
* (d) the **logit lens** ranks the IOI answer at 0 only in the last layers.

All four run on both embedded models (``glassbox/tiny-gpt2-ioi``: two induction heads in layer 1,
L1H0 and L1H1, whose keys read the previous-token head L0H1 and the diffuse L0H3;
``glassbox/tiny-llama-ioi``: L2H1, fed by L1H1-L1H3; their model cards).

(e) the same techniques on SmolLM2-135M (real weights, GGUF), for what tests/test_demo.py does not
already check there (it checks the induction scores, their ablation and the logit lens): the
attention-view data of the induction prompt, and head patching on IOI prompts confirmed by
ablation.

The numbers measured (``pytest -s`` prints them) are in docs/embedded-models.md.
"""
from __future__ import annotations

import numpy as np
import pytest

import glassbox
import glassbox.causal_scrubbing as cs
from glassbox import HookedTransformer, patching
from glassbox.lens import logit_lens
from glassbox.models import tasks
from glassbox.utils import get_act_name
from glassbox.visualization import attention_view
from glassbox.visualization.attention_data import decode

GPT2, LLAMA = "glassbox/tiny-gpt2-ioi", "glassbox/tiny-llama-ioi"
NAMES = [GPT2, LLAMA]
SEQ_LEN = 20

#: what each model is known (from its model card, measured by scripts/train_embedded_models.py)
#: to contain: its induction heads (one layer), their previous-token heads (the K-composition
#: circuit), and the head head patching ranks first on IOI. The tests *find* these from the data
#: and compare. (tiny-gpt2-ioi's two induction heads score 0.985-0.989 each: which is first
#: depends on the sequences, so the tests accept either.)
#: prev_heads: the clean previous-token heads (score >= 0.2); key_heads: the heads the induction
#: heads' keys read in the circuit (causal scrubbing keeps them): in tiny-gpt2-ioi also L0H3, a
#: diffuse head (0.10 to i - 1, 0.30 to BOS) without which the keys recover only 0.70 of the loss.
KNOWN = {
    GPT2: dict(induction_heads=[(1, 0), (1, 1)], prev_heads=[(0, 1)], key_heads=[(0, 1), (0, 3)],
               ioi_top1=(0, 0)),
    LLAMA: dict(induction_heads=[(2, 1)], prev_heads=[(1, 1), (1, 2), (1, 3)],
                key_heads=[(1, 1), (1, 2), (1, 3)], ioi_top1=(2, 2)),
}

_models: dict = {}


def model(name: str) -> HookedTransformer:
    if name not in _models:
        _models[name] = HookedTransformer.from_pretrained(name)
    return _models[name]


@pytest.fixture(autouse=True)
def _numpy_backend():
    glassbox.set_array_backend("numpy")
    yield
    glassbox.set_array_backend("auto")


def _heads(m) -> list:
    return [(l, h) for l in range(m.cfg.n_layers) for h in range(m.cfg.n_heads)]


def _prev_token_scores(cache, n_layers: int, n_pos: int) -> np.ndarray:
    """Mean attention from position i to i - 1 (i >= 2: not to BOS), [layer, head]."""
    q = np.arange(2, n_pos)
    return np.stack([np.asarray(cache[f"blocks.{l}.attn.hook_pattern"])[:, :, q, q - 1].mean((0, 2))
                     for l in range(n_layers)])


def _induction_run(m, batch: int = 32, seed: int = 0):
    toks = tasks.induction_tokens(m, batch=batch, seq_len=SEQ_LEN, seed=seed)
    _, cache = m.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_pattern"))
    return toks, cache


# ------------------------------------------------------------------ (a) induction heads
@pytest.mark.parametrize("name", NAMES)
def test_induction_heads_stand_out_in_scores_and_attention_view(name):
    m = model(name)
    known = KNOWN[name]["induction_heads"]
    toks, cache = _induction_run(m)
    scores = tasks.induction_scores(cache, SEQ_LEN)
    top = np.unravel_index(np.argmax(scores), scores.shape)
    assert tuple(map(int, top)) in known, scores.round(3)
    assert min(scores[h] for h in known) >= 0.5 and np.median(scores) < 0.1, scores.round(3)
    # no head outside the known set comes close
    assert max(scores[h] for h in _heads(m) if h not in known) < 0.3, scores.round(3)
    # the same from the data the attention view embeds in its HTML (quantised to 3 digits), one
    # view per sequence; the view's own numbers, not the cache's, are decoded and scored
    view_scores = []
    for b in range(4):
        view = attention_view(cache, toks, batch=b)
        data = decode(view._enc, view.patterns.shape)
        assert np.abs(data - np.asarray([cache[f"blocks.{l}.attn.hook_pattern"][b]
                                         for l in range(m.cfg.n_layers)])).max() <= 5e-4 + 1e-6
        view_scores.append(tasks.induction_scores({f"blocks.{l}.attn.hook_pattern": data[l][None]
                                                   for l in range(m.cfg.n_layers)}, SEQ_LEN))
        assert view.tokens[1 + SEQ_LEN:] == view.tokens[1:1 + SEQ_LEN]  # labels: the repeat is visible
    view_scores = np.mean(view_scores, 0)
    assert tuple(map(int, np.unravel_index(np.argmax(view_scores), view_scores.shape))) in known
    assert min(view_scores[h] for h in known) >= 0.5 and np.median(view_scores) < 0.1, view_scores.round(3)
    # the previous-token heads that feed it sit in an earlier layer (checked causally in (c))
    prev = _prev_token_scores(cache, m.cfg.n_layers, toks.shape[1])
    found = sorted((l, h) for l, h in _heads(m) if l < top[0] and prev[l, h] >= 0.2)
    assert found == KNOWN[name]["prev_heads"], prev.round(3)
    print(f"\n{name} induction scores (cache):\n{scores.round(3)}\n(attention-view data, 4 sequences):\n"
          f"{view_scores.round(3)}\nprevious-token scores:\n{prev.round(3)}")


# ------------------------------------------------------------------ (b) patching vs ablation
def _mean_ablation(m, batch):
    """Accuracy and mean logit difference of ``batch`` with some heads' ``hook_z`` replaced by
    their mean over the batch (per position, padding excluded)."""
    _, cache = m.run_with_cache(batch.clean_tokens, names_filter=lambda n: n.endswith("hook_z"))
    mask = batch.attention_mask.astype(bool)[:, :, None, None]
    means = {l: (np.asarray(cache["z", l]) * mask).sum(0) / np.maximum(mask.sum(0), 1)
             for l in range(m.cfg.n_layers)}

    def run(heads):
        hooks = []
        for l in sorted({l for l, _ in heads}):
            hs = [h for ll, h in heads if ll == l]

            def fn(z, hook, l=l, hs=hs):
                z[:, :, hs] = means[l][None, :, hs]
            hooks.append((get_act_name("z", l), fn))
        lg = m.run_with_hooks(batch.clean_tokens, fwd_hooks=hooks)
        ld = batch.logit_diff(lg)
        return batch.accuracy(lg), float(ld.mean()), float((ld > 0).mean())
    return run


def _ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x.ravel(), kind="stable"), kind="stable").astype(float)


@pytest.mark.parametrize("name", NAMES)
def test_head_patching_localises_the_heads_ablation_needs(name):
    m = model(name)
    b = tasks.ioi_batch(m, n=64, seed=5)  # held-out names and templates
    clean_logits, cache = m.run_with_cache(b.clean_tokens)
    ld_clean, ld_corr = float(b.logit_diff(clean_logits).mean()), float(b.logit_diff(m(b.corrupted_tokens)).mean())
    assert ld_clean > 5 and ld_corr < -5

    def restored(logits):
        return (float(b.logit_diff(np.asarray(logits)).mean()) - ld_corr) / (ld_clean - ld_corr)

    patch = np.asarray(patching.get_act_patch_attn_head_out_all_pos(m, b.corrupted_tokens, cache, restored))
    assert patch.shape == (m.cfg.n_layers, m.cfg.n_heads)
    heads = _heads(m)
    by_patch = sorted(heads, key=lambda x: -patch[x])

    # ablation on other prompts (same distribution, another seed): which heads does the task need?
    ha = tasks.ioi_batch(m, n=128, seed=6)
    run = _mean_ablation(m, ha)
    acc0, ld0, _ = run([])
    assert acc0 >= 0.95
    drop = np.zeros_like(patch)
    for l, h in heads:
        drop[l, h] = ld0 - run([(l, h)])[1]
    by_drop = sorted(heads, key=lambda x: -drop[x])
    rho = np.corrcoef(_ranks(patch), _ranks(drop))[0, 1]
    print(f"\n{name} head patching (fraction of logit diff restored; clean {ld_clean:.2f}, corrupted "
          f"{ld_corr:.2f}):\n{patch.round(3)}\nmean-ablation logit-diff drop (clean {ld0:.2f}):\n{drop.round(2)}\n"
          f"Spearman {rho:.3f}")
    # the head patching ranks first is the one ablation hurts most, the top-3 share >= 2 heads,
    # and the heads with an effect are the same: restoring >= 0.1 of the logit difference when
    # patched <=> costing >= 1 nat when ablated. (Not a rank correlation over all heads: among
    # the heads with no effect the order is noise; tiny-gpt2-ioi has 10 of 12 within 0.005 of
    # zero restored, and its Spearman is 0.55 where tiny-llama-ioi's is 0.89.)
    assert by_patch[0] == KNOWN[name]["ioi_top1"] == by_drop[0], (patch.round(3), drop.round(2))
    assert len(set(by_drop[:3]) & set(by_patch[:3])) >= 2, (patch.round(3), drop.round(2))
    with_effect = sorted(x for x in heads if patch[x] >= 0.1)
    assert with_effect and with_effect == sorted(x for x in heads if drop[x] >= 1.0), (patch.round(3), drop.round(2))
    # the top-3 together cost far more than any 3 of the other heads
    acc_top, ld_top, win_top = run(by_patch[:3])
    rest = by_patch[3:]
    rng = np.random.default_rng(0)
    controls = [run([rest[i] for i in rng.choice(len(rest), 3, replace=False)]) for _ in range(8)]
    ctl_acc, ctl_ld, ctl_win = (min(c[i] for c in controls) for i in range(3))
    print(f"top-3 {by_patch[:3]} mean-ablated: accuracy {acc0:.3f} -> {acc_top:.3f}, logit diff {ld0:.2f} -> "
          f"{ld_top:.2f}, IO above S {win_top:.3f}; 8 random triples of the other heads: accuracy min "
          f"{ctl_acc:.3f}, logit diff min {ctl_ld:.2f}, IO above S min {ctl_win:.3f}")
    assert ld_top <= 0.6 * ld0, (ld_top, ld0)
    # (IO above S, not top-1 accuracy: in tiny-gpt2-ioi, ablating the induction heads L1H0 and
    # L1H1 lowers the top-1 accuracy to 0.37 without touching IO vs S: other tokens win)
    assert ld_top < ctl_ld - 1.0 and win_top < ctl_win, (win_top, ld_top, controls)


# ------------------------------------------------------------------ (c) causal scrubbing
def induction_circuit(ind_heads, prev_heads, n_layers: int):
    """The K-composition induction circuit as a causal-scrubbing hypothesis, on ``BOS + x + x``.

    At the repeated half, each induction head's output is computed with its *keys* reading only
    ``prev_heads``' outputs (everything else in its key input is resampled from a random other
    sequence), and its queries and values reading the residual stream before its layer of the
    same sequence. Every later component (the MLP of the induction layer, then each later
    layer's attention and MLP) and the logits read the induction heads, that residual stream
    (the direct paths), and the later components before them, computed the same way: the other
    heads of the induction layer are resampled everywhere.
    """
    li = ind_heads[0][0]
    assert all(l == li for l, _ in ind_heads)
    rep = slice(1 + SEQ_LEN, None)
    resid = f"blocks.{li}.hook_resid_pre"
    later = [f"blocks.{li}.hook_mlp_out"] + [f"blocks.{l}.hook_{c}_out" for l in range(li + 1, n_layers)
                                             for c in ("attn", "mlp")]

    def terms(k: int) -> list:
        """What a reader of the residual after the first k later components sees."""
        nodes = [cs.Node(get_act_name("z", li), head=h, positions=rep, label=f"induction L{li}H{h}",
                         children=[cs.Node(get_act_name("z", l), head=hh, via="k") for l, hh in prev_heads]
                         + [cs.Node(resid, via=("q", "v"))]) for _, h in ind_heads]
        nodes.append(cs.Node(resid))
        return nodes + [cs.Node(later[i], children=terms(i)) for i in range(k)]
    return cs.Hypothesis(terms(len(later)))


@pytest.mark.parametrize("name", NAMES)
def test_causal_scrubbing_true_vs_wrong_induction_circuit(name):
    m = model(name)
    toks = tasks.induction_tokens(m, batch=128, seq_len=SEQ_LEN, seed=3)
    P = toks.shape[1]
    ind, prev = KNOWN[name]["induction_heads"], KNOWN[name]["key_heads"]
    wrong = [x for x in _heads(m) if x[0] < ind[0][0] and x not in prev]  # every other earlier head
    scrubber = cs.CausalScrubber(m, toks, metric=cs.loss_metric(positions=slice(1 + SEQ_LEN, P - 1)))
    true_r = scrubber.scrub(induction_circuit(ind, prev, m.cfg.n_layers), seeds=3)
    wrong_r = scrubber.scrub(induction_circuit(ind, wrong, m.cfg.n_layers), seeds=3)
    assert true_r.metric_model < 1.0 < true_r.metric_random  # a behaviour worth explaining
    t, w = true_r.fraction_recovered_per_seed, wrong_r.fraction_recovered_per_seed
    for label, r, hs in (("true", true_r, prev), ("wrong", wrong_r, wrong)):
        print(f"\n{name} {label} (keys <- {hs}): loss model {r.metric_model:.3f}, scrubbed {r.metric_scrubbed:.3f}, "
              f"random {r.metric_random:.3f}; fraction recovered {r.fraction_recovered:.3f} +- "
              f"{r.fraction_recovered_std:.3f} (per seed {np.round(r.fraction_recovered_per_seed, 3).tolist()})")
    assert true_r.fraction_recovered >= 0.8 and t.min() >= 0.75, t
    assert wrong_r.fraction_recovered <= 0.5 and w.max() <= 0.5, w
    assert np.std(t, ddof=1) < 0.05 and np.std(w, ddof=1) < 0.05, (t, w)


# ------------------------------------------------------------------ (d) logit lens
@pytest.mark.parametrize("name", NAMES)
def test_logit_lens_answer_rank_falls_to_zero_at_the_end(name):
    m = model(name)
    b = tasks.ioi_batch(m, n=64, seed=7)
    _, cache = m.run_with_cache(b.clean_tokens)
    res = logit_lens(cache, b.clean_tokens, target=b.io_tokens[:, None].repeat(b.clean_tokens.shape[1], 1))
    rows = np.arange(len(b))
    ranks = np.asarray(res.target_ranks)[:, rows, b.end_positions, 0]  # [n_readouts, prompt]
    assert res.labels[-1] == "final_post" and ranks.shape[0] == m.cfg.n_layers + 1
    assert (ranks[-1] == 0).mean() >= 0.95, ranks[-1]
    assert np.median(ranks[0]) >= 3, ranks[0]  # the embedding alone does not give the answer
    med = np.median(ranks, axis=1)
    print(f"\n{name} logit lens {res.labels}: median rank of the IO name {med.tolist()}, "
          f"fraction at rank 0 {(ranks == 0).mean(1).round(3).tolist()}")
    assert np.all(np.diff(med) <= 0), med  # the rank only falls, layer by layer
    # ... and reaches 0 only in the last layers: not before the input of the last layer
    first_zero = int(np.argmax((ranks == 0).mean(1) >= 0.9))
    assert first_zero >= m.cfg.n_layers - 1 and np.all(med[:m.cfg.n_layers - 1] > 0), med


# ------------------------------------------------------------------ (e) SmolLM2-135M, real weights
@pytest.fixture(scope="module")
def smollm2():
    from model_files import smollm2_gguf_path

    return HookedTransformer.from_pretrained(smollm2_gguf_path())


def test_smollm2_induction_heads_in_attention_view_data(smollm2):
    m = smollm2
    toks = tasks.induction_tokens(m, batch=2, seq_len=SEQ_LEN, seed=3, pool="vocab")
    _, cache = m.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_pattern"))
    want = tasks.induction_scores(cache, SEQ_LEN)
    got = []
    for b in range(2):
        view = attention_view(cache, toks, batch=b)
        assert view.kv_group == m.cfg.n_heads // m.cfg.n_key_value_heads == 3  # GQA labels
        data = decode(view._enc, view.patterns.shape)
        got.append(tasks.induction_scores({f"blocks.{l}.attn.hook_pattern": data[l][None]
                                           for l in range(m.cfg.n_layers)}, SEQ_LEN))
    got = np.mean(got, 0)
    assert np.abs(got - want).max() <= 1e-3  # 3 digits kept per weight
    assert np.argmax(got) == np.argmax(want)
    assert got.max() >= 0.5 and np.median(got) < 0.1, (got.max(), np.median(got))
    top = np.unravel_index(np.argsort(-got, axis=None)[:5], got.shape)
    print(f"\nSmolLM2 induction scores from the attention-view data: top "
          f"{[(int(l), int(h), round(float(got[l, h]), 3)) for l, h in zip(*top)]}, median {np.median(got):.3f}")


def test_smollm2_head_patching_confirmed_by_ablation(smollm2):
    m = smollm2
    clean = m.to_tokens(["When Mary and John went to the store, John gave a drink to",
                         "When John and Mary went to the store, Mary gave a drink to"])
    corrupted = m.to_tokens(["When Mary and John went to the store, Mary gave a drink to",
                             "When John and Mary went to the store, John gave a drink to"])
    assert clean.shape == corrupted.shape
    io = np.array([m.to_single_token(" Mary"), m.to_single_token(" John")])
    s_ = io[::-1].copy()
    rows = np.arange(2)

    def logit_diff(logits):
        lg = np.asarray(logits, dtype=np.float64)[:, -1]
        return float(np.mean(lg[rows, io] - lg[rows, s_]))

    clean_logits, cache = m.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_z"))
    ld_clean, ld_corr = logit_diff(clean_logits), logit_diff(m(corrupted))
    assert ld_clean > 2 and ld_corr < -2, (ld_clean, ld_corr)
    patch = np.asarray(patching.get_act_patch_attn_head_out_all_pos(
        m, corrupted, cache, lambda lg: (logit_diff(lg) - ld_corr) / (ld_clean - ld_corr)))
    assert patch.shape == (m.cfg.n_layers, m.cfg.n_heads)
    order = [tuple(map(int, x)) for x in np.dstack(np.unravel_index(np.argsort(-patch, axis=None), patch.shape))[0]]
    assert patch[order[0]] >= 0.3  # one head alone restores a third of the answer
    assert order[0][0] >= m.cfg.n_layers // 2  # a late head (a name mover), as in GPT-2 small

    def mean_ablated(heads):  # each head's hook_z replaced by its mean over the two prompts
        hooks = []
        for l in sorted({l for l, _ in heads}):
            hs = [h for ll, h in heads if ll == l]
            mean = np.asarray(cache["z", l]).mean(0, keepdims=True)

            def fn(z, hook, hs=hs, mean=mean):
                z[:, :, hs] = mean[:, :, hs]
            hooks.append((get_act_name("z", l), fn))
        return logit_diff(m.run_with_hooks(clean, fwd_hooks=hooks))

    top = mean_ablated(order[:3])
    rng = np.random.default_rng(0)
    rest = order[3:]
    controls = [mean_ablated([rest[i] for i in rng.choice(len(rest), 3, replace=False)]) for _ in range(4)]
    print(f"\nSmolLM2 IOI head patching (2 prompts; clean {ld_clean:.2f}, corrupted {ld_corr:.2f}): top "
          f"{[(l, h, round(float(patch[l, h]), 3)) for l, h in order[:5]]}; top-3 mean-ablated: logit diff "
          f"{top:.2f}; 3 random other heads: {np.round(controls, 2).tolist()}")
    assert top <= 0.5 * ld_clean, (top, ld_clean)
    assert min(controls) >= 0.8 * ld_clean, (controls, ld_clean)
