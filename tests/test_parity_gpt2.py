"""GPT-2 parity: glassbox vs Hugging Face transformers and vs TransformerLens on identical weights.

Tolerance (fp32): every comparison below asserts max |glassbox - reference| <= ATOL = 1e-4
(absolute) over all finite entries, and identical positions of -inf / NaN. Values are O(1..10) for
these fixtures, so 1e-4 absolute is ~1e-5 relative. For the processed model (center_unembed shifts
logits by a per-position constant) logits are compared with HF through log_softmax.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import helpers_models as hm
from helpers_models import GPT2_ODD, GPT2_ODD2, GPT2_REAL, max_abs_diff, to_np

torch = pytest.importorskip("torch")

ATOL = 1e-4

SPECS = [GPT2_ODD, GPT2_ODD2, GPT2_REAL]
SPEC_IDS = [s.name for s in SPECS]


def assert_close(got, ref, what: str, atol: float = ATOL):
    got_np, ref_np = to_np(got), to_np(ref)
    assert tuple(got_np.shape) == tuple(ref_np.shape), (
        f"{what}: shape {tuple(got_np.shape)} != reference {tuple(ref_np.shape)}")
    err = max_abs_diff(got_np, ref_np)
    assert err <= atol, (
        f"{what}: max abs error {err:.3g} > {atol:g} (reference max |x| = "
        f"{np.nanmax(np.abs(np.where(np.isfinite(ref_np), ref_np, 0))):.3g})")
    return err


def tokens_for(spec, seed=0):
    """[2, 20] for the small shapes, [1, 32] at the real gpt2 shape (keeps the suite fast)."""
    shape = (1, 32) if spec is GPT2_REAL else (2, 20)
    return hm.random_tokens(spec.vocab_size, shape, seed=seed)


def log_softmax(x):
    x = to_np(x).astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def hf_logits(zoo, spec, toks, attention_mask=None, position_ids=None):
    kw = {}
    if attention_mask is not None:
        kw["attention_mask"] = torch.as_tensor(attention_mask)
    if position_ids is not None:
        kw["position_ids"] = torch.as_tensor(position_ids)
    with torch.no_grad():
        return zoo.hf(spec)(torch.as_tensor(toks), **kw).logits.numpy()


def tl_run(model, *args, **kw):
    with torch.no_grad():
        return model(*args, **kw)


# ------------------------------------------------------------------------------------------
# (i) logits


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_logits_unprocessed_vs_hf_and_tl(zoo, spec):
    """from_pretrained_no_processing: logits == HF logits and == TL logits (atol 1e-4)."""
    toks = tokens_for(spec, seed=1)
    gb = zoo.gb(spec, processed=False)
    out = gb(toks)
    assert isinstance(out, np.ndarray), f"numpy tokens must give numpy logits, got {type(out)}"
    assert out.dtype == np.float32
    assert_close(out, hf_logits(zoo, spec, toks), "logits vs HF (unprocessed)")
    ref_tl = tl_run(zoo.tl(spec, processed=False), torch.as_tensor(toks))
    assert_close(out, ref_tl, "logits vs TL (unprocessed)")


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_logits_processed_vs_hf_and_tl(zoo, spec):
    """from_pretrained (fold_ln, centring, fold_value_biases): log_softmax == HF's; logits == TL's
    (atol 1e-4); logits are centred over the vocab as TL's center_unembed makes them."""
    toks = tokens_for(spec, seed=2)
    gb = zoo.gb(spec, processed=True)
    out = gb(toks)
    assert_close(log_softmax(out), log_softmax(hf_logits(zoo, spec, toks)),
                 "log_softmax vs HF (processed)")
    ref_tl = tl_run(zoo.tl(spec, processed=True), torch.as_tensor(toks))
    assert_close(out, ref_tl, "logits vs TL (processed)")
    # center_unembed must have happened: mean over vocab ~ 0 at every position (it is not for HF)
    assert np.abs(to_np(out).mean(-1)).max() < 1e-4


