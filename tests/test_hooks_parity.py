"""Hook semantics vs TransformerLens: the same hook functions, run on glassbox and on TL with
identical weights, give the same logits (atol 1e-4, fp32) and are called the same number of times.

Hook functions are written once and work on both array types (numpy for glassbox fed numpy
tokens, torch for TL), as a TL script's hooks would.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest

import helpers_models as hm
from helpers_models import GPT2_ODD, GPT2_REAL, max_abs_diff, to_np

torch = pytest.importorskip("torch")

ATOL = 1e-4
SPEC = GPT2_ODD


def assert_close(got, ref, what, atol=ATOL):
    g, r = to_np(got), to_np(ref)
    assert g.shape == r.shape, f"{what}: shape {g.shape} != {r.shape}"
    err = max_abs_diff(g, r)
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol:g}"
    return err


@pytest.fixture(scope="module")
def models(zoo):
    gb, tl = zoo.gb(SPEC), zoo.tl(SPEC)
    yield gb, tl
    gb.reset_hooks(including_permanent=True)
    tl.reset_hooks(including_permanent=True)


@pytest.fixture
def toks():
    return hm.random_tokens(SPEC.vocab_size, (2, 16), seed=21)


def both(models, toks, fwd_hooks, **kw):
    """Run the same hooks on both models: (glassbox logits, TL logits)."""
    gb, tl = models
    out = gb.run_with_hooks(toks, fwd_hooks=fwd_hooks, **kw)
    with torch.no_grad():
        ref = tl.run_with_hooks(torch.as_tensor(toks), fwd_hooks=fwd_hooks, **kw)
    return out, ref


def plain(models, toks):
    gb, tl = models
    with torch.no_grad():
        return to_np(gb(toks)).copy(), tl(torch.as_tensor(toks)).numpy()


def test_zero_ablate_head_via_hook_z(models, toks):
    def ablate(z, hook, head):
        z[:, :, head, :] = 0.0

    base, _ = plain(models, toks)
    for layer, head in [(0, 0), (1, 3), (2, 4)]:
        out, ref = both(models, toks, [(f"blocks.{layer}.attn.hook_z", partial(ablate, head=head))])
        assert_close(out, ref, f"ablate L{layer}H{head}")
        assert max_abs_diff(out, base) > 1e-3, "in-place ablation had no effect"
    # run_with_hooks must not leave hooks behind
    after, _ = plain(models, toks)
    assert_close(after, base, "after run_with_hooks", atol=1e-6)


def test_activation_patching_resid(models, toks):
    """Patch one residual position from a clean cache into a corrupted run (TL activation patching)."""
    gb, tl = models
    clean, corrupt = toks[:1], toks[1:2]
    _, gb_cache = gb.run_with_cache(clean)
    with torch.no_grad():
        _, tl_cache = tl.run_with_cache(torch.as_tensor(clean))

    for layer, pos in [(0, 3), (1, 7), (2, 15)]:
        name = f"blocks.{layer}.hook_resid_pre"

        def patch(resid, hook, pos=pos):
            cache = gb_cache if isinstance(resid, np.ndarray) else tl_cache
            resid[:, pos, :] = cache[hook.name][:, pos, :]
            return resid

        out, ref = both(models, corrupt, [(name, patch)])
        assert_close(out, ref, f"patch {name} pos {pos}")
        # patching every position of resid_pre 0 reproduces the clean run exactly
    def patch_all(resid, hook):
        cache = gb_cache if isinstance(resid, np.ndarray) else tl_cache
        resid[:] = cache[hook.name]
    out, _ = both(models, corrupt, [("blocks.0.hook_resid_pre", patch_all)])
    assert_close(out, gb(clean), "full patch == clean run", atol=1e-5)


def test_hook_returning_new_array(models, toks):
    def scale(act, hook):
        return act * 1.7 + 0.05  # a new array/tensor of the same shape

    def tanh(act, hook):
        return np.tanh(act) if isinstance(act, np.ndarray) else torch.tanh(act)

    for name, fn in [("blocks.1.mlp.hook_post", scale), ("blocks.0.hook_attn_out", tanh),
                     ("ln_final.hook_normalized", scale), ("hook_embed", scale),
                     ("blocks.2.attn.hook_v", tanh)]:
        out, ref = both(models, toks, [(name, fn)])
        assert_close(out, ref, f"returning hook at {name}")


def test_returned_list_or_float64_is_accepted(models, toks):
    """A returned array of another float dtype (float64) is converted, as torch would broadcast."""
    gb, _ = models

    def f64(act, hook):
        return np.asarray(act, dtype=np.float64) * 2.0

    def f32(act, hook):
        return act * 2.0

    a = gb.run_with_hooks(toks, fwd_hooks=[("blocks.0.hook_mlp_out", f64)])
    b = gb.run_with_hooks(toks, fwd_hooks=[("blocks.0.hook_mlp_out", f32)])
    assert_close(a, b, "float64 return vs float32 return", atol=1e-5)


def test_edit_pattern(models, toks):
    """Overwrite head 2's pattern in layer 1 with attention to the first token only."""
    def bos_only(pattern, hook):
        pattern[:, 2] = 0.0
        pattern[:, 2, :, 0] = 1.0

    def uniform(pattern, hook):
        P = pattern.shape[-1]
        tril = np.tril(np.ones((P, P), dtype=np.float32))
        tril = tril / tril.sum(-1, keepdims=True)
        pattern[:] = tril if isinstance(pattern, np.ndarray) else torch.as_tensor(tril)

    for fn in [bos_only, uniform]:
        out, ref = both(models, toks, [("blocks.1.attn.hook_pattern", fn)])
        assert_close(out, ref, f"pattern edit {fn.__name__}")


