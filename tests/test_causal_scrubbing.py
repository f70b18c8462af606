"""Causal scrubbing (glassbox.causal_scrubbing) on random-weight GPT-2 and Llama-GQA models.

The batched implementation is checked against an independent, unbatched reference written
here: its own sampler (a per-example loop over raw feature values, same documented draws),
and per reference input a recursive evaluation with batch-1 forward passes in which each
node's input residual is built as an explicit sum of the residual-stream terms (embeddings,
every head's ``z @ W_O``, ``b_O``, every MLP output) taken from the right input, and each
attention node's output is computed in NumPy from the q/k/v of three separate runs (so the
GQA kv-head mapping and the q/k/v splicing are re-derived, not reused).

Tolerances: per-example metric values agree to rtol = atol = 1e-5 (measured: <= 4e-7 absolute on
losses ~6; float32 residual sums in a different order, batch-1 vs batched GEMMs); sampling plans
agree exactly; invariants exact up to float32 rounding (identity hypotheses = model, constant
features = random baseline) use 1e-5 and 1e-6.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import helpers_llama as hl
import helpers_models as hm
import glassbox
import glassbox.causal_scrubbing as cs
from glassbox.arrays import to_numpy

RTOL = ATOL = 1e-5
N_DATA, POS, VOCAB_USED = 20, 9, 6
LLAMA_GQA = hl.spec("llama-gqa-9x3", hidden_size=90, num_attention_heads=9, num_key_value_heads=3,
                    intermediate_size=131, vocab_size=103, seed=1)


# ------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def gpt2(zoo):
    return zoo.gb(hm.GPT2_ODD)  # 3 layers, 5 heads, d_head 13, standard positions


@pytest.fixture(scope="session")
def llama(fixture_root):
    folder = hl.save_folder(LLAMA_GQA, Path(fixture_root) / "llama" / LLAMA_GQA.key())
    return glassbox.HookedTransformer.from_pretrained(str(folder))  # 2 layers, 9 q / 3 kv heads


@pytest.fixture(params=["gpt2", "llama"])
def model(request):
    return request.getfixturevalue(request.param)


def dataset(seed: int = 0, n: int = N_DATA) -> np.ndarray:
    """Tokens from a 6-token alphabet, so token features put several inputs in one class."""
    return np.random.default_rng(seed).integers(0, VOCAB_USED, size=(n, POS)).astype(np.int64)


def self_prediction_metric(model, tokens):
    """Cross-entropy against the unscrubbed model's own argmax predictions: on random weights the
    true next token is unpredictable, so this is the metric where the model beats random inputs."""
    labels = to_numpy(model(tokens)).argmax(-1)

    def self_ce(logits, toks, idx):
        x = logits.astype(np.float64)
        x = x - x.max(-1, keepdims=True)
        lp = x - np.log(np.exp(x).sum(-1, keepdims=True))
        return -np.take_along_axis(lp, labels[idx][..., None], -1)[..., 0].mean(-1)

    return self_ce


def embeds(model):
    out = [cs.Node("hook_embed")]
    if model.cfg.positional_embedding_type == "standard":
        out.append(cs.Node("hook_pos_embed"))
    return out


def assert_hooks_clean(model):
    assert model.list_hooks() == {}
    assert model.context_level == 0
    assert model.cfg.use_split_qkv_input is False
    assert glassbox.get_array_backend() == "auto"


# ------------------------------------------------------------------------------------------
# the independent reference


def ref_feature_values(feature, tokens):
    n = tokens.shape[0]
    if feature == "identity":
        return list(range(n))
    if feature == "constant":
        return [0] * n
    vals = np.asarray(feature(tokens.copy()) if callable(feature) else feature)
    return [tuple(np.atleast_1d(v).tolist()) for v in vals]


def ref_preorder(hyp):
    """[(parent_index, node)] with the root (None, None) first, children in order, depth first."""
    out = []

    def rec(node, parent):
        me = len(out)
        out.append((parent, node))
        for c in (hyp.children if node is None else node.children):
            rec(c, me)

    rec(None, None)
    return out


def ref_plan(hyp, tokens, seed, refs):
    order = ref_preorder(hyp)
    rng = np.random.default_rng(seed)
    n_data, N = tokens.shape[0], len(refs)
    x, r = [], []
    for parent, node in order:
        if parent is None:
            xs = list(refs)
        else:
            u = rng.random(N)
            vals = ref_feature_values(node.feature, tokens)
            xs = []
            for i in range(N):
                p = x[parent][i]
                members = [j for j in range(n_data) if vals[j] == vals[p]]
                xs.append(members[min(int(u[i] * len(members)), len(members) - 1)])
        x.append(xs)
        r.append(list(rng.integers(0, n_data, size=N)))
    return order, np.array(x), np.array(r)


class RefSite:
    """The test's own reading of a node name: kind, layer, head, and residual points
    (2l = resid_pre l, 2l+1 = resid_mid l, 2l+2 = resid_post l) it reads and writes."""

    def __init__(self, node):
        name, self.head, self.name = node.name, node.head, node.name
        if name in ("hook_embed", "hook_pos_embed"):
            self.kind, self.layer, self.read = name[5:], None, 0
            self.write = 0
            return
        layer, rest = name.split(".", 2)[1:]
        self.layer = int(layer)
        self.kind = {"attn.hook_z": "head", "attn.hook_result": "head", "hook_attn_out": "attn",
                     "hook_mlp_out": "mlp"}.get(rest, "resid")
        if self.kind in ("head", "attn"):
            self.read, self.write = 2 * self.layer, 2 * self.layer + 1
        elif self.kind == "mlp":
            self.read, self.write = 2 * self.layer + 1, 2 * self.layer + 2
        else:
            point = 2 * self.layer + {"hook_resid_pre": 0, "hook_resid_mid": 1, "hook_resid_post": 2}[rest]
            self.read = self.write = point


class Reference:
    """Unbatched causal scrubbing: one reference input at a time, batch-1 runs."""

    def __init__(self, model, tokens, metric):
        self.model, self.tokens, self.metric = model, tokens, metric
        cfg = model.cfg
        self.L, self.H, self.P = cfg.n_layers, cfg.n_heads, tokens.shape[1]
        self.G = cfg.n_key_value_heads or cfg.n_heads
        self.W_O = [to_numpy(model.blocks[l].attn.W_O).astype(np.float64) for l in range(self.L)]
        self.b_O = [to_numpy(model.blocks[l].attn.b_O).astype(np.float64) for l in range(self.L)]
        self.rotary = cfg.positional_embedding_type == "rotary"
        self.scale = cfg.attn_scale if cfg.use_attn_scale else 1.0
        self._clean = {}

    # clean activations of dataset input j, batch 1
    def clean(self, j):
        if j not in self._clean:
            _, cache = self.model.run_with_cache(self.tokens[j:j + 1])
            self._clean[j] = {k: to_numpy(v)[0].astype(np.float64) for k, v in cache.items()}
        return self._clean[j]

    def terms(self, j):
        """[(atom, write point, value [P, D])] of the residual stream of input j."""
        c = self.clean(j)
        out = [(("embed",), 0, c["hook_embed"])]
        if "hook_pos_embed" in c:
            out.append((("pos_embed",), 0, c["hook_pos_embed"]))
        for l in range(self.L):
            z = c[f"blocks.{l}.attn.hook_z"]
            for h in range(self.H):
                out.append((("head", l, h), 2 * l + 1, z[:, h] @ self.W_O[l][h]))
            out.append((("b_O", l), 2 * l + 1, np.broadcast_to(self.b_O[l], (self.P, self.b_O[l].shape[0]))))
            out.append((("mlp", l), 2 * l + 2, c[f"blocks.{l}.hook_mlp_out"]))
        return out

    @staticmethod
    def claims(site, atom, write):
        k = site.kind
        if k in ("embed", "pos_embed"):
            return atom == (k,)
        if k == "head":
            return atom == ("head", site.layer, site.head)
        if k == "attn":
            return atom[0] in ("head", "b_O") and atom[1] == site.layer
        if k == "mlp":
            return atom == ("mlp", site.layer)
        return write <= site.write  # a residual point: every term written at or before it

    def mask(self, node):
        m = np.zeros(self.P, dtype=bool)
        if node.positions is None:
            m[:] = True
        else:
            m[np.arange(self.P)[node.positions] if isinstance(node.positions, slice)
              else np.atleast_1d(node.positions)] = True
        return m

    def input_residual(self, read, random_input, kids):
        """Explicit sum: every term up to ``read`` from ``random_input`` unless a child claims it
        at that position, plus each child's value at its positions. kids: [(node, value)]."""
        R = np.zeros((self.P, self.model.cfg.d_model))
        for atom, write, value in self.terms(random_input):
            if write > read:
                continue
            free = np.ones(self.P, dtype=bool)
            for node, _ in kids:
                if self.claims(RefSite(node), atom, write):
                    free &= ~self.mask(node)
            R += value * free[:, None]
        for node, value in kids:
            R += value * self.mask(node)[:, None]
        return R

    def run_layer(self, R, layer, names):
        got = {}

        def grab(a, hook):
            got[hook.name] = to_numpy(a)[0].astype(np.float64)

        self.model.run_with_hooks(R[None].astype(np.float32), start_at_layer=layer, stop_at_layer=layer + 1,
                                  fwd_hooks=[(n, grab) for n in names])
        return got

    def attention_z(self, layer, Rq, Rk, Rv):
        """z [P, H, d] of every query head from separate q, k, v input residuals (NumPy attention)."""
        a = f"blocks.{layer}.attn."
        q = self.run_layer(Rq, layer, [a + ("hook_rot_q" if self.rotary else "hook_q")])
        k = self.run_layer(Rk, layer, [a + ("hook_rot_k" if self.rotary else "hook_k")])
        v = self.run_layer(Rv, layer, [a + "hook_v"])
        q, k, v = next(iter(q.values())), next(iter(k.values())), v[a + "hook_v"]
        z = np.zeros((self.P, self.H, q.shape[-1]))
        causal = np.tril(np.ones((self.P, self.P), dtype=bool))
        for h in range(self.H):
            g = h // (self.H // self.G)  # the kv head query head h reads
            s = np.where(causal, q[:, h] @ k[:, g].T / self.scale, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            z[:, h] = (p / p.sum(-1, keepdims=True)) @ v[:, g]
        return z

    def leaf_value(self, node, j):
        c, s = self.clean(j), RefSite(node)
        if s.kind == "head":
            return c[f"blocks.{s.layer}.attn.hook_z"][:, s.head] @ self.W_O[s.layer][s.head]
        if s.kind == "attn":
            return c[f"blocks.{s.layer}.hook_attn_out"]
        if s.kind == "mlp":
            return c[f"blocks.{s.layer}.hook_mlp_out"]
        return c[s.name]

    def value(self, n, i, order, x, r):
        parent, node = order[n]
        kids_idx = [k for k, (p, _) in enumerate(order) if p == n]
        if node is not None and not kids_idx:
            return self.leaf_value(node, x[n][i])
        kids = [(order[k][1], self.value(k, i, order, x, r)) for k in kids_idx]
        rand = r[n][i]
        if node is None:
            R = self.input_residual(2 * self.L, rand, kids)
            logits = to_numpy(self.model(R[None].astype(np.float32), start_at_layer=self.L))
            ref = x[0][i]
            return float(self.metric(logits, self.tokens[ref:ref + 1], np.array([ref]))[0])
        s = RefSite(node)
        if s.kind == "resid":
            return self.input_residual(s.read, rand, kids)
        if s.kind == "mlp":
            R = self.input_residual(s.read, rand, kids)
            got = {}

            def put(a, hook):
                to_numpy(a)[0] = R

            def grab(a, hook):
                got["out"] = to_numpy(a)[0].astype(np.float64)

            self.model.run_with_hooks(R[None].astype(np.float32), start_at_layer=s.layer, stop_at_layer=s.layer + 1,
                                      fwd_hooks=[(f"blocks.{s.layer}.hook_resid_mid", put),
                                                 (f"blocks.{s.layer}.hook_mlp_out", grab)])
            return got["out"]
        slot_R = {slot: self.input_residual(s.read, rand, [(c, v) for c, v in kids
                                                            if c.via is None or slot in c.via])
                  for slot in ("q", "k", "v")}
        z = self.attention_z(s.layer, slot_R["q"], slot_R["k"], slot_R["v"])
        if s.kind == "head":
            return z[:, s.head] @ self.W_O[s.layer][s.head]
        return np.einsum("phd,hdD->pD", z, self.W_O[s.layer]) + self.b_O[s.layer]

    def scrub(self, hyp, seed, refs):
        order, x, r = ref_plan(hyp, self.tokens, seed, refs)
        return np.array([self.value(0, i, order, x, r) for i in range(len(refs))]), x, r


# ------------------------------------------------------------------------------------------
# hypotheses used below


def hypotheses(model):
    """Trees exercising q/k/v slots, features, positions, every node kind, for either model."""
    L = model.cfg.n_layers
    top = L - 1
    emb = embeds(model)
    ind = cs.Node(f"blocks.{top}.attn.hook_z", head=model.cfg.n_heads - 2, feature=cs.token_at(-1), children=[
        cs.Node(f"blocks.{top - 1}.attn.hook_z", head=1, via="k", feature=cs.tokens_at([3, 4]),
                positions=slice(2, None), children=emb),
        cs.Node("hook_embed", via=("q", "v"), feature=cs.token_at(2)),
        cs.Node(f"blocks.{top - 1}.attn.hook_z", head=model.cfg.n_heads - 1, via="v", positions=[0, 1, 2, -1]),
    ])
    h1 = cs.Hypothesis([
        ind,
        cs.Node(f"blocks.{top - 1}.hook_mlp_out", feature=cs.token_at(0), children=[
            cs.Node(f"blocks.{top - 1}.hook_resid_mid", positions=[5, 6, 7, 8], feature=cs.tokens_at([5, 6]))]),
        cs.Node(f"blocks.{top - 1}.hook_resid_pre", positions=[0, 1], feature=cs.token_at(1)),
    ])
    h2 = cs.Hypothesis([
        cs.Node(f"blocks.{top}.hook_attn_out", positions=slice(0, 5), feature=cs.token_at(3), children=[
            cs.Node(f"blocks.{top - 1}.hook_resid_post", via="v", feature="constant"),
            cs.Node(f"blocks.{top - 1}.attn.hook_z", head=0, via=("q", "k"), children=[
                cs.Node("hook_embed", via="k", feature=cs.token_at(4))]),
        ]),
        cs.Node(f"blocks.{top}.hook_resid_mid", positions=slice(5, None), children=[
            cs.Node(f"blocks.{top - 1}.hook_mlp_out", feature=cs.token_at(1)),
            cs.Node(f"blocks.{top}.attn.hook_z", head=2, children=[cs.Node(f"blocks.{top}.hook_resid_pre")]),
        ]),
    ])
    h3 = cs.Hypothesis([])  # nothing matters: the output sees one random input
    return {"slots-features-positions": h1, "attn-layer-resid-sum": h2, "empty": h3}


# ------------------------------------------------------------------------------------------
# agreement with the unbatched reference


@pytest.mark.parametrize("which", ["slots-features-positions", "attn-layer-resid-sum", "empty"])
def test_matches_unbatched_reference(model, which):
    tokens = dataset(1)
    hyp = hypotheses(model)[which]
    ref = Reference(model, tokens, cs.loss_metric())
    refs = np.arange(N_DATA)
    # the loss over two seeds, and a custom metric using the dataset indices over one
    for metric, seeds in (("loss", [0, 3]), (self_prediction_metric(model, tokens), [3])):
        ref.metric = cs.loss_metric() if metric == "loss" else metric
        res = cs.causal_scrub(model, tokens, hyp, metric=metric, seeds=seeds, batch_size=7, keep_plans=True)
        for s, seed in enumerate(seeds):
            got_ref, x, r = ref.scrub(hyp, seed, refs)
            np.testing.assert_array_equal(res.plans[s].inputs, x)
            np.testing.assert_array_equal(res.plans[s].random, r)
            np.testing.assert_allclose(res.per_example_scrubbed[s], got_ref, rtol=RTOL, atol=ATOL)
            rnd, _, _ = ref.scrub(hyp.constant(), seed, refs)
            np.testing.assert_allclose(res.per_example_random[s], rnd, rtol=RTOL, atol=ATOL)
        clean = np.array([ref.metric(to_numpy(model(tokens[j:j + 1])), tokens[j:j + 1], np.array([j]))[0]
                          for j in range(N_DATA)])
        np.testing.assert_allclose(res.per_example_model, clean, rtol=RTOL, atol=ATOL)
    assert_hooks_clean(model)


def test_public_sampling_plan_matches_loop_sampler(model):
    tokens = dataset(2)
    hyp = hypotheses(model)["slots-features-positions"]
    refs = [3, 0, 7, 7, 19]
    plan = cs.sampling_plan(hyp, tokens, seed=11, references=refs)
    _, x, r = ref_plan(hyp, tokens, 11, refs)
    np.testing.assert_array_equal(plan.inputs, x)
    np.testing.assert_array_equal(plan.random, r)
    # the sampled inputs agree with their parent's input on their own feature
    order = ref_preorder(hyp)
    for n, (parent, node) in enumerate(order):
        if parent is not None:
            vals = ref_feature_values(node.feature, tokens)
            assert all(vals[a] == vals[b] for a, b in zip(plan.inputs[n], plan.inputs[parent]))


def test_loss_metric_matches_lm_cross_entropy_loss():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 7, 50)).astype(np.float32) * 3
    tokens = rng.integers(0, 50, size=(4, 7))
    per_token = to_numpy(glassbox.utils.lm_cross_entropy_loss(logits, tokens, per_token=True))
    idx = np.arange(4)
    np.testing.assert_allclose(cs.loss_metric()(logits, tokens, idx), per_token.mean(1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cs.loss_metric(positions=[0, 5])(logits, tokens, idx), per_token[:, [0, 5]].mean(1),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cs.loss_metric(positions=-1)(logits, tokens, idx), per_token[:, -1], rtol=1e-6, atol=1e-6)
    diff = cs.logit_diff_metric([1, 2, 3, 4], [5, 6, 7, 8], position=2)(logits, tokens, np.array([3, 0, 1, 2]))
    np.testing.assert_allclose(diff, logits[np.arange(4), 2, [4, 1, 2, 3]] - logits[np.arange(4), 2, [8, 5, 6, 7]],
                               rtol=1e-6)


def test_empty_hypothesis_is_the_model_on_a_random_input(gpt2):
    tokens = dataset(3)
    res = cs.causal_scrub(gpt2, tokens, cs.Hypothesis([]), seeds=[5], keep_plans=True)
    r = res.plans[0].random[0]
    logits = to_numpy(gpt2(tokens[r]))
    expect = cs.loss_metric()(logits, tokens, np.arange(N_DATA))
    np.testing.assert_allclose(res.per_example_scrubbed[0], expect, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------
# invariants


def test_constant_features_equal_random_baseline(model):
    tokens = dataset(4)
    metric = self_prediction_metric(model, tokens)
    const = hypotheses(model)["slots-features-positions"].constant()
    res = cs.causal_scrub(model, tokens, const, metric=metric, seeds=3)
    np.testing.assert_allclose(res.per_example_scrubbed, res.per_example_random, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(res.fraction_recovered_per_seed, 0.0, atol=1e-6)
    assert abs(res.fraction_recovered) < 1e-6
    # user-written constant features (any one value per input) are the same as "constant"
    zeros = lambda toks: np.zeros(toks.shape[0])  # noqa: E731
    top = model.cfg.n_layers - 1
    hyp = cs.Hypothesis([cs.Node(f"blocks.{top}.attn.hook_z", head=0, feature=zeros, children=[
        cs.Node("hook_embed", via="q", feature=np.full(N_DATA, 7))])])
    res2 = cs.causal_scrub(model, tokens, hyp, metric=metric, seeds=[1, 2])
    np.testing.assert_allclose(res2.per_example_scrubbed, res2.per_example_random, rtol=1e-6, atol=1e-6)
    assert res2.metric_random > res2.metric_model  # the baseline is worse than the model here


def covering_hypotheses(model):
    """Identity-feature trees whose edges cover every term reaching the output."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    top = L - 1
    whole = cs.Hypothesis([cs.Node(f"blocks.{top}.hook_resid_post")])
    last = cs.Hypothesis(
        [cs.Node(f"blocks.{top}.hook_resid_pre")]
        + [cs.Node(f"blocks.{top}.attn.hook_z", head=h, children=[cs.Node(f"blocks.{top}.hook_resid_pre")])
           for h in range(H)]
        + [cs.Node(f"blocks.{top}.hook_mlp_out", children=[cs.Node(f"blocks.{top}.hook_resid_mid")])])
    # down to the embeddings, with q/k/v split and positions split
    embeds_all = embeds(model)
    layer0 = [cs.Node("blocks.0.hook_attn_out", children=[
        cs.Node("hook_embed", via="q"), cs.Node("hook_embed", via=("k", "v"), positions=[0, 1, 2]),
        cs.Node("hook_embed", via=("k", "v"), positions=slice(3, None))]
        + ([cs.Node("hook_pos_embed")] if len(embeds_all) == 2 else [])),
        cs.Node("blocks.0.hook_mlp_out", children=[cs.Node("blocks.0.hook_resid_mid")])] + embeds(model)
    deep = cs.Hypothesis([cs.Node(f"blocks.{top}.hook_resid_post", children=[
        cs.Node("blocks.0.hook_resid_post", children=layer0)]
        + [cs.Node(f"blocks.{l}.hook_attn_out", children=[cs.Node(f"blocks.{l}.hook_resid_pre")]) for l in range(1, L)]
        + [cs.Node(f"blocks.{l}.hook_mlp_out", children=[cs.Node(f"blocks.{l}.hook_resid_mid")]) for l in range(1, L)])])
    return {"whole": whole, "last-layer": last, "deep": deep}


@pytest.mark.parametrize("which", ["whole", "last-layer", "deep"])
def test_identity_features_covering_the_model_equal_the_model(model, which):
    tokens = dataset(5)
    metric = self_prediction_metric(model, tokens)
    hyp = covering_hypotheses(model)[which]
    res = cs.causal_scrub(model, tokens, hyp, metric=metric, seeds=2, batch_size=10)
    np.testing.assert_allclose(res.per_example_scrubbed, np.broadcast_to(res.per_example_model, (2, N_DATA)),
                               rtol=1e-5, atol=1e-5)
    gap = res.metric_random - res.metric_model
    assert gap > 0.05, gap
    np.testing.assert_allclose(res.fraction_recovered_per_seed, 1.0, atol=1e-4)
    assert abs(res.fraction_recovered - 1.0) < 1e-4
    assert_hooks_clean(model)


def test_identity_leaves_missing_a_path_do_not_recover_everything(gpt2):
    """Dropping one head from the covering tree resamples its output: the loss moves."""
    tokens = dataset(5)
    metric = self_prediction_metric(gpt2, tokens)
    top, H = gpt2.cfg.n_layers - 1, gpt2.cfg.n_heads
    hyp = cs.Hypothesis(
        [cs.Node(f"blocks.{top}.hook_resid_pre")]
        + [cs.Node(f"blocks.{top}.attn.hook_z", head=h) for h in range(1, H)]
        + [cs.Node(f"blocks.{top}.hook_mlp_out")])
    res = cs.causal_scrub(gpt2, tokens, hyp, metric=metric, seeds=2)
    assert np.abs(res.per_example_scrubbed - res.per_example_model).max() > 1e-3


def test_seeds_reproduce(model):
    tokens = dataset(6)
    hyp = hypotheses(model)["attn-layer-resid-sum"]
    a = cs.causal_scrub(model, tokens, hyp, seeds=[4, 9])
    b = cs.causal_scrub(model, tokens, hyp, seeds=[9, 4], batch_size=8)
    np.testing.assert_allclose(a.per_example_scrubbed, b.per_example_scrubbed[::-1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a.per_example_random, b.per_example_random[::-1], rtol=1e-6, atol=1e-6)
    assert a.seeds == [4, 9] and b.seeds == [9, 4]
    assert not np.allclose(a.per_example_scrubbed[0], a.per_example_scrubbed[1])
    assert cs.sampling_plan(hyp, tokens, seed=1).seed == 1
    from glassbox.causal_scrubbing.sampling import check_seeds
    assert check_seeds(2) == [0, 1]


def test_scrubber_reuses_clean_pass_and_matches_one_shot(gpt2):
    tokens = dataset(7)
    hs = hypotheses(gpt2)
    sc = cs.CausalScrubber(gpt2, tokens)
    r1 = sc.scrub(hs["empty"], seeds=2)
    calls = sc.forward_calls
    r2 = sc.scrub(hs["slots-features-positions"], seeds=2)
    one = cs.causal_scrub(gpt2, tokens, hs["slots-features-positions"], seeds=2)
    np.testing.assert_allclose(r2.per_example_scrubbed, one.per_example_scrubbed, rtol=1e-6, atol=1e-6)
    assert r1.metric_model == r2.metric_model == one.metric_model
    # the second scrub ran one extra clean pass (for the new hook points) plus its node runs
    assert sc.forward_calls > calls


def test_references_subset(gpt2):
    tokens = dataset(8)
    hyp = hypotheses(gpt2)["slots-features-positions"]
    full = cs.causal_scrub(gpt2, tokens, hyp, seeds=[2])
    sub = cs.causal_scrub(gpt2, tokens, hyp, seeds=[2], references=[4, 1, 1], keep_plans=True)
    assert sub.n_inputs == 3
    np.testing.assert_array_equal(sub.plans[0].inputs[0], [4, 1, 1])
    np.testing.assert_allclose(sub.per_example_model, full.per_example_model[[4, 1, 1]], rtol=1e-6)
    ref = Reference(gpt2, tokens, cs.loss_metric())
    got, _, _ = ref.scrub(hyp, 2, [4, 1, 1])
    np.testing.assert_allclose(sub.per_example_scrubbed[0], got, rtol=RTOL, atol=ATOL)


def test_logit_diff_metric_and_torch_inputs(gpt2):
    torch = pytest.importorskip("torch")
    tokens = dataset(9)
    correct, wrong = tokens[:, 0], tokens[:, 1]
    metric = cs.logit_diff_metric(correct, wrong, position=-1)
    hyp = hypotheses(gpt2)["slots-features-positions"]
    a = cs.causal_scrub(gpt2, tokens, hyp, metric=metric, seeds=2)
    b = cs.causal_scrub(gpt2, torch.from_numpy(tokens), hyp, metric=metric, seeds=2)
    np.testing.assert_allclose(a.per_example_scrubbed, b.per_example_scrubbed, rtol=1e-6, atol=1e-6)
    logits = to_numpy(gpt2(tokens))
    np.testing.assert_allclose(a.per_example_model, logits[np.arange(N_DATA), -1, correct]
                               - logits[np.arange(N_DATA), -1, wrong], rtol=1e-5, atol=1e-5)
    # declaring logit_positions (only those positions unembedded) changes nothing
    assert list(metric.logit_positions(POS)) == [-1]
    plain = cs.causal_scrub(gpt2, tokens, hyp, metric=lambda lg, t, i: metric(lg, t, i), seeds=[0])
    np.testing.assert_allclose(a.per_example_scrubbed[:1], plain.per_example_scrubbed, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.per_example_model, plain.per_example_model, rtol=1e-5, atol=1e-5)
    few = cs.loss_metric(positions=[1, -2])
    d1 = cs.causal_scrub(gpt2, tokens, hyp, metric=few, seeds=[3])
    d2 = cs.causal_scrub(gpt2, tokens, hyp, metric=lambda lg, t, i: few(lg, t, i), seeds=[3])
    np.testing.assert_allclose(d1.per_example_scrubbed, d2.per_example_scrubbed, rtol=1e-5, atol=1e-5)
    glassbox.set_array_backend("torch")
    try:
        c = cs.causal_scrub(gpt2, tokens, hyp, metric=metric, seeds=[1])
        assert glassbox.get_array_backend() == "torch"
    finally:
        glassbox.set_array_backend("auto")
    np.testing.assert_allclose(a.per_example_scrubbed[1:], c.per_example_scrubbed, rtol=1e-6, atol=1e-6)


def test_result_repr_and_summary(gpt2):
    tokens = dataset(10)
    res = cs.causal_scrub(gpt2, tokens, hypotheses(gpt2)["slots-features-positions"], seeds=3)
    text = repr(res)
    for needle in ("fraction recovered", "scrubbed", "random (all resampled)", "model (unscrubbed)",
                   f"{res.metric_scrubbed:.6g}", f"{res.metric_model:.6g}", "3 seeds", "hook_z"):
        assert needle in text, needle
    s = res.summary()
    assert s["n_seeds"] == 3 and s["n_inputs"] == N_DATA
    np.testing.assert_allclose(s["scrubbed_std"], np.std(res.scrubbed_per_seed, ddof=1))
    np.testing.assert_allclose(res.metric_scrubbed, res.per_example_scrubbed.mean())
    f = (res.metric_random - res.metric_scrubbed) / (res.metric_random - res.metric_model)
    np.testing.assert_allclose(res.fraction_recovered, f)
    assert res.per_example_scrubbed.shape == res.per_example_random.shape == (3, N_DATA)
    assert "output" in repr(hypotheses(gpt2)["empty"])


# ------------------------------------------------------------------------------------------
# bad input: a clear error, and the model's hooks and flags exactly as before


def _node(model, **kw):
    return cs.Node(f"blocks.{model.cfg.n_layers - 1}.attn.hook_z", head=0, **kw)


BAD_SCRUB = {
    "unknown hook": (lambda m: cs.Hypothesis([cs.Node("blocks.0.hook_resid_prex")]), ValueError, "not a causal-scrubbing"),
    "layer out of range": (lambda m: cs.Hypothesis([cs.Node("blocks.7.hook_mlp_out")]), ValueError, "unknown hook point"),
    "head out of range": (lambda m: cs.Hypothesis([cs.Node("blocks.0.attn.hook_z", head=m.cfg.n_heads)]),
                          ValueError, "out of range"),
    "feature too short": (lambda m: cs.Hypothesis([_node(m, feature=lambda t: t[:-1, 0])]), ValueError,
                          f"gave {N_DATA - 1} values"),
    "feature array length": (lambda m: cs.Hypothesis([_node(m, feature=np.zeros(3))]), ValueError, "3 values"),
    "feature scalar": (lambda m: cs.Hypothesis([_node(m, feature=lambda t: 1)]), ValueError, "a scalar"),
    "feature raises": (lambda m: cs.Hypothesis([_node(m, feature=lambda t: t[:, 99])]), IndexError, "feature function"),
    "position out of range": (lambda m: cs.Hypothesis([_node(m, positions=[POS])]), ValueError, "out of range"),
    "empty positions": (lambda m: cs.Hypothesis([_node(m, positions=slice(4, 4))]), ValueError, "select no position"),
    "overlapping children": (lambda m: cs.Hypothesis([cs.Node("blocks.1.hook_resid_pre"), cs.Node("blocks.0.hook_mlp_out")]),
                             ValueError, "overlap"),
    "overlapping slot children": (lambda m: cs.Hypothesis([_node(m, children=[
        cs.Node("hook_embed", via="k"), cs.Node("blocks.0.hook_resid_pre", via=("q", "k"))])]), ValueError, "k input"),
}


@pytest.mark.parametrize("case", sorted(BAD_SCRUB))
def test_bad_hypothesis_for_model_raises_and_leaves_model_untouched(model, case):
    make, exc, text = BAD_SCRUB[case]
    tokens = dataset(11)
    before = model(tokens)
    with pytest.raises(exc, match=text):
        cs.causal_scrub(model, tokens, make(model), seeds=1)
    assert_hooks_clean(model)
    np.testing.assert_array_equal(to_numpy(model(tokens)), to_numpy(before))


BAD_STRUCTURE = {
    "child after parent": (lambda: cs.Hypothesis([cs.Node("blocks.0.attn.hook_z", head=0, children=[
        cs.Node("blocks.1.hook_mlp_out")])]), "writes to the residual stream after"),
    "mlp reads its own layer's later output": (lambda: cs.Hypothesis([cs.Node("blocks.0.hook_mlp_out", children=[
        cs.Node("blocks.0.hook_resid_post")])]), "writes to the residual stream after"),
    "via under mlp": (lambda: cs.Hypothesis([cs.Node("blocks.1.hook_mlp_out", children=[
        cs.Node("hook_embed", via="q")])]), "only meaningful under an attention node"),
    "via under output": (lambda: cs.Hypothesis([cs.Node("hook_embed", via="k")]), "only meaningful"),
    "bad via": (lambda: cs.Node("hook_embed", via="x"), "via"),
    "embed with children": (lambda: cs.Node("hook_embed", children=[cs.Node("hook_embed")]), "cannot have children"),
    "head missing": (lambda: cs.Node("blocks.0.attn.hook_z"), "pass head="),
    "head on mlp": (lambda: cs.Node("blocks.0.hook_mlp_out", head=1), "not per head"),
    "unsupported hook": (lambda: cs.Node("blocks.0.attn.hook_pattern", head=1), "not a causal-scrubbing node site"),
    "bad feature word": (lambda: cs.Node("hook_embed", feature="tokens"), "feature"),
}


@pytest.mark.parametrize("case", sorted(BAD_STRUCTURE))
def test_bad_structure_raises_at_construction(case):
    make, text = BAD_STRUCTURE[case]
    with pytest.raises(ValueError, match=text):
        make()


def test_cycle_and_type_errors(gpt2):
    a = cs.Node("blocks.1.hook_resid_pre")
    a.children.append(a)
    with pytest.raises(ValueError, match="cycle"):
        cs.Hypothesis([a])
    b = cs.Node("blocks.1.hook_resid_pre")
    hyp = cs.Hypothesis([b])
    b.children.append(b)  # edited after construction: caught when scrubbed
    with pytest.raises(ValueError, match="cycle"):
        cs.causal_scrub(gpt2, dataset(0), hyp)
    assert_hooks_clean(gpt2)
    with pytest.raises(TypeError, match="head must be an int"):
        cs.Node("blocks.0.attn.hook_z", head=1.5)
    with pytest.raises(TypeError, match="Nodes"):
        cs.Hypothesis(["blocks.0.hook_mlp_out"])
    with pytest.raises(TypeError, match="positions"):
        cs.Node("hook_embed", positions=[1.5])


def _metric_reading(positions):
    def m(logits, tokens, idx):
        return logits[:, 0, 0]

    m.logit_positions = positions
    return m


BAD_CALL = {
    "dataset too small": (dict(tokens=np.zeros((1, POS), dtype=np.int64)), ValueError, "too small"),
    "1-D tokens": (dict(tokens=np.zeros(POS, dtype=np.int64)), ValueError, r"\[n_data, pos\]"),
    "float tokens": (dict(tokens=np.zeros((4, POS))), TypeError, "integer token ids"),
    "token out of vocab": (dict(tokens=np.full((4, POS), 10_000)), ValueError, "out of range for d_vocab"),
    "no seeds": (dict(seeds=0), ValueError, "seeds"),
    "repeated seeds": (dict(seeds=[1, 1]), ValueError, "distinct"),
    "negative seed": (dict(seeds=[-1]), ValueError, "non-negative"),
    "reference out of range": (dict(references=[0, N_DATA]), ValueError, "out of range"),
    "bad metric name": (dict(metric="accuracy"), ValueError, "metric"),
    "metric wrong shape": (dict(metric=lambda lg, t, i: lg.mean()), ValueError, "one value per input"),
    "metric raises": (dict(metric=lambda lg, t, i: 1 / 0), ZeroDivisionError, "division by zero"),
    "bad batch size": (dict(batch_size=0), ValueError, "batch_size"),
    "metric positions out of range": (dict(metric=_metric_reading([POS])), ValueError, "logit_positions"),
    "not a hypothesis": (dict(hypothesis=[cs.Node("hook_embed")]), TypeError, "Hypothesis"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALL))
def test_bad_call_raises_and_leaves_model_untouched(model, case):
    kw, exc, text = BAD_CALL[case]
    args = dict(tokens=dataset(12), hypothesis=hypotheses(model)["slots-features-positions"], seeds=1)
    args.update(kw)
    with pytest.raises(exc, match=text):
        cs.causal_scrub(model, **args)
    assert_hooks_clean(model)


def test_failure_inside_a_spliced_run_restores_hooks_and_flags(model, monkeypatch):
    """An error in the middle of a q/k/v-split run: hooks removed, split flag restored."""
    import glassbox.causal_scrubbing.scrub as scrub_mod

    real = scrub_mod._splice

    def failing(value, index):
        fn = real(value, index)

        def hook(act, hook):
            if hook.name.endswith("hook_k_input"):
                raise RuntimeError("boom in a splice hook")
            return fn(act, hook)

        return hook

    monkeypatch.setattr(scrub_mod, "_splice", failing)
    with pytest.raises(RuntimeError, match="boom"):
        cs.causal_scrub(model, dataset(13), hypotheses(model)["slots-features-positions"], seeds=1)
    assert_hooks_clean(model)
    monkeypatch.undo()
    cs.causal_scrub(model, dataset(13), hypotheses(model)["slots-features-positions"], seeds=1)
    assert_hooks_clean(model)


def test_user_hooks_are_refused_and_kept(gpt2):
    def keep(act, hook):
        return None

    gpt2.add_hook("blocks.0.hook_mlp_out", keep)
    try:
        with pytest.raises(ValueError, match="hooks attached at blocks.0.hook_mlp_out"):
            cs.causal_scrub(gpt2, dataset(14), cs.Hypothesis([]))
        assert list(gpt2.list_hooks()) == ["blocks.0.hook_mlp_out"]
        assert gpt2.hook_dict["blocks.0.hook_mlp_out"].fwd_hooks[0].user_hook is keep
    finally:
        gpt2.reset_hooks()
    assert_hooks_clean(gpt2)


def test_split_flag_already_on_is_kept(gpt2):
    gpt2.set_use_split_qkv_input(True)
    try:
        tokens = dataset(15)
        a = cs.causal_scrub(gpt2, tokens, hypotheses(gpt2)["slots-features-positions"], seeds=[0])
        assert gpt2.cfg.use_split_qkv_input is True
    finally:
        gpt2.set_use_split_qkv_input(False)
    b = cs.causal_scrub(gpt2, tokens, hypotheses(gpt2)["slots-features-positions"], seeds=[0])
    np.testing.assert_allclose(a.per_example_scrubbed, b.per_example_scrubbed, rtol=1e-5, atol=1e-5)