def test_torch_tokens_give_torch_logits(zoo):
    spec = GPT2_ODD
    toks = tokens_for(spec, seed=3)
    gb = zoo.gb(spec, processed=True)
    out_t = gb(torch.as_tensor(toks))
    assert isinstance(out_t, torch.Tensor), type(out_t)
    assert out_t.dtype == torch.float32
    assert_close(out_t, gb(toks), "torch-in logits vs numpy-in logits", atol=0.0)
    # 1-D tokens get a batch dim (TL semantics)
    out_1d = gb(toks[0])
    assert to_np(out_1d).shape == (1, toks.shape[1], spec.vocab_size)
    assert_close(out_1d[0], to_np(gb(toks))[0], "1-D tokens", atol=1e-6)


def test_string_input_matches_tl(zoo):
    """str input: BOS prepended by default; same tokens and logits as TL."""
    spec = GPT2_REAL
    gb, tl = zoo.gb(spec), zoo.tl(spec)
    s = hm.PROMPTS[0]
    gb_toks = to_np(gb.to_tokens(s))
    tl_toks = to_np(tl.to_tokens(s))
    np.testing.assert_array_equal(gb_toks, tl_toks)
    assert gb_toks[0, 0] == spec.vocab_size - 1  # <|endoftext|> as BOS
    assert_close(gb(s), tl_run(tl, s), "logits for a string prompt vs TL")
    assert gb.to_str_tokens(s) == tl.to_str_tokens(s)
    assert gb.to_string(gb_toks[0, 1:]) == s


# ------------------------------------------------------------------------------------------
# (ii) every cached hook vs TL


def compare_caches(gb_cache, tl_cache, what, atol=ATOL):
    gb_keys, tl_keys = list(gb_cache.keys()), list(tl_cache.keys())
    missing = [k for k in tl_keys if k not in gb_keys]
    extra = [k for k in gb_keys if k not in tl_keys]
    assert not missing and not extra, f"{what}: missing keys {missing[:8]}, extra keys {extra[:8]}"
    assert gb_keys == tl_keys, f"{what}: same key set but different order"
    worst, worst_key = -1.0, None
    for k in tl_keys:
        err = assert_close(gb_cache[k], tl_cache[k], f"{what}: cache[{k!r}]", atol=atol)
        if err > worst:
            worst, worst_key = err, k
    return worst, worst_key


@pytest.mark.parametrize("processed", [False, True], ids=["unprocessed", "processed"])
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_run_with_cache_every_hook_vs_tl(zoo, spec, processed):
    """run_with_cache: same keys in the same order, same shapes, values within 1e-4 of TL."""
    toks = tokens_for(spec, seed=4)
    gb, tl = zoo.gb(spec, processed=processed), zoo.tl(spec, processed=processed)
    gb_logits, gb_cache = gb.run_with_cache(toks)
    with torch.no_grad():
        tl_logits, tl_cache = tl.run_with_cache(torch.as_tensor(toks))
    assert_close(gb_logits, tl_logits, "run_with_cache logits")
    assert_close(gb_logits, gb(toks), "run_with_cache logits vs plain forward", atol=1e-5)
    compare_caches(gb_cache, tl_cache, f"{spec.name} processed={processed}")
    assert len(gb_cache) == len(tl_cache)


