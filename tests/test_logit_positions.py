"""Logits of selected positions only: the engine's ``logit_positions`` and patching's
``logit_positions=`` option.

Models: the GPT-2 and Llama-GQA pairs of ``tests/test_patching.py`` (random weights, batch 2,
4 tokens, corrupted at position 2; TransformerLens loads the same weights).

* ``model._forward(x, logit_positions=pos)`` returns logits [B, k, d_vocab_out] equal to the full
  run's logits gathered at ``pos`` (from tokens and from a residual with ``start_at_layer``);
  tolerance ATOL 1e-5 + RTOL 1e-5 * max|logits| (the unembedding GEMM may block differently for
  another row count; observed: bit-identical or ~1e-7).
* Patching with ``logit_positions=-1`` and a metric reading ``logits[:, 0]`` equals
  TransformerLens's sweep with the same metric reading ``logits[:, -1]`` (the tolerance of
  test_patching.py), on the batched path, the per-index loop of a custom setter, ``fast_path=False``
  and with a hook on the model; the metric sees [B, k, d_vocab_out] on every path.
* Bad values are ``ValueError``/``TypeError`` naming the argument; the model is unchanged after.
"""
from __future__ import annotations

import numpy as np
import pytest

from helpers_models import to_np

torch = pytest.importorskip("torch")
pytest.importorskip("transformer_lens.patching")

import glassbox.patching as gp  # noqa: E402
from test_patching import B, P, assert_close, gpt2_pair, llama_pair, pair  # noqa: E402,F401

SWEEPS = ["get_act_patch_resid_pre", "get_act_patch_attn_head_out_all_pos", "get_act_patch_mlp_out",
          "get_act_patch_attn_head_pattern_by_pos"]


def metric_first(logits):
    """The test_patching metric (token 5 minus token 7, batch mean) on logits [B, k, V] at k=0."""
    return logits[:, 0, 5].mean() - logits[:, 0, 7].mean()


def tl_metric(logits):
    return logits[:, -1, 5].mean() - logits[:, -1, 7].mean()


def gathered(full, pos):
    full = to_np(full)
    return full[np.arange(full.shape[0])[:, None], pos]


@pytest.mark.parametrize("positions", [-1, [3, 1], [[0, 3, 3], [2, 2, 1]], [[1, -1]]])
def test_engine_logits_at_positions_equal_the_full_run(pair, positions):
    gb = pair.gb
    full = gb(pair.corr)
    got = gb._forward(pair.corr, logit_positions=positions)
    pos = np.asarray(positions)
    pos = np.full((B, 1), pos) if pos.ndim == 0 else (pos[:, None] if pos.ndim == 1 else np.broadcast_to(pos, (B, pos.shape[1])))
    pos = np.where(pos < 0, pos + P, pos)
    assert isinstance(got, torch.Tensor) and tuple(got.shape) == (B, pos.shape[1], gb.cfg.d_vocab_out)
    ref = gathered(full, pos)
    tol = 1e-5 + 1e-5 * float(np.abs(ref).max())
    assert np.abs(to_np(got) - ref).max() <= tol

    # from a residual (start_at_layer), as the patching sweeps run
    _, cache = gb.run_with_cache(pair.corr, names_filter="blocks.1.hook_resid_pre")
    resid = to_np(cache["blocks.1.hook_resid_pre"])
    got = gb._forward(resid, start_at_layer=1, logit_positions=positions)
    assert isinstance(got, np.ndarray) and np.abs(got - ref).max() <= tol


def test_engine_logit_positions_bad_input(gpt2_pair):
    gb, x = gpt2_pair.gb, gpt2_pair.corr
    ref = to_np(gb(x)).copy()
    for bad, err, match in [(P, ValueError, "out of range"), (-P - 1, ValueError, "out of range"),
                            ([0, 1, 2], ValueError, "one position per sequence"),
                            (np.zeros((3, 1), np.int64), ValueError, r"\[batch=2\]"),
                            (np.zeros((2, 1, 1), np.int64), ValueError, "shape"),
                            ([0.5, 1.0], TypeError, "integers"), (True, TypeError, "logit_positions"),
                            ("last", TypeError, "integers")]:
        with pytest.raises(err, match=match):
            gb._forward(x, logit_positions=bad)
    with pytest.raises(ValueError, match="return_type='logits'"):
        gb._forward(x, return_type="loss", logit_positions=-1)
    with pytest.raises(ValueError, match="stop_at_layer"):
        gb._forward(x, stop_at_layer=1, logit_positions=-1)
    gb.add_hook("unembed.hook_out", lambda t, hook: t)
    try:
        with pytest.raises(ValueError, match="unembed.hook_out"):
            gb._forward(x, logit_positions=-1)
    finally:
        gb.reset_hooks()
    # the C entry point checks on its own
    engine = gb._get_engine()
    tok = to_np(x).astype(np.int64)
    with pytest.raises(ValueError, match="out of range"):
        engine.forward(tok, logit_positions=np.full((B, 1), P, np.int64))
    with pytest.raises(ValueError, match="shape"):
        engine.forward(tok, logit_positions=np.zeros((B + 1, 1), np.int64))
    with pytest.raises(ValueError, match="unembed"):
        engine.forward(tok, unembed=False, logit_positions=np.zeros((B, 1), np.int64))
    assert engine.forward(tok, logit_positions=np.zeros((B, 0), np.int64)).shape == (B, 0, gb.cfg.d_vocab_out)
    np.testing.assert_array_equal(to_np(gb(x)), ref)  # the model is unchanged