def test_edit_attn_scores(models, toks):
    def boost_diag(scores, hook):
        P = scores.shape[-1]
        idx = np.arange(P)
        scores[:, :, idx, idx] += 2.0

    out, ref = both(models, toks, [("blocks.0.attn.hook_attn_scores", boost_diag)])
    assert_close(out, ref, "attn_scores edit")


def test_ln1_hook_scale_call_counts_and_edit(models, toks):
    """ln1.hook_scale fires 3x per block in TL (q, k, v inputs); counts and edited logits match."""
    counts = {"gb": {}, "tl": {}}

    def bump(scale, hook):
        who = "gb" if isinstance(scale, np.ndarray) else "tl"
        counts[who][hook.name] = counts[who].get(hook.name, 0) + 1
        return scale * 1.5

    def is_ln_scale(name):
        return name.endswith("ln1.hook_scale") or name.endswith("ln2.hook_scale") \
            or name == "ln_final.hook_scale"

    out, ref = both(models, toks, [(is_ln_scale, bump)])
    assert counts["gb"] == counts["tl"], f"call counts differ: {counts}"
    assert counts["tl"]["blocks.0.ln1.hook_scale"] == 3  # sanity of the reference
    assert_close(out, ref, "ln scale edit")

    # editing only the k call (second of the three) — call order must match TL's q, k, v order
    seen = {"gb": 0, "tl": 0}

    def only_k(scale, hook):
        who = "gb" if isinstance(scale, np.ndarray) else "tl"
        seen[who] += 1
        if seen[who] % 3 == 2:
            return scale * 3.0

    out, ref = both(models, toks, [("blocks.1.ln1.hook_scale", only_k)])
    assert_close(out, ref, "ln1 scale edit on the k call only")


def test_hook_call_order_matches_tl(models, toks):
    """Hooks on every point fire in TL's order (one predicate hook recording names)."""
    order = {"gb": [], "tl": []}

    def rec(act, hook):
        order["gb" if isinstance(act, np.ndarray) else "tl"].append(hook.name)

    both(models, toks, [(lambda n: True, rec)])
    assert order["gb"] == order["tl"]


def test_hooks_context_manager(models, toks):
    gb, tl = models
    base, _ = plain(models, toks)

    def ablate(z, hook):
        z[:, :, 1] = 0.0

    hooks = [("blocks.0.attn.hook_z", ablate)]
    with gb.hooks(fwd_hooks=hooks) as m:
        assert m is gb
        out = to_np(gb(toks)).copy()
        out2 = to_np(gb(toks)).copy()  # hooks stay for every run inside the block
    with torch.no_grad(), tl.hooks(fwd_hooks=hooks):
        ref = tl(torch.as_tensor(toks))
    assert_close(out, ref, "inside hooks()")
    assert_close(out2, ref, "second run inside hooks()")
    after, _ = plain(models, toks)
    assert_close(after, base, "after leaving hooks()", atol=1e-6)


def test_permanent_and_plain_add_hook(models, toks):
    gb, tl = models
    base, _ = plain(models, toks)

    def ablate0(z, hook):
        z[:, :, 0] = 0.0

    def double_mlp(x, hook):
        return x * 2.0

    try:
        for m in models:
            m.add_hook("blocks.1.attn.hook_z", ablate0, is_permanent=True)
            m.add_hook("blocks.0.hook_mlp_out", double_mlp)
        out, ref = plain(models, toks)
        assert_close(out, ref, "permanent + plain hooks")
        # run_with_hooks adds on top and does not remove hooks added with add_hook
        extra = [("blocks.2.hook_resid_pre", lambda x, hook: x * 0.5)]
        out, ref = both(models, toks, extra)
        assert_close(out, ref, "add_hook + run_with_hooks")
        out, ref = plain(models, toks)
        assert_close(out, ref, "add_hook hooks survive run_with_hooks")
        # reset_hooks() keeps the permanent one only
        for m in models:
            m.reset_hooks()
        out, ref = plain(models, toks)
        assert_close(out, ref, "after reset_hooks(): permanent hook only")
        assert max_abs_diff(out, base) > 1e-3
    finally:
        for m in models:
            m.reset_hooks(including_permanent=True)
    out, _ = plain(models, toks)
    assert_close(out, base, "after reset_hooks(including_permanent=True)", atol=1e-6)