def test_run_with_cache_names_filter_and_indexing(zoo):
    spec = GPT2_ODD
    toks = tokens_for(spec, seed=5)
    gb, tl = zoo.gb(spec), zoo.tl(spec)
    with torch.no_grad():
        _, tl_cache = tl.run_with_cache(torch.as_tensor(toks))
    for filt in ["blocks.1.attn.hook_pattern",
                 ["blocks.0.hook_resid_pre", "blocks.2.mlp.hook_post"],
                 lambda n: n.endswith("hook_z")]:
        _, c = gb.run_with_cache(toks, names_filter=filt)
        _, t = tl.run_with_cache(torch.as_tensor(toks), names_filter=filt)
        assert list(c.keys()) == list(t.keys()), filt
        for k in t.keys():
            assert_close(c[k], t[k], f"names_filter cache[{k}]")
    _, c = gb.run_with_cache(toks)
    # TL-style indexing of the cache
    assert_close(c["pattern", 1, "attn"], tl_cache["pattern", 1, "attn"], "cache['pattern',1,'attn']")
    assert_close(c["resid_post", -1], tl_cache["resid_post", -1], "cache['resid_post',-1]")
    assert_close(c["scale"], tl_cache["scale"], "cache['scale']")
    assert_close(c["blocks.0.attn.hook_q"], tl_cache["q", 0], "cache['q',0]")


def test_run_with_cache_remove_batch_dim(zoo):
    spec = GPT2_ODD
    toks = tokens_for(spec, seed=6)[:1]
    gb, tl = zoo.gb(spec), zoo.tl(spec)
    _, c = gb.run_with_cache(toks, remove_batch_dim=True)
    with torch.no_grad():
        _, t = tl.run_with_cache(torch.as_tensor(toks), remove_batch_dim=True)
    compare_caches(c, t, "remove_batch_dim=True")


# ------------------------------------------------------------------------------------------
# padded batches


PAD_PROMPTS = ["The quick brown fox", "When Mary and John went to the store", "It was"]


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("spec", [GPT2_ODD, GPT2_REAL], ids=["gpt2-odd", "gpt2-real"])
def test_padded_batch(zoo, spec, padding_side):
    """list[str] input padded left/right: tokens == TL's; logits and every hook == TL at all
    positions; logits == HF (with attention_mask, position ids cumsum(mask)-1) at non-pad
    positions; atol 1e-4. The unprocessed model is used so HF logits compare directly."""
    gb = zoo.gb(spec, processed=False)
    tl = zoo.tl(spec, processed=False)
    gb_toks = to_np(gb.to_tokens(PAD_PROMPTS, padding_side=padding_side))
    tl_toks = to_np(tl.to_tokens(PAD_PROMPTS, padding_side=padding_side))
    np.testing.assert_array_equal(gb_toks, tl_toks)

    gb_logits, gb_cache = gb.run_with_cache(PAD_PROMPTS, padding_side=padding_side)
    with torch.no_grad():
        tl_logits, tl_cache = tl.run_with_cache(PAD_PROMPTS, padding_side=padding_side)
    assert_close(gb_logits, tl_logits, f"padded ({padding_side}) logits vs TL")
    compare_caches(gb_cache, tl_cache, f"padded ({padding_side})")

    # HF at the real (non-pad) positions
    lengths = [to_np(gb.to_tokens(p)).shape[1] for p in PAD_PROMPTS]
    B, P = gb_toks.shape
    mask = np.zeros((B, P), dtype=np.int64)
    for b, n in enumerate(lengths):
        if padding_side == "right":
            mask[b, :n] = 1
        else:
            mask[b, P - n:] = 1
    pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    ref = hf_logits(zoo, spec, gb_toks, attention_mask=mask, position_ids=pos)
    keep = mask.astype(bool)
    assert_close(to_np(gb_logits)[keep], ref[keep], f"padded ({padding_side}) logits vs HF")


def test_explicit_attention_mask_matches_hf(zoo):
    """tokens + attention_mask (left padding) given explicitly, vs HF at non-pad positions."""
    spec = GPT2_ODD
    gb = zoo.gb(spec, processed=False)
    toks = hm.random_tokens(spec.vocab_size, (2, 12), seed=7)
    mask = np.ones((2, 12), dtype=np.int64)
    mask[0, :5] = 0
    out = gb(toks, attention_mask=mask)
    pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    ref = hf_logits(zoo, spec, toks, attention_mask=mask, position_ids=pos)
    keep = mask.astype(bool)
    assert_close(to_np(out)[keep], ref[keep], "explicit attention_mask vs HF")
    ref_tl = tl_run(zoo.tl(spec, processed=False), torch.as_tensor(toks),
                    attention_mask=torch.as_tensor(mask))
    assert_close(to_np(out)[keep], to_np(ref_tl)[keep], "explicit attention_mask vs TL")


