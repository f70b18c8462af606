"""glassbox.patching vs transformer_lens.patching on identical weights.

Models: a GPT-2 (2 layers, 3 heads, d_head 12, scale_attn_by_inverse_layer_idx) and a Llama
with grouped-query attention (2 layers, 4 query / 2 key-value heads, RMSNorm, RoPE, SwiGLU), both
with random weights, built by the shared fixtures; TransformerLens loads the very same weights.
Prompts: batch 2, 4 tokens; the corrupted prompt differs from the clean one at position 2 only,
so positions 0-1 exercise glassbox's "patch changes nothing" shortcut and 2-3 real patches.
Metric: a logit difference at the last position (values of order 0.1-1).
Each TransformerLens sweep is computed once per session; the reference for a ``*_every`` function
is TransformerLens's own ``*_every`` code run over those sweeps (its stacking, zero-padding of k/v
and pattern transposition), so the TL side stays within ~700 forward passes.

Tolerance: |glassbox - reference| <= ATOL + RTOL * max|reference| with ATOL = 1e-5, RTOL = 1e-4
(float32 through 2 layers; observed differences are ~1e-6). The same bound holds between
glassbox's batched path and its own TransformerLens-style per-index loop (``fast_path=False``).
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest

import helpers_llama as hl
import helpers_models as hm
from helpers_models import to_np

torch = pytest.importorskip("torch")
tlp = pytest.importorskip("transformer_lens.patching")

import glassbox.patching as gp  # noqa: E402
from glassbox.patching_batched import model_has_hooks  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)
logging.getLogger().setLevel(logging.ERROR)

ATOL, RTOL = 1e-5, 1e-4
B, P, DIFF_POS = 2, 4, 2
LLAMA = hl.spec("patch-llama-gqa", hidden_size=48, num_attention_heads=4, num_key_value_heads=2,
                num_hidden_layers=2, intermediate_size=80, vocab_size=97, seed=11)

SWEEPS = [
    "get_act_patch_resid_pre", "get_act_patch_resid_mid", "get_act_patch_attn_out", "get_act_patch_mlp_out",
    "get_act_patch_attn_head_out_by_pos", "get_act_patch_attn_head_q_by_pos",
    "get_act_patch_attn_head_k_by_pos", "get_act_patch_attn_head_v_by_pos",
    "get_act_patch_attn_head_pattern_by_pos", "get_act_patch_attn_head_pattern_dest_src_pos",
    "get_act_patch_attn_head_out_all_pos", "get_act_patch_attn_head_q_all_pos",
    "get_act_patch_attn_head_k_all_pos", "get_act_patch_attn_head_v_all_pos",
    "get_act_patch_attn_head_pattern_all_pos",
    "get_act_patch_block_every", "get_act_patch_attn_head_all_pos_every", "get_act_patch_attn_head_by_pos_every",
]
# The most expensive TL sweep (one forward per pattern entry) is compared with TL on GPT-2 only;
# on the Llama it is compared with glassbox's per-index loop (it involves no k/v heads).
TL_GPT2_ONLY = ("get_act_patch_attn_head_pattern_dest_src_pos",)
EVERY_PARTS = {
    "get_act_patch_block_every": ("get_act_patch_resid_pre", "get_act_patch_attn_out", "get_act_patch_mlp_out"),
    "get_act_patch_attn_head_all_pos_every": tuple(f"get_act_patch_attn_head_{a}_all_pos"
                                                   for a in ("out", "q", "k", "v", "pattern")),
    "get_act_patch_attn_head_by_pos_every": tuple(f"get_act_patch_attn_head_{a}_by_pos"
                                                  for a in ("out", "q", "k", "v", "pattern")),
}


def metric(logits):
    """Logit difference (token 5 minus token 7) at the last position, batch mean (TL-style)."""
    return logits[:, -1, 5].mean() - logits[:, -1, 7].mean()


def assert_close(got, ref, what: str) -> None:
    g, r = to_np(got).astype(np.float64), to_np(ref).astype(np.float64)
    assert g.shape == r.shape, f"{what}: shape {g.shape} != reference {r.shape}"
    tol = ATOL + RTOL * float(np.abs(r).max(initial=0.0))
    err = float(np.abs(g - r).max(initial=0.0))
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:.3g}"


class Pair:
    """One model family: glassbox and TL models on the same weights, prompts, caches."""

    def __init__(self, name, gb, tl, vocab):
        self.name, self.gb, self.tl = name, gb, tl
        rng = np.random.default_rng(7)
        clean = rng.integers(0, vocab - 1, size=(B, P))
        corr = clean.copy()
        corr[:, DIFF_POS] = (clean[:, DIFF_POS] + 1 + rng.integers(0, vocab - 2, size=B)) % (vocab - 1)
        self.clean, self.corr = torch.tensor(clean), torch.tensor(corr)
        _, self.gb_cache = gb.run_with_cache(self.clean)
        _, self.tl_cache = tl.run_with_cache(self.clean)
        self._tl_results = {}

    def tl_result(self, fname):
        if fname not in self._tl_results:
            parts = EVERY_PARTS.get(fname, ())
            for part in parts:
                self.tl_result(part)
            saved = {part: getattr(tlp, part) for part in parts}

            def cached(part):
                def sweep(model, tokens, cache, m):
                    assert model is self.tl and tokens is self.corr and cache is self.tl_cache and m is metric
                    return self._tl_results[part].clone()
                return sweep

            try:
                for part in parts:  # TL's *_every looks its sweeps up as module globals
                    setattr(tlp, part, cached(part))
                with torch.no_grad():
                    self._tl_results[fname] = getattr(tlp, fname)(self.tl, self.corr, self.tl_cache, metric)
            finally:
                for part, fn in saved.items():
                    setattr(tlp, part, fn)
        return self._tl_results[fname]

    def gb_run(self, fname, **kw):
        return getattr(gp, fname)(self.gb, self.corr, self.gb_cache, metric, **kw)


@pytest.fixture(scope="session")
def gpt2_pair(zoo):
    spec = hm.GPT2_ODD2
    return Pair("gpt2", zoo.gb(spec), zoo.tl(spec), spec.vocab_size)


@pytest.fixture(scope="session")
def llama_pair(fixture_root):
    from glassbox import HookedTransformer

    root = fixture_root / "llama"
    root.mkdir(parents=True, exist_ok=True)
    folder = hl.save_folder(LLAMA, root / LLAMA.key())
    tl = hl.load_tl(hl.load_hf(folder), processed=True)
    return Pair("llama-gqa", HookedTransformer.from_pretrained(str(folder)), tl, LLAMA.vocab_size)


@pytest.fixture(params=["gpt2", "llama-gqa"])
def pair(request, gpt2_pair, llama_pair):
    return gpt2_pair if request.param == "gpt2" else llama_pair


# ---------------------------------------------------------------------------------------------
# every public sweep equals TransformerLens's; the batched path equals the per-index loop
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fname", SWEEPS)
def test_sweep_matches_transformer_lens(pair, fname):
    got = pair.gb_run(fname)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    if not (pair.name == "llama-gqa" and fname in TL_GPT2_ONLY):
        ref = pair.tl_result(fname)
        assert_close(got, ref, f"{pair.name} {fname}")
        assert float(ref.abs().max()) > 1e-3, "degenerate reference: the patches have no effect"
    if "every" not in fname:
        slow = pair.gb_run(fname, fast_path=False)
        assert_close(got, slow, f"{pair.name} {fname}: batched vs per-index loop")
    assert not model_has_hooks(pair.gb)


def test_output_shapes_and_gqa_heads(llama_pair):
    p = llama_pair
    L, H, G = 2, LLAMA.H, LLAMA.G
    shapes = {
        "get_act_patch_resid_pre": (L, P), "get_act_patch_attn_head_out_by_pos": (L, P, H),
        "get_act_patch_attn_head_k_by_pos": (L, P, G), "get_act_patch_attn_head_v_all_pos": (L, G),
        "get_act_patch_attn_head_q_all_pos": (L, H), "get_act_patch_attn_head_pattern_by_pos": (L, H, P),
        "get_act_patch_attn_head_pattern_dest_src_pos": (L, H, P, P),
        "get_act_patch_attn_head_all_pos_every": (5, L, H), "get_act_patch_attn_head_by_pos_every": (5, L, P, H),
        "get_act_patch_block_every": (3, L, P),
    }
    for fname, shape in shapes.items():
        assert tuple(p.gb_run(fname).shape) == shape, fname
    every = p.gb_run("get_act_patch_attn_head_all_pos_every")
    assert torch.all(every[2:4, :, G:] == 0), "k/v rows are zero-padded from n_key_value_heads to n_heads"
    assert torch.all(every[2, :, :G] == p.gb_run("get_act_patch_attn_head_k_all_pos"))


def test_metric_sees_each_variants_logits(pair):
    """The metric is called once per patch, in index order, on exactly TL's patched logits."""
    seen_gb, seen_tl = [], []

    def rec(store):
        def m(logits):
            store.append(to_np(logits).copy())
            out = metric(logits)
            logits[...] = 0.0  # a metric that scribbles on its input must not affect other patches
            return out
        return m

    got = gp.get_act_patch_resid_mid(pair.gb, pair.corr, pair.gb_cache, rec(seen_gb), max_variants_per_run=1)
    with torch.no_grad():
        ref = tlp.get_act_patch_resid_mid(pair.tl, pair.corr, pair.tl_cache, rec(seen_tl))
    assert len(seen_gb) == len(seen_tl) == ref.numel()
    for i, (a, b) in enumerate(zip(seen_gb, seen_tl)):
        assert a.shape == (B, P, pair.gb.cfg.d_vocab_out)
        assert_close(a, b, f"{pair.name} logits of patch {i}")
    assert_close(got, ref, pair.name)