def test_stored_activation_stays_unchanged(models, toks):
    """A hook keeping a reference: after the run the stored arrays still hold the values seen at
    call time, and they equal run_with_cache's values."""
    gb, _ = models
    store, snapshot = {}, {}

    def keep(act, hook):
        store[hook.name] = act
        snapshot[hook.name] = np.array(act, copy=True)

    names = ["blocks.0.hook_resid_pre", "blocks.0.attn.hook_pattern", "blocks.1.attn.hook_q",
             "blocks.1.mlp.hook_post", "blocks.2.hook_resid_post", "ln_final.hook_normalized"]
    gb.run_with_hooks(toks, fwd_hooks=[(n, keep) for n in names])
    # a second run with different tokens must not overwrite what we kept either
    gb.run_with_hooks(toks[::-1].copy(), fwd_hooks=[(names[0], lambda a, hook: None)])
    gb(toks[::-1].copy())
    _, cache = gb.run_with_cache(toks)
    for n in names:
        np.testing.assert_array_equal(to_np(store[n]), snapshot[n], err_msg=f"{n} changed after the run")
        assert_close(store[n], cache[n], f"stored {n} vs cache")


def test_torch_in_torch_out_shares_memory(models, toks):
    """torch tokens: logits, cache entries and hook arguments are torch tensors; in-place edits
    of the torch tensor inside a hook take effect (it shares memory with the engine's buffer)."""
    gb, tl = models
    tt = torch.as_tensor(toks)
    seen = []

    def ablate(z, hook):
        seen.append(type(z))
        z[:, :, 2] = 0.0  # torch in-place edit

    out = gb.run_with_hooks(tt, fwd_hooks=[("blocks.1.attn.hook_z", ablate)])
    assert seen and all(issubclass(t, torch.Tensor) for t in seen), seen
    assert isinstance(out, torch.Tensor)
    with torch.no_grad():
        ref = tl.run_with_hooks(tt, fwd_hooks=[("blocks.1.attn.hook_z", ablate)])
    assert_close(out, ref, "torch hook in-place edit")

    logits, cache = gb.run_with_cache(tt)
    assert isinstance(logits, torch.Tensor)
    v = cache["blocks.0.hook_resid_pre"]
    assert isinstance(v, torch.Tensor), type(v)
    # the torch view shares memory with the numpy buffer underneath
    a = v.numpy()
    a[0, 0, 0] += 1.0
    assert float(v[0, 0, 0]) == float(a[0, 0, 0])


def test_hook_receives_hookpoint(models, toks):
    gb, _ = models
    got = []

    def rec(act, hook):
        got.append((hook.name, hook.layer() if hook.name.startswith("blocks.") else None,
                    tuple(act.shape)))

    gb.run_with_hooks(toks, fwd_hooks=[("blocks.2.attn.hook_pattern", rec), ("hook_pos_embed", rec)])
    assert ("hook_pos_embed", None, (2, 16, SPEC.n_embd)) in got
    assert ("blocks.2.attn.hook_pattern", 2, (2, SPEC.n_head, 16, 16)) in got
    assert "blocks.0.attn.hook_z" in gb.hook_dict
    assert gb.hook_dict["blocks.0.attn.hook_z"].name == "blocks.0.attn.hook_z"


def test_hooks_on_real_shape(zoo):
    """Head ablation + pattern edit at the real gpt2 shape vs TL."""
    gb, tl = zoo.gb(GPT2_REAL), zoo.tl(GPT2_REAL)
    toks = hm.random_tokens(GPT2_REAL.vocab_size, (1, 24), seed=22)

    def ablate(z, hook):
        z[:, :, 5] = 0.0

    def bos(p, hook):
        p[:, 7] = 0.0
        p[:, 7, :, 0] = 1.0

    hooks = [("blocks.3.attn.hook_z", ablate), ("blocks.9.attn.hook_pattern", bos)]
    out = gb.run_with_hooks(toks, fwd_hooks=hooks)
    with torch.no_grad():
        ref = tl.run_with_hooks(torch.as_tensor(toks), fwd_hooks=hooks)
    assert_close(out, ref, "real-shape hooks")