# ------------------------------------------------------------------------------------------
# flag-gated hooks


FLAG_SETTERS = ["set_use_attn_result", "set_use_split_qkv_input", "set_use_attn_in",
                "set_use_hook_mlp_in"]
FLAG_HOOKS = {
    "set_use_attn_result": ["blocks.0.attn.hook_result"],
    "set_use_split_qkv_input": ["blocks.0.hook_q_input", "blocks.0.hook_k_input",
                                "blocks.0.hook_v_input"],
    "set_use_attn_in": ["blocks.0.hook_attn_in"],
    "set_use_hook_mlp_in": ["blocks.0.hook_mlp_in"],
}


@pytest.mark.parametrize("processed", [False, True], ids=["unprocessed", "processed"])
@pytest.mark.parametrize("setter", FLAG_SETTERS)
def test_flag_gated_hooks_vs_tl(zoo, setter, processed):
    """With each TL flag on: the gated hooks appear in the cache, key order and every value == TL
    (atol 1e-4); logits unchanged. Flags are switched off again afterwards."""
    spec = GPT2_ODD
    toks = tokens_for(spec, seed=8)
    gb, tl = zoo.gb(spec, processed=processed), zoo.tl(spec, processed=processed)
    base = to_np(gb(toks)).copy()
    try:
        getattr(gb, setter)(True)
        getattr(tl, setter)(True)
        gb_logits, gb_cache = gb.run_with_cache(toks)
        with torch.no_grad():
            tl_logits, tl_cache = tl.run_with_cache(torch.as_tensor(toks))
        for name in FLAG_HOOKS[setter]:
            assert name in tl_cache.keys(), f"(TL reference itself lacks {name})"
            assert name in gb_cache.keys(), f"{setter}(True): {name} not cached"
        compare_caches(gb_cache, tl_cache, f"{setter}(True)")
        assert_close(gb_logits, base, f"{setter}(True) changes logits", atol=1e-4)
    finally:
        getattr(gb, setter)(False)
        getattr(tl, setter)(False)
    _, gb_cache = gb.run_with_cache(toks)
    for name in FLAG_HOOKS[setter]:
        assert name not in gb_cache.keys(), f"{setter}(False): {name} still cached"


def test_all_flags_together_vs_tl(zoo):
    spec = GPT2_ODD2
    toks = tokens_for(spec, seed=9)
    gb, tl = zoo.gb(spec), zoo.tl(spec)
    try:
        for s in ["set_use_attn_result", "set_use_split_qkv_input", "set_use_hook_mlp_in"]:
            getattr(gb, s)(True)
            getattr(tl, s)(True)
        _, gb_cache = gb.run_with_cache(toks)
        with torch.no_grad():
            _, tl_cache = tl.run_with_cache(torch.as_tensor(toks))
        compare_caches(gb_cache, tl_cache, "attn_result+split_qkv+mlp_in")
    finally:
        for s in FLAG_SETTERS:
            getattr(gb, s)(False)
            getattr(tl, s)(False)


def _gb_with_hook_tokens(zoo, spec):
    """glassbox model with cfg.use_hook_tokens=True, made as in TL: a HookedTransformer built from a
    config with the flag set, loaded with the (processed) state dict of the pretrained model."""
    from glassbox import HookedTransformer

    base = zoo.gb(spec)
    # a copy: TL's (and so glassbox's) cfg.to_dict() returns the live __dict__
    cfg = dict(base.cfg.to_dict() if hasattr(base.cfg, "to_dict") else vars(base.cfg))
    cfg["use_hook_tokens"] = True
    model = HookedTransformer(cfg, tokenizer=getattr(base, "tokenizer", None))
    model.load_state_dict(base.state_dict())
    return model