@pytest.mark.parametrize("opts", [dict(max_variants_per_run=1), dict(max_variants_per_run=3),
                                  dict(memory_budget=1), dict(memory_budget=2**40)])
def test_chunking_does_not_change_results(gpt2_pair, opts):
    p = gpt2_pair
    for fname in ("get_act_patch_resid_pre", "get_act_patch_attn_head_pattern_by_pos"):
        assert_close(p.gb_run(fname, **opts), p.gb_run(fname), f"{fname} {opts}")


def test_memory_budget_from_environment(gpt2_pair, monkeypatch):
    p = gpt2_pair
    ref = p.gb_run("get_act_patch_resid_pre")
    monkeypatch.setenv("GLASSBOX_PATCHING_MEMORY_MB", "0.001")
    assert_close(p.gb_run("get_act_patch_resid_pre"), ref, "1 kB budget")
    monkeypatch.setenv("GLASSBOX_PATCHING_MEMORY_MB", "lots")
    with pytest.raises(ValueError, match="GLASSBOX_PATCHING_MEMORY_MB"):
        p.gb_run("get_act_patch_resid_pre")


def test_batched_runs_start_at_the_patched_layer(gpt2_pair, monkeypatch):
    """resid_pre over 2 layers x 5 positions: one reference run plus one batched run per layer
    (starting at that layer), not 10 full forwards; positions before the corruption are reused."""
    p, gb = gpt2_pair, gpt2_pair.gb
    calls = []
    real = type(gb)._run_engine

    def spy(self, tokens, residual, mask, positions, start, stop, *a, **kw):
        calls.append((start, (residual if residual is not None else tokens).shape[0]))
        return real(self, tokens, residual, mask, positions, start, stop, *a, **kw)

    monkeypatch.setattr(type(gb), "_run_engine", spy)
    p.gb_run("get_act_patch_resid_pre")
    # layer 0: only the corrupted position differs; layer 1: every position from it on
    assert calls == [(0, B), (0, 1 * B), (1, (P - DIFF_POS) * B)], calls
    calls.clear()
    p.gb_run("get_act_patch_mlp_out")
    assert [c[0] for c in calls] == [0, 0, 1], calls
    calls.clear()
    p.gb_run("get_act_patch_resid_pre", fast_path=False)
    assert calls == [(0, B)] * (2 * P), "fast_path=False is TL's loop: one full forward per patch"