@pytest.mark.parametrize("fname", SWEEPS)
def test_patching_with_logit_positions_matches_transformer_lens(pair, fname):
    seen = []

    def m(logits):
        seen.append(tuple(logits.shape))
        return metric_first(logits)

    got = getattr(gp, fname)(pair.gb, pair.corr, pair.gb_cache, m, logit_positions=-1)
    assert set(seen) == {(B, 1, pair.gb.cfg.d_vocab_out)}
    with torch.no_grad():
        ref = getattr(gp_tl(), fname)(pair.tl, pair.corr, pair.tl_cache, tl_metric)
    assert_close(got, ref, f"{pair.name} {fname} logit_positions=-1")


def gp_tl():
    import transformer_lens.patching as tlp

    return tlp


def test_patching_per_prompt_positions_and_every_path(gpt2_pair):
    """One position per prompt (as an IOI batch's end positions), on every sweep path."""
    p = gpt2_pair
    ends = np.array([P - 1, P - 2])

    def full_metric(logits):
        lg = to_np(logits)
        return float(np.mean(lg[np.arange(B), ends, 5] - lg[np.arange(B), ends, 7]))

    def sel_metric(logits):
        assert tuple(logits.shape) == (B, 1, p.gb.cfg.d_vocab_out)
        lg = to_np(logits)
        return float(np.mean(lg[:, 0, 5] - lg[:, 0, 7]))

    ref = gp.get_act_patch_resid_pre(p.gb, p.corr, p.gb_cache, full_metric)
    for opts in (dict(), dict(fast_path=False), dict(max_variants_per_run=1)):
        got = gp.get_act_patch_resid_pre(p.gb, p.corr, p.gb_cache, sel_metric, logit_positions=ends, **opts)
        assert_close(got, ref, f"per-prompt positions {opts}")

    def setter(corrupted, index, clean):  # unknown to glassbox: TL's loop from the layer
        corrupted[:, index[1]] = clean[:, index[1]]
        return corrupted

    got = gp.generic_activation_patch(p.gb, p.corr, p.gb_cache, sel_metric, setter, "resid_pre",
                                      index_axis_names=("layer", "pos"), logit_positions=ends)
    assert_close(got, ref, "custom setter")
    p.gb.add_hook("blocks.0.hook_resid_post", lambda t, hook: t)  # a model hook: TL's loop verbatim
    try:
        got = gp.get_act_patch_resid_pre(p.gb, p.corr, p.gb_cache, sel_metric, logit_positions=ends)
    finally:
        p.gb.reset_hooks()
    assert_close(got, ref, "model with a hook")
    with pytest.raises(ValueError, match="logit_positions"):
        gp.get_act_patch_resid_pre(p.gb, p.corr, p.gb_cache, sel_metric, logit_positions=[0, 1, 2])


def test_batched_runs_unembed_only_the_selected_positions(gpt2_pair, monkeypatch):
    p, gb = gpt2_pair, gpt2_pair.gb
    seen = []
    real = type(gb)._run_engine

    def spy(self, *a, **kw):
        out = real(self, *a, **kw)
        seen.append((kw.get("logit_positions") is not None, tuple(out.shape)))
        return out

    monkeypatch.setattr(type(gb), "_run_engine", spy)
    gp.get_act_patch_attn_head_out_all_pos(gb, p.corr, p.gb_cache, metric_first, logit_positions=-1)
    # the corrupted reference run (full logits, also caching), then one run per layer of [n*B, 1, V]
    assert seen[0] == (False, (B, P, gb.cfg.d_vocab_out))
    assert len(seen) == 1 + gb.cfg.n_layers
    for selected, shape in seen[1:]:
        assert selected and shape[1:] == (1, gb.cfg.d_vocab_out) and shape[0] % B == 0