def test_use_hook_tokens_vs_tl(zoo):
    spec = GPT2_ODD
    toks = tokens_for(spec, seed=10)
    gb = _gb_with_hook_tokens(zoo, spec)
    tl = zoo.tl(spec, use_hook_tokens=True)
    gb_logits, gb_cache = gb.run_with_cache(toks)
    with torch.no_grad():
        tl_logits, tl_cache = tl.run_with_cache(torch.as_tensor(toks))
    assert list(gb_cache.keys())[0] == "hook_tokens"
    np.testing.assert_array_equal(to_np(gb_cache["hook_tokens"]), toks)
    compare_caches(gb_cache, tl_cache, "use_hook_tokens")
    # a hook on hook_tokens can replace the tokens, as in TL
    other = (toks + 1) % spec.vocab_size

    def swap(t, hook):
        return other if isinstance(t, np.ndarray) else torch.as_tensor(other)

    out = gb.run_with_hooks(toks, fwd_hooks=[("hook_tokens", swap)])
    with torch.no_grad():
        ref = tl.run_with_hooks(torch.as_tensor(toks), fwd_hooks=[("hook_tokens", swap)])
    assert_close(out, ref, "hook_tokens replaced")
    assert_close(out, gb(other), "hook_tokens replaced vs direct run", atol=1e-5)


# ------------------------------------------------------------------------------------------
# stop_at_layer, return types, loss


@pytest.mark.parametrize("stop", [0, 1, 2, -1, 3])
def test_stop_at_layer_vs_tl(zoo, stop):
    spec = GPT2_ODD  # 3 layers
    toks = tokens_for(spec, seed=11)
    gb, tl = zoo.gb(spec), zoo.tl(spec)
    out = gb(toks, stop_at_layer=stop)
    ref = tl_run(tl, torch.as_tensor(toks), stop_at_layer=stop)
    assert_close(out, ref, f"stop_at_layer={stop}")
    _, gb_cache = gb.run_with_cache(toks, stop_at_layer=stop)
    with torch.no_grad():
        _, tl_cache = tl.run_with_cache(torch.as_tensor(toks), stop_at_layer=stop)
    compare_caches(gb_cache, tl_cache, f"run_with_cache(stop_at_layer={stop})")


@pytest.mark.parametrize("start,stop", [(1, None), (2, 3), (1, 2), (-1, None)])
def test_start_at_layer_vs_tl(zoo, start, stop):
    """Residual from the cache fed back in with start_at_layer (and stop_at_layer): == TL; running
    from block `start` on resid_pre[start] reproduces the full forward (atol 1e-4)."""
    spec = GPT2_ODD
    toks = tokens_for(spec, seed=15)
    gb, tl = zoo.gb(spec), zoo.tl(spec)
    _, cache = gb.run_with_cache(toks)
    s = start % spec.n_layer
    resid = np.ascontiguousarray(to_np(cache[f"blocks.{s}.hook_resid_pre"]))
    out = gb(resid, start_at_layer=start, stop_at_layer=stop)
    ref = tl_run(tl, torch.as_tensor(resid), start_at_layer=start, stop_at_layer=stop)
    assert_close(out, ref, f"start_at_layer={start}, stop_at_layer={stop}")
    if stop is None:
        assert_close(out, gb(toks), "start_at_layer on the cached residual vs full forward")
        loss = gb(resid, start_at_layer=start, tokens=toks, return_type="loss")
        ref_loss = tl_run(tl, torch.as_tensor(resid), start_at_layer=start,
                          tokens=torch.as_tensor(toks), return_type="loss")
        assert_close(np.float64(to_np(loss)), ref_loss.double(), "loss with start_at_layer")