# ---------------------------------------------------------------------------------------------
# the generic API
# ---------------------------------------------------------------------------------------------
def test_custom_setter_runs_tl_loop_from_the_layer(pair):
    """A setter glassbox does not know is called once per index with the original batch."""
    shapes = []

    def setter(corrupted, index, clean):
        shapes.append(tuple(corrupted.shape))
        assert isinstance(corrupted, torch.Tensor) and isinstance(clean, torch.Tensor)
        corrupted[:, index[1], index[2]] = clean[:, index[1], index[2]]
        return corrupted

    got = gp.generic_activation_patch(pair.gb, pair.corr, pair.gb_cache, metric, setter, "z",
                                      index_axis_names=("layer", "pos", "head"))
    H = pair.gb.cfg.n_heads
    assert len(shapes) == 2 * P * H and set(s[0] for s in shapes) == {B}
    assert_close(got, pair.tl_result("get_act_patch_attn_head_out_by_pos"), f"{pair.name} custom setter")


def test_transformer_lens_setters_are_recognised(gpt2_pair, monkeypatch):
    """A script passing transformer_lens.patching's own setter still gets the batched path."""
    p, gb = gpt2_pair, gpt2_pair.gb
    n_runs = []
    real = type(gb)._run_engine
    monkeypatch.setattr(type(gb), "_run_engine", lambda self, *a, **kw: n_runs.append(1) or real(self, *a, **kw))
    got = gp.generic_activation_patch(gb, p.corr, p.gb_cache, metric, tlp.layer_head_pos_pattern_patch_setter,
                                      "pattern", index_axis_names=("layer", "head_index", "dest_pos"))
    assert len(n_runs) == 3, "one reference run and one batched run per layer"
    assert_close(got, p.tl_result("get_act_patch_attn_head_pattern_by_pos"), "TL setter")


