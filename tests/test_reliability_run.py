"""Reliability of the run path (issue 11, classes 4-7, 9, 12 and the non-finite guard).

- a rejected argument leaves the model exactly as it was (config, hooks, tokenizer, context);
- attention masks are checked for 0/1 values before any cast (2**32 is not silently 0);
- token arrays are checked for length before they are widened (no 1.6 GB copy of a 200 MB input);
- two threads on one model each get their own hooks' results, and no stale cache request stays;
- a hook added during a run to a point that would not call back raises instead of being skipped;
- out-of-range ``stop_at_layer``/``start_at_layer`` and unknown ``return_type`` raise;
- ``set_check_finite`` names the first hook point, layer and position of a NaN/inf;
- 10,000 ``run_with_hooks`` calls mixing normal, raising and replacing hooks keep RSS and
  reference counts flat.
"""
from __future__ import annotations

import copy
import gc
import sys
import threading
import tracemalloc
from functools import partial

import numpy as np
import pytest

import helpers_models as hm
from helpers_models import GPT2_ODD, to_np

SPEC = GPT2_ODD  # 3 layers, 5 heads, d_model 65, vocab 301, n_ctx from the spec


@pytest.fixture(scope="module")
def model(zoo):
    m = zoo.gb(SPEC, fresh=True)
    yield m
    m.reset_hooks(including_permanent=True)


@pytest.fixture(scope="module")
def toks():
    return hm.random_tokens(SPEC.vocab_size, (2, 10), seed=5)


def state(model):
    """Everything an argument error could leave changed."""
    return (
        copy.deepcopy({k: v for k, v in model.cfg.to_dict().items() if k != "dtype"}),
        {name: len(hp.fwd_hooks) for name, hp in model.hook_dict.items()},
        getattr(model.tokenizer, "padding_side", None),
        model.context_level,
        model.is_caching,
        model._run,
        model._cache_request,
    )


BAD_CALLS = [
    ("padding_side", dict(padding_side="middle"), ValueError),
    ("prepend_bos", dict(prepend_bos="yes"), ValueError),
    ("return_type", dict(return_type="logit"), ValueError),
    ("stop_at_layer high", dict(stop_at_layer=4), ValueError),
    ("stop_at_layer low", dict(stop_at_layer=-4), ValueError),
    ("stop_at_layer float", dict(stop_at_layer=1.5), TypeError),
    ("attention_mask 2**32", dict(attention_mask="big"), ValueError),
    ("attention_mask 0.5", dict(attention_mask="half"), ValueError),
    ("attention_mask shape", dict(attention_mask="shape"), AssertionError),
]


@pytest.mark.parametrize("label,kwargs,exc", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
@pytest.mark.parametrize("entry", ["forward", "run_with_cache", "run_with_hooks"])
def test_rejected_argument_leaves_model_unchanged(model, toks, label, kwargs, exc, entry):
    kwargs = dict(kwargs)
    mask = kwargs.get("attention_mask")
    if mask == "big":
        m = np.ones(toks.shape, np.int64)
        m[1, 3] = 2 ** 32
        kwargs["attention_mask"] = m
    elif mask == "half":
        m = np.ones(toks.shape, np.float32)
        m[0, 2] = 0.5
        kwargs["attention_mask"] = m
    elif mask == "shape":
        kwargs["attention_mask"] = np.ones((2, 3), np.int64)
    before = state(model)
    ref = to_np(model(toks)).copy()
    call = {
        "forward": lambda: model(toks, **kwargs),
        "run_with_cache": lambda: model.run_with_cache(toks, **kwargs),
        "run_with_hooks": lambda: model.run_with_hooks(
            toks, fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: None)], **kwargs),
    }[entry]
    with pytest.raises(exc) as info:
        call()
    assert state(model) == before
    if "attention_mask" in kwargs and exc is ValueError:
        assert "[batch" in str(info.value)  # names the position
    assert np.array_equal(to_np(model(toks)), ref)