@pytest.mark.parametrize("spec", [GPT2_ODD, GPT2_REAL], ids=["gpt2-odd", "gpt2-real"])
def test_return_types_and_loss_vs_tl(zoo, spec):
    toks = tokens_for(spec, seed=12)
    gb, tl = zoo.gb(spec), zoo.tl(spec)
    tt = torch.as_tensor(toks)
    loss = gb(toks, return_type="loss")
    ref_loss = tl_run(tl, tt, return_type="loss")
    assert np.ndim(to_np(loss)) == 0, f"loss must be a scalar, got shape {np.shape(to_np(loss))}"
    assert_close(np.asarray(to_np(loss), dtype=np.float64), ref_loss.double(), "loss")

    per_tok = gb(toks, return_type="loss", loss_per_token=True)
    ref_pt = tl_run(tl, tt, return_type="loss", loss_per_token=True)
    assert_close(per_tok, ref_pt, "loss_per_token")
    assert to_np(per_tok).shape == (toks.shape[0], toks.shape[1] - 1)

    both = gb(toks, return_type="both")
    ref_both = tl_run(tl, tt, return_type="both")
    logits, loss2 = both
    assert_close(logits, ref_both[0], "return_type=both logits")
    assert_close(np.float64(to_np(loss2)), ref_both[1].double(), "return_type=both loss")
    assert hasattr(both, "logits") and hasattr(both, "loss"), "Output must be a NamedTuple"

    assert gb(toks, return_type=None) is None

    # torch in -> torch scalar loss
    loss_t = gb(tt, return_type="loss")
    assert isinstance(loss_t, torch.Tensor) and loss_t.dim() == 0
    # utils.lm_cross_entropy_loss agrees with TL's
    import glassbox.utils as gutils
    from transformer_lens import utils as tl_utils

    lg = to_np(gb(toks))
    assert_close(gutils.lm_cross_entropy_loss(lg, toks),
                 tl_utils.lm_cross_entropy_loss(torch.as_tensor(lg), tt), "lm_cross_entropy_loss")


def test_loss_with_padding_vs_tl(zoo):
    spec = GPT2_ODD
    gb, tl = zoo.gb(spec, processed=False), zoo.tl(spec, processed=False)
    for side in ["left", "right"]:
        a = gb(PAD_PROMPTS, return_type="loss", padding_side=side)
        b = tl_run(tl, PAD_PROMPTS, return_type="loss", padding_side=side)
        assert_close(np.float64(to_np(a)), b.double(), f"loss on a {side}-padded batch")


# ------------------------------------------------------------------------------------------
# SIMD paths


_ISA_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    import glassbox
    from glassbox import HookedTransformer
    import glassbox._C as C
    want = sys.argv[1]
    assert C.isa() == want, f"GLASSBOX_ISA={want} but _C.isa() == {C.isa()}"
    out = {}
    for i, path in enumerate(sys.argv[3:]):
        m = HookedTransformer.from_pretrained_no_processing(path)
        V = m.cfg.d_vocab
        rng = np.random.default_rng(i)
        # odd shape: 2 x 37 (ragged tiles); real shape: 1 x 24 (the scalar path is slow there)
        toks = rng.integers(0, V, size=(2, 37) if V < 1000 else (1, 24), dtype=np.int64)
        logits, cache = m.run_with_cache(toks, names_filter=lambda n: "pattern" in n)
        out[f"logits{i}"] = np.asarray(logits)
        out[f"pattern{i}"] = np.asarray(cache["pattern", 0, "attn"])
    np.savez(sys.argv[2], **out)