def test_index_df_and_return_index_df(pair):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"layer": [1, 0, 1, 1, 0], "pos": [3, 3, -1, 0, 2], "head": [1, 0, 0, 1, 1]})
    got, got_df = gp.generic_activation_patch(pair.gb, pair.corr, pair.gb_cache, metric,
                                              gp.layer_pos_head_vector_patch_setter, "v",
                                              index_df=df, return_index_df=True)
    assert got_df is df and tuple(got.shape) == (len(df),)
    with torch.no_grad():
        ref = tlp.generic_activation_patch(pair.tl, pair.corr, pair.tl_cache, metric,
                                           tlp.layer_pos_head_vector_patch_setter, "v", index_df=df)
    assert_close(got, ref, f"{pair.name} index_df")
    # the specialised functions take index_df alone (TL needs index_axis_names=None as well)
    assert_close(gp.get_act_patch_attn_head_v_by_pos(pair.gb, pair.corr, pair.gb_cache, metric, index_df=df),
                 ref, "index_df through get_act_patch_attn_head_v_by_pos")
    assert_close(gp.get_act_patch_attn_head_v_by_pos(pair.gb, pair.corr, pair.gb_cache, metric, index_df=df,
                                                     index_axis_names=None), ref, "index_axis_names=None")
    _, full_df = gp.get_act_patch_resid_pre(pair.gb, pair.corr, pair.gb_cache, metric, return_index_df=True)
    _, tl_df = tlp.get_act_patch_resid_pre(pair.tl, pair.corr, pair.tl_cache, metric, return_index_df=True)
    assert full_df.equals(tl_df)
    assert gp.make_df_from_ranges([2, 3], ["layer", "head"]).equals(tlp.make_df_from_ranges([2, 3], ["layer", "head"]))
    arr = gp.generic_activation_patch(pair.gb, pair.corr, pair.gb_cache, metric,
                                      gp.layer_pos_head_vector_patch_setter, "v", index_df=df.to_numpy())
    assert_close(arr, ref, "index_df as an integer array")


def test_numpy_in_numpy_out(gpt2_pair):
    p = gpt2_pair
    _, np_cache = p.gb.run_with_cache(p.clean.numpy())
    seen = []

    def np_metric(logits):
        seen.append(type(logits))
        return logits[:, -1, 5].mean() - logits[:, -1, 7].mean()

    got = gp.get_act_patch_attn_head_out_by_pos(p.gb, p.corr.numpy(), np_cache, np_metric)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert set(seen) == {np.ndarray}
    assert_close(got, p.tl_result("get_act_patch_attn_head_out_by_pos"), "numpy")
    every = gp.get_act_patch_block_every(p.gb, p.corr.numpy(), np_cache, np_metric)
    assert isinstance(every, np.ndarray) and every.shape == (3, 2, P)
    # torch tokens with a NumPy cache, and the reverse
    assert_close(gp.get_act_patch_resid_pre(p.gb, p.corr, np_cache, metric),
                 p.tl_result("get_act_patch_resid_pre"), "torch tokens, numpy cache")
    assert_close(gp.get_act_patch_resid_pre(p.gb, p.corr.numpy(), p.gb_cache, np_metric, fast_path=False),
                 p.tl_result("get_act_patch_resid_pre"), "numpy tokens, torch cache, slow path")