def test_mask_dtypes_agree(model, toks):
    m = np.ones(toks.shape, np.int64)
    m[0, :3] = 0
    ref = to_np(model(toks, attention_mask=m))
    for variant in (m.astype(bool), m.astype(np.float32), m.astype(np.uint8), m.tolist()):
        assert np.array_equal(to_np(model(toks, attention_mask=variant)), ref)


def test_long_uint8_tokens_rejected_before_widening(model):
    big = np.zeros((1, 50_000_000), dtype=np.uint8)  # 50 MB; int64 would be 400 MB
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="longer than n_ctx"):
            model(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000, f"validation allocated {peak / 1e6:.1f} MB"


def test_token_range_error_names_position(model):
    t = np.zeros((2, 5), np.int32)
    t[1, 4] = SPEC.vocab_size
    with pytest.raises(ValueError, match=r"batch 1, pos 4"):
        model(t)


def test_set_flag_inside_hook_keeps_config(model, toks):
    before = model.cfg.use_attn_result

    def flip(x, hook):
        model.set_use_attn_result(not before)

    with pytest.raises(RuntimeError, match="while a forward pass runs"):
        model.run_with_hooks(toks, fwd_hooks=[("blocks.0.hook_resid_pre", flip)])
    assert model.cfg.use_attn_result == before
    if not before:  # a hook_result hook is refused, not silently never called
        with pytest.raises(AssertionError):
            model.add_hook("blocks.1.attn.hook_result", lambda x, hook: None)
    model.reset_hooks()


def test_hook_added_during_run_to_unplanned_point_raises(model, toks):
    def adder(x, hook):
        model.add_hook("blocks.2.hook_resid_post", lambda y, hook: None)

    before = state(model)
    with pytest.raises(RuntimeError, match="while a forward pass is running"):
        model.run_with_hooks(toks, fwd_hooks=[("blocks.0.hook_resid_pre", adder)])
    assert state(model) == before


def test_hook_added_during_run_to_planned_or_past_point_fires_as_in_tl(model, toks):
    calls = []

    def late(y, hook):
        calls.append(hook.name)

    def adder(x, hook):
        # a later point that already has a hook: fires in this run (TransformerLens does too)
        model.add_hook("blocks.2.hook_resid_post", late)
        # an earlier point: fires from the next run on (as in TransformerLens)
        model.add_hook("blocks.0.hook_resid_pre", late)

    try:
        model.add_hook("blocks.2.hook_resid_post", lambda y, hook: None)
        model.add_hook("blocks.1.hook_resid_pre", adder)
        model(toks)
        assert calls == ["blocks.2.hook_resid_post"]
    finally:
        model.reset_hooks()


def test_no_hook_fast_path_follows_hooks_added_and_removed_between_runs(model, toks):
    """A plain forward skips the per-point planning pass (the fired-point plan is memoised);
    hooks added or removed between runs of the same plan must still fire exactly then, and
    the plain, cached and finite-checked runs must agree bitwise."""
    plain = to_np(model(toks))
    calls = []

    def double(x, hook):
        calls.append(hook.name)
        return x * 2

    try:
        model.add_hook("blocks.1.hook_mlp_out", double)
        hooked = to_np(model(toks))
        assert calls == ["blocks.1.hook_mlp_out"]
        assert not np.array_equal(hooked, plain)
        model.reset_hooks()
        assert np.array_equal(to_np(model(toks)), plain)
        assert calls == ["blocks.1.hook_mlp_out"]
        logits, cache = model.run_with_cache(toks)
        assert np.array_equal(to_np(logits), plain) and len(cache) > 10
        model.add_hook("blocks.1.hook_mlp_out", double)
        assert np.array_equal(to_np(model(toks)), hooked)
        assert calls == ["blocks.1.hook_mlp_out"] * 2
    finally:
        model.reset_hooks()
    model.set_check_finite(True)
    try:
        assert np.array_equal(to_np(model(toks)), plain)
    finally:
        model.set_check_finite(False)


def _patch_hook(x, hook, value):
    x[:, 1:3] = value


def test_threads_get_their_own_hooks(model, toks):
    names = ["blocks.0.hook_resid_pre", "blocks.1.hook_mlp_out", "blocks.2.attn.hook_z"]
    refs = []
    for i, name in enumerate(names):
        refs.append(to_np(model.run_with_hooks(toks, fwd_hooks=[(name, partial(_patch_hook, value=0.1 * (i + 1)))])).copy())
    errors = []

    def worker(i):
        try:
            for _ in range(25):
                out = to_np(model.run_with_hooks(toks, fwd_hooks=[(names[i], partial(_patch_hook, value=0.1 * (i + 1)))]))
                if not np.array_equal(out, refs[i]):
                    errors.append(f"thread {i} got another run's result")
                _, cache = model.run_with_cache(toks, names_filter=names[i])
                if list(cache.keys()) != [names[i]]:
                    errors.append(f"thread {i} got cache keys {list(cache.keys())}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:5]
    assert model._cache_request is None and model._run is None
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())


def test_check_finite_names_first_point(model, toks):
    W_in = model.blocks[1].mlp.W_in
    saved = float(W_in[3, 0])
    try:
        model.set_check_finite(True)
        model(toks)  # masked scores are -inf by design: no error
        W_in[3, 0] = np.nan
        with pytest.raises(FloatingPointError, match=r"blocks\.1\.mlp\.hook_pre.*layer 1, batch 0, pos 0") as info:
            model(toks)
        assert info.value.hook_name == "blocks.1.mlp.hook_pre" and info.value.layer == 1
        W_in[3, 0] = saved

        def inject(x, hook):
            x[1, 4, 7] = np.inf

        with pytest.raises(FloatingPointError, match=r"blocks\.0\.hook_resid_mid.*batch 1, pos 4") as info:
            model.run_with_hooks(toks, fwd_hooks=[("blocks.0.hook_resid_mid", inject)])
        assert info.value.index == (1, 4, 7)
    finally:
        W_in[3, 0] = saved
        model.set_check_finite(False)
    model(toks)


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0  # pragma: no cover


def test_ten_thousand_mixed_hook_calls_are_flat(model, toks):
    small = toks[:1, :6]

    def normal(x, hook):
        x *= 1.0

    def replacing(x, hook):
        return x * 1.0

    class Boom(Exception):
        pass

    def raising(x, hook):
        raise Boom("deliberate")

    hooks = [normal, replacing, raising]

    def one(i):
        fn = hooks[i % 3]
        try:
            model.run_with_hooks(small, fwd_hooks=[("blocks.1.hook_resid_pre", fn), ("blocks.0.attn.hook_z", normal)])
        except Boom:
            pass

    for i in range(1000):  # warm-up: allocator pools, caches
        one(i)
    gc.collect()
    rss0, objs0 = _rss_kib(), len(gc.get_objects())
    refs0 = [sys.getrefcount(f) for f in hooks] + [sys.getrefcount(model)]
    for i in range(10_000):
        one(i)
    gc.collect()
    rss1, objs1 = _rss_kib(), len(gc.get_objects())
    refs1 = [sys.getrefcount(f) for f in hooks] + [sys.getrefcount(model)]
    print(f"10,000 calls: RSS {rss0} -> {rss1} KiB ({(rss1 - rss0) / rss0:+.2%}), live objects "
          f"{objs0} -> {objs1}, refcounts {refs0} -> {refs1}")  # (pytest -s)
    assert refs1 == refs0
    assert objs1 - objs0 < 200, f"{objs1 - objs0} more live objects"
    assert rss1 <= rss0 * 1.05, f"RSS grew from {rss0} to {rss1} KiB"
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())