""")


def test_isa_paths_agree(zoo, tmp_path):
    """Forward under GLASSBOX_ISA=scalar / avx2 / avx512 (each in its own process; unsupported ones
    skipped): logits and layer-0 pattern within 1e-4 of the scalar path."""
    import glassbox._C as C

    folders = [str(zoo.folder(GPT2_ODD)), str(zoo.folder(GPT2_REAL))]
    script = tmp_path / "isa_run.py"
    script.write_text(_ISA_SCRIPT)
    results = {}
    tried = []
    for isa in ["scalar", "avx2", "avx512"]:
        if not C.isa_supported(isa):
            continue
        tried.append(isa)
        out = tmp_path / f"{isa}.npz"
        env = dict(os.environ, GLASSBOX_ISA=isa)
        r = subprocess.run([sys.executable, str(script), isa, str(out)] + folders,
                           env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"GLASSBOX_ISA={isa} run failed:\n{r.stderr[-3000:]}"
        results[isa] = dict(np.load(out))
    assert "scalar" in tried
    for isa in tried[1:]:
        for k, ref in results["scalar"].items():
            assert_close(results[isa][k], ref, f"GLASSBOX_ISA={isa} {k} vs scalar")
    if len(tried) == 1:
        pytest.skip("only the scalar path is supported on this CPU")


def test_isa_bad_value_warns_and_falls_back(tmp_path):
    code = "import glassbox._C as C; print(C.isa())"
    r = subprocess.run([sys.executable, "-W", "always", "-c", code],
                       env=dict(os.environ, GLASSBOX_ISA="sse9"), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "sse9" in r.stderr, f"no warning naming the bad GLASSBOX_ISA value: {r.stderr!r}"
    assert r.stdout.strip() in ("scalar", "avx2", "avx512")


# ------------------------------------------------------------------------------------------
# checkpoint layouts seen in the wild


def _copy_with_state_dict(src, dst, transform):
    import shutil
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".complete", "model.safetensors"))
    sd = load_file(str(Path(src) / "model.safetensors"))
    save_file(transform(sd), str(Path(dst) / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_hub_style_gpt2_checkpoint(zoo, tmp_path):
    """The hub's gpt2 model.safetensors has no 'transformer.' prefix, no lm_head (tied) and carries
    the attention-mask buffers h.{l}.attn.bias [1, 1, N, N]: same logits as the HF-saved folder
    (atol 1e-5)."""
    spec = GPT2_ODD
    N = spec.n_positions

    def hubify(sd):
        out = {}
        for k, v in sd.items():
            if k.startswith("lm_head."):
                continue
            out[k[len("transformer."):] if k.startswith("transformer.") else k] = v
        for l in range(spec.n_layer):
            out[f"h.{l}.attn.bias"] = np.tril(np.ones((N, N), dtype=np.float32))[None, None]
        return out

    d = _copy_with_state_dict(zoo.folder(spec), tmp_path / "hub", hubify)
    from glassbox import HookedTransformer

    m = HookedTransformer.from_pretrained_no_processing(str(d))
    toks = tokens_for(spec, seed=13)
    assert_close(m(toks), zoo.gb(spec, processed=False)(toks), "hub-layout checkpoint", atol=1e-5)
    assert_close(m(toks), hf_logits(zoo, spec, toks), "hub-layout checkpoint vs HF")


def test_sharded_checkpoint(zoo, tmp_path):
    """A checkpoint split into shards with model.safetensors.index.json loads to the same model."""
    spec = GPT2_ODD
    hf = zoo.hf(spec)
    d = tmp_path / "sharded"
    hf.save_pretrained(str(d), max_shard_size="100KB")
    assert (d / "model.safetensors.index.json").exists(), sorted(p.name for p in d.iterdir())
    hm.write_tokenizer_files(d, spec.vocab_size, spec.n_positions)
    from glassbox import HookedTransformer

    m = HookedTransformer.from_pretrained(str(d))
    toks = tokens_for(spec, seed=14)
    assert_close(m(toks), zoo.gb(spec)(toks), "sharded checkpoint", atol=1e-5)