def test_clean_batch_of_one_broadcasts(gpt2_pair):
    """As in TL, a clean cache of batch 1 is broadcast over the corrupted batch."""
    p = gpt2_pair
    _, gb_c1 = p.gb.run_with_cache(p.clean[:1])
    _, tl_c1 = p.tl.run_with_cache(p.clean[:1])
    got = gp.get_act_patch_attn_out(p.gb, p.corr, gb_c1, metric)
    with torch.no_grad():
        ref = tlp.get_act_patch_attn_out(p.tl, p.corr, tl_c1, metric)
    assert_close(got, ref, "clean batch 1")
    assert_close(got, gp.get_act_patch_attn_out(p.gb, p.corr, gb_c1, metric, fast_path=False), "slow")


def test_left_padding_uses_the_models_attention_mask(zoo):
    spec = hm.GPT2_ODD2
    gb = zoo.gb(spec, default_padding_side="left")
    tl = zoo.tl(spec, padding_side="left")
    pad = spec.vocab_size - 1
    clean = torch.tensor([[pad, pad, 11, 40, 7, 90], [3, 14, 15, 92, 65, 35]])
    corr = clean.clone()
    corr[:, 3] = torch.tensor([41, 93])
    _, gc = gb.run_with_cache(clean)
    _, tc = tl.run_with_cache(clean)
    for fname in ("get_act_patch_resid_pre", "get_act_patch_attn_head_out_by_pos"):
        with torch.no_grad():
            ref = getattr(tlp, fname)(tl, corr, tc, metric)
        got = getattr(gp, fname)(gb, corr, gc, metric)
        assert_close(got, ref, f"left padding {fname}")


def test_model_with_hooks_gets_tls_loop(gpt2_pair):
    """Hooks already on the model keep working (full forwards, as TransformerLens runs them)."""
    p = gpt2_pair

    def halve(z, hook):
        z[:, :, 1] = z[:, :, 1] * 0.5
        return z

    name = "blocks.0.attn.hook_z"
    p.gb.add_hook(name, halve)
    p.tl.add_hook(name, halve)
    try:
        got = gp.get_act_patch_resid_mid(p.gb, p.corr, p.gb_cache, metric)
        with torch.no_grad():
            ref = tlp.get_act_patch_resid_mid(p.tl, p.corr, p.tl_cache, metric)
        assert_close(got, ref, "with a model hook")
        assert len(p.gb.hook_dict[name].fwd_hooks) == 1
    finally:
        p.gb.reset_hooks()
        p.tl.reset_hooks()


def test_setters_match_transformer_lens():
    rng = np.random.default_rng(0)
    vec = lambda: torch.tensor(rng.normal(size=(2, 5, 3, 4)), dtype=torch.float32)  # noqa: E731
    pat = lambda: torch.tensor(rng.normal(size=(2, 3, 5, 5)), dtype=torch.float32)  # noqa: E731
    cases = [("layer_pos_patch_setter", vec, [0, 3]), ("layer_pos_head_vector_patch_setter", vec, [1, 2, 1]),
             ("layer_head_vector_patch_setter", vec, [0, 2]), ("layer_head_pattern_patch_setter", pat, [1, 1]),
             ("layer_head_pos_pattern_patch_setter", pat, [0, 2, 4]),
             ("layer_head_dest_src_pos_pattern_patch_setter", pat, [1, 0, 4, 2])]
    for name, make, index in cases:
        corrupted, clean = make(), make()
        ref = getattr(tlp, name)(corrupted.clone(), index, clean)
        got = getattr(gp, name)(corrupted.clone(), index, clean)
        assert torch.equal(got, ref), name
        got_np = getattr(gp, name)(corrupted.numpy().copy(), index, clean.numpy())
        assert np.array_equal(got_np, ref.numpy()), name
        with pytest.raises(ValueError, match=name):
            getattr(gp, name)(corrupted, index + [0], clean)


def test_progress_bar(gpt2_pair, capsys):
    gpt2_pair.gb_run("get_act_patch_resid_pre")
    err = capsys.readouterr().err
    assert f"{2 * P}/{2 * P}" in err, err


# ---------------------------------------------------------------------------------------------
# bad input: a clear error, the model as it was
# ---------------------------------------------------------------------------------------------
def test_bad_input(gpt2_pair):
    p = gpt2_pair
    gb, corr, cache = p.gb, p.corr, p.gb_cache
    before = to_np(gb(corr)).copy()
    _, small_cache = gb.run_with_cache(p.clean, names_filter=lambda n: n.endswith("hook_resid_pre"))
    _, b3_cache = gb.run_with_cache(torch.cat([p.clean, p.clean[:1]]))
    G = gp.generic_activation_patch
    setter = gp.layer_pos_patch_setter
    cases = [
        (ValueError, "clean_cache has no entry 'blocks.0.hook_attn_out'",
         lambda: gp.get_act_patch_attn_out(gb, corr, small_cache, metric)),
        (ValueError, rf"shape \(3, {P}, 36\).*corrupted activation \(2, {P}, 36\)",
         lambda: gp.get_act_patch_resid_pre(gb, corr, b3_cache, metric)),
        (ValueError, "unknown axis name", lambda: G(gb, corr, cache, metric, setter, "resid_pre", ("layer", "posn"))),
        (TypeError, "sequence of axis names", lambda: G(gb, corr, cache, metric, setter, "resid_pre", "layer")),
        (ValueError, "needs index_axis_names or index_df", lambda: G(gb, corr, cache, metric, setter, "resid_pre")),
        (ValueError, "not both", lambda: G(gb, corr, cache, metric, setter, "resid_pre", ("layer", "pos"),
                                           np.array([[0, 1]]))),
        (ValueError, f"index {P} .* out of range for axis 1 of 'blocks.1.hook_resid_pre'",
         lambda: G(gb, corr, cache, metric, setter, "resid_pre", index_df=np.array([[0, 1], [1, P]]))),
        (ValueError, "layer index 2", lambda: G(gb, corr, cache, metric, setter, "resid_pre",
                                                index_df=np.array([[2, 1]]))),
        (ValueError, "needs index rows of 2 entries", lambda: G(gb, corr, cache, metric, setter, "resid_pre",
                                                                index_df=np.array([[0, 1, 1]]))),
        (ValueError, "integer indices", lambda: G(gb, corr, cache, metric, setter, "resid_pre",
                                                  index_df=np.array([[0, 1.5]]))),
        (ValueError, "which the model does not have", lambda: G(gb, corr, cache, metric, setter, "resid_prex",
                                                                ("layer", "pos"))),
        (TypeError, "patching_metric must be callable", lambda: gp.get_act_patch_resid_pre(gb, corr, cache, 3.0)),
        (TypeError, "patch_setter must be callable", lambda: G(gb, corr, cache, metric, None, "z", ("layer",))),
        (TypeError, "HookedTransformer", lambda: gp.get_act_patch_resid_pre(p.tl, corr, cache, metric)),
        (TypeError, "model.to_tokens", lambda: gp.get_act_patch_resid_pre(gb, "Hello there", cache, metric)),
        (ValueError, "token id", lambda: gp.get_act_patch_resid_pre(gb, corr + 1000, cache, metric)),
        (ValueError, "must return a scalar", lambda: gp.get_act_patch_resid_pre(gb, corr, cache, lambda x: x[:, -1, :2])),
        (TypeError, "must return a number", lambda: gp.get_act_patch_resid_pre(gb, corr, cache, lambda x: "good")),
        (ValueError, "memory_budget", lambda: gp.get_act_patch_resid_pre(gb, corr, cache, metric, memory_budget=0)),
        (ValueError, "max_variants_per_run", lambda: gp.get_act_patch_resid_pre(gb, corr, cache, metric,
                                                                                max_variants_per_run=-2)),
    ]
    for exc, pattern, call in cases:
        with pytest.raises(exc, match=pattern):
            call()
        assert not model_has_hooks(gb), pattern
    with pytest.raises(ZeroDivisionError):  # an error inside the metric reaches the caller unchanged
        gp.get_act_patch_attn_head_out_by_pos(gb, corr, cache, lambda x: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        gp.generic_activation_patch(gb, corr, cache, metric, lambda c, i, cl: 1 / 0, "z", ("layer", "head"))
    assert not model_has_hooks(gb)
    assert np.array_equal(to_np(gb(corr)), before), "the model changed"
