"""glassbox.lens (logit lens, component lens, activation lens) against references.

References:

* an independent NumPy computation in float64 from the checkpoint's *raw* weights (HF's
  ``ln_f``/``norm`` gain and bias, ``lm_head``): ln_final applied by hand, ``@ W_U``, softmax,
  ranks, KL(final || lens), entropy. glassbox's processed models differ from the raw ones by
  TransformerLens's processing, which shifts every logit row by a per-position constant
  (``center_unembed``) and leaves probabilities, ranks and KL unchanged, so those are compared
  directly and logits after centring each row;
* TransformerLens 3.9 on identical weights: ``cache.accumulated_resid(apply_ln=True)``,
  ``cache.decompose_resid(apply_ln=True)``, ``cache.stack_head_results(apply_ln=True)``,
  ``cache.apply_ln_to_stack`` and ``model.unembed``;
* the model's own logits: the lens at the final ``resid_post`` must give them, for fp32, bf16-stored
  (virtual processing) and GGUF models, processed and not.

Tolerances (float32 on our side): logits ATOL = 1e-4 absolute (logits here are O(1..30));
log-probabilities 1e-4; probabilities 2e-5; KL and entropy 1e-4 absolute + 1e-4 relative; ranks
exactly, except that a token whose reference logit is within 1e-4 of the target's may fall on
either side (``rank_bounds``); top-k: the tokens we list must be the reference's top-k up to such
near-ties. The final-layer identity (lens vs the engine's logits) is held to 1e-4 for fp32 and
bf16 and to 2e-4 for quantised GGUF (same dequantised values, different summation order).
"""
from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pytest

import helpers_llama as hl
import helpers_models as hm
from helpers_models import to_np

import glassbox
from glassbox import lens

warnings.filterwarnings("ignore", category=DeprecationWarning)
logging.getLogger().setLevel(logging.ERROR)

ATOL = 1e-4
P_ATOL = 2e-5
GPT2 = hm.GPT2_ODD
LLAMA = hl.spec("llama-gqa-9x3", hidden_size=90, num_attention_heads=9, num_key_value_heads=3,
                intermediate_size=131, vocab_size=103, seed=1)  # as in test_parity_llama.py
LLAMA_BF16 = hl.spec("bf-llama-gqa-8x2-hd14", hidden_size=64, num_attention_heads=8, num_key_value_heads=2,
                     intermediate_size=100, seed=21, extra={"head_dim": 14})  # as in test_stored_dtype.py


# ------------------------------------------------------------------------------------------
# fixtures


class LlamaModels:
    def __init__(self, root):
        self.root = root
        self._c = {}

    def _get(self, key, make):
        if key not in self._c:
            self._c[key] = make()
        return self._c[key]

    def folder(self, s, dtype=None):
        suffix = f"-{dtype}" if dtype else ""
        return self._get(("folder", s, dtype), lambda: hl.save_folder(s, self.root / f"{s.key()}{suffix}", dtype=dtype))

    def hf(self, s, dtype=None):
        return self._get(("hf", s, dtype), lambda: hl.load_hf(self.folder(s, dtype), dtype="float32"))

    def tl(self, s):
        return self._get(("tl", s), lambda: hl.load_tl(self.hf(s), processed=True))

    def gb(self, s, processed=True, dtype=None):
        def make():
            load = glassbox.HookedTransformer.from_pretrained if processed else glassbox.HookedTransformer.from_pretrained_no_processing
            kw = {"dtype": dtype} if dtype else {}
            return load(str(self.folder(s, dtype)), **kw)

        return self._get(("gb", s, processed, dtype), make)


@pytest.fixture(scope="session")
def llamas(fixture_root):
    root = fixture_root / "llama"
    root.mkdir(parents=True, exist_ok=True)
    return LlamaModels(root)


def raw_readout(hf_model):
    """(kind, gain, bias, W_U [D, V], eps) from an HF model's raw weights, float64."""
    sd = {k: v.detach().double().numpy() for k, v in hf_model.state_dict().items()}
    if "transformer.ln_f.weight" in sd:
        W = sd.get("lm_head.weight", sd["transformer.wte.weight"])
        return "LN", sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"], W.T, hf_model.config.layer_norm_epsilon
    return "RMS", sd["model.norm.weight"], None, sd["lm_head.weight"].T, hf_model.config.rms_norm_eps


# ------------------------------------------------------------------------------------------
# the independent NumPy lens


def ref_logits(readout, x, mode="recompute", final=None):
    """Logits of vectors x [..., D] by hand, float64. mode "cached": divide by the final
    residual's ln scale and leave out the ln bias (the direct contribution)."""
    kind, w, b, W_U, eps = readout
    x = np.asarray(x, np.float64)
    if kind == "LN":
        x = x - x.mean(-1, keepdims=True)
    src = x if mode == "recompute" else np.asarray(final, np.float64)
    if kind == "LN" and mode != "recompute":
        src = src - src.mean(-1, keepdims=True)
    h = x / np.sqrt((src * src).mean(-1, keepdims=True) + eps) * w
    if b is not None and mode == "recompute":
        h = h + b
    return h @ W_U


def ref_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def ref_stats(logits, final_logits, targets):
    """targets [B, P] (-1 = none) → dict of probs, logprobs, ranks bounds, kl, entropy."""
    lp, flp = ref_log_softmax(logits), ref_log_softmax(final_logits)
    t = np.where(targets >= 0, targets, 0)
    t_logit = np.take_along_axis(logits, np.broadcast_to(t[..., None], logits.shape[:-1] + (1,)), -1)
    t_lp = np.take_along_axis(lp, np.broadcast_to(t[..., None], lp.shape[:-1] + (1,)), -1)[..., 0]
    return {
        "logprob": t_lp, "prob": np.exp(t_lp),
        "rank_lo": (logits > t_logit + 1e-4).sum(-1), "rank_hi": (logits > t_logit - 1e-4).sum(-1),
        "kl": (np.exp(flp) * (flp - lp)).sum(-1), "entropy": -(np.exp(lp) * lp).sum(-1),
        "has": np.broadcast_to(targets >= 0, t_lp.shape),
    }


def check_against_ref(res, ref_lg, ref_final, targets, what):
    """Compare a LensResult (numpy, batch axis) against reference logits [n, B, P, V]."""
    st = ref_stats(ref_lg, ref_final[None], targets)
    has = st["has"]
    A = res.to_numpy()
    got_p, got_lp, got_r = A["target_probs"][..., 0], A["target_logprobs"][..., 0], A["target_ranks"][..., 0]
    assert np.isnan(got_p[~has]).all() and (got_r[~has] == -1).all(), f"{what}: positions without a target"
    np.testing.assert_allclose(got_p[has], st["prob"][has], atol=P_ATOL, rtol=0, err_msg=f"{what}: target probs")
    np.testing.assert_allclose(got_lp[has], st["logprob"][has], atol=ATOL, rtol=0, err_msg=f"{what}: target logprobs")
    assert ((got_r[has] >= st["rank_lo"][has]) & (got_r[has] <= st["rank_hi"][has])).all(), f"{what}: ranks"
    np.testing.assert_allclose(A["kl"], st["kl"], atol=ATOL, rtol=1e-4, err_msg=f"{what}: KL")
    np.testing.assert_allclose(A["entropy"], st["entropy"], atol=ATOL, rtol=1e-4, err_msg=f"{what}: entropy")
    k = A["top_tokens"].shape[-1]
    ref_top_vals = -np.sort(-ref_lg, axis=-1)[..., :k]
    got_top_vals = np.take_along_axis(ref_lg, A["top_tokens"], -1)
    np.testing.assert_allclose(got_top_vals, ref_top_vals, atol=ATOL, rtol=0, err_msg=f"{what}: top-k tokens")
    ref_top_p = np.exp(np.take_along_axis(ref_log_softmax(ref_lg), A["top_tokens"], -1))
    np.testing.assert_allclose(A["top_probs"], ref_top_p, atol=P_ATOL, rtol=0, err_msg=f"{what}: top-k probs")


def centred(x):
    x = np.asarray(to_np(x), np.float64)
    return x - x.mean(-1, keepdims=True)


def gpt2_tokens(model, batch=2):
    return np.asarray(model.to_tokens(hm.PROMPTS[:batch])[:, :12])


def llama_tokens(s, shape=(2, 14), seed=0):
    return np.random.default_rng(seed).integers(0, s.vocab_size, size=shape, dtype=np.int64)


def run(model, tokens, **kw):
    glassbox.set_array_backend("numpy")
    try:
        return model.run_with_cache(np.asarray(tokens), **kw)
    finally:
        glassbox.set_array_backend("auto")


# ------------------------------------------------------------------------------------------
# against the independent NumPy lens


@pytest.mark.parametrize("processed", [True, False], ids=["processed", "raw"])
@pytest.mark.parametrize("family", ["gpt2", "llama-gqa"])
def test_logit_lens_vs_numpy(zoo, llamas, family, processed):
    """Residual stream at every layer (pre, mid, final post) vs the NumPy lens on raw weights."""
    if family == "gpt2":
        model, hf = zoo.gb(GPT2, processed=processed), zoo.hf(GPT2)
        tokens = gpt2_tokens(model)
    else:
        model, hf = llamas.gb(LLAMA, processed=processed), llamas.hf(LLAMA)
        tokens = llama_tokens(LLAMA)
    logits, cache = run(model, tokens)
    res = lens.logit_lens(cache, tokens, target="next", incl_mid=True, k=7, return_logits=True)
    L = model.cfg.n_layers
    assert res.labels == [f"{l}_{s}" for l in range(L) for s in ("pre", "mid")] + ["final_post"]
    stack = np.stack([cache[(s, l)] for l in range(L) for s in ("resid_pre", "resid_mid")] + [cache["resid_post", L - 1]])
    readout = raw_readout(hf)
    ref = ref_logits(readout, stack)
    targets = np.full(tokens.shape, -1)
    targets[:, :-1] = tokens[:, 1:]
    check_against_ref(res, ref, ref[-1], targets, f"{family} logit lens")
    got = res.logits
    if processed:  # center_unembed: logits defined up to a per-position constant
        np.testing.assert_allclose(centred(got), centred(ref), atol=ATOL, rtol=0)
    else:
        np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
    # the last read-out is the model: its own logits, KL 0, same top tokens
    np.testing.assert_allclose(got[-1], logits, atol=ATOL, rtol=0)
    assert np.abs(res.kl[-1]).max() <= 1e-6
    np.testing.assert_array_equal(res.top_tokens[-1], res.final_top_tokens)


@pytest.mark.parametrize("family", ["gpt2", "llama-gqa"])
def test_component_lens_vs_numpy(zoo, llamas, family):
    """attn_out / mlp_out / heads (query heads for GQA), cached (direct contribution) and
    recomputed normalisation, vs the NumPy lens on raw weights."""
    if family == "gpt2":
        model, hf = zoo.gb(GPT2), zoo.hf(GPT2)
        tokens = gpt2_tokens(model)
    else:
        model, hf = llamas.gb(LLAMA), llamas.hf(LLAMA)
        tokens = llama_tokens(LLAMA)
    logits, cache = run(model, tokens)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    readout = raw_readout(hf)
    final = cache["resid_post", L - 1]
    ref_final = ref_logits(readout, final)
    target = 5
    targets = np.full(tokens.shape, target)
    keys_before = list(cache.keys())

    res = lens.component_lens(cache, tokens, target=target, return_logits=True, k=4)
    assert res.labels == [f"{l}_{c}" for l in range(L) for c in ("attn_out", "mlp_out")]
    stack = np.stack([cache[(c, l)] for l in range(L) for c in ("attn_out", "mlp_out")])
    ref = ref_logits(readout, stack, "cached", final)
    check_against_ref(res, ref, ref_final, targets, f"{family} attn/mlp cached")
    np.testing.assert_allclose(centred(res.logits), centred(ref), atol=ATOL, rtol=0)

    heads = lens.component_lens(cache, tokens, target=target, components="heads", return_logits=True, k=4)
    assert heads.labels == [f"L{l}H{h}" for l in range(L) for h in range(H)]
    z = [cache["z", l] for l in range(L)]
    W_O = [np.asarray(to_np(model.blocks[l].attn.W_O)) for l in range(L)]
    per_head = np.concatenate([np.einsum("bphd,hdm->hbpm", z[l], W_O[l]) for l in range(L)])
    ref_h = ref_logits(readout, per_head, "cached", final)
    check_against_ref(heads, ref_h, ref_final, targets, f"{family} heads cached")
    assert list(cache.keys()) == keys_before, "the heads lens must not add entries to the cache"

    rec = lens.component_lens(cache, tokens, target=target, components="mlp_out", ln_mode="recompute", layers=[-1])
    assert rec.labels == [f"{L - 1}_mlp_out"]
    check_against_ref(rec, ref_logits(readout, cache["mlp_out", L - 1][None]), ref_final, targets, f"{family} mlp recompute")


@pytest.mark.parametrize("family", ["gpt2", "llama-gqa"])
def test_decomposition_adds_up_to_model_logits(zoo, llamas, family):
    """Cached read-outs are linear: the read-outs of decompose_resid's components (embed,
    pos_embed, every attn_out and mlp_out, which add up to the final residual) plus the constant
    b_ln @ W_U + b_U are the model's logits."""
    model = zoo.gb(GPT2) if family == "gpt2" else llamas.gb(LLAMA)
    tokens = gpt2_tokens(model) if family == "gpt2" else llama_tokens(LLAMA)
    logits, cache = run(model, tokens)
    res = lens.component_lens(cache, tokens, components="decompose", return_logits=True)
    total = res.logits.sum(0) + lens.FinalReadout(model).constant_logits()
    np.testing.assert_allclose(total, logits, atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------------------
# against TransformerLens on identical weights


@pytest.mark.parametrize("family", ["gpt2", "llama-gqa"])
def test_vs_transformer_lens(zoo, llamas, family):
    torch = pytest.importorskip("torch")
    if family == "gpt2":
        model, tl = zoo.gb(GPT2), zoo.tl(GPT2)
        tokens = gpt2_tokens(model)
    else:
        model, tl = llamas.gb(LLAMA), llamas.tl(LLAMA)
        tokens = llama_tokens(LLAMA)
    _, cache = run(model, tokens)
    with torch.no_grad():
        _, tc = tl.run_with_cache(torch.as_tensor(tokens))
        tl_resid = tl.unembed(tc.accumulated_resid(incl_mid=True, apply_ln=True)).numpy()
        tl_decomp = (tc.decompose_resid(apply_ln=True) @ tl.W_U).numpy()
        tl_heads = (tc.stack_head_results(apply_ln=True) @ tl.W_U).numpy()
        tl_stack = (tc.apply_ln_to_stack(tc.stack_activation("mlp_out"), layer=None) @ tl.W_U).numpy()
    ours = lens.logit_lens(cache, incl_mid=True, return_logits=True, target=None)
    np.testing.assert_allclose(ours.logits, tl_resid, atol=ATOL, rtol=0)
    ours = lens.component_lens(cache, components="decompose", return_logits=True, target=None)
    np.testing.assert_allclose(ours.logits, tl_decomp, atol=ATOL, rtol=0)
    ours = lens.component_lens(cache, components="heads", return_logits=True, target=None)
    np.testing.assert_allclose(ours.logits, tl_heads, atol=ATOL, rtol=0)
    ours = lens.component_lens(cache, components="mlp_out", return_logits=True, target=None)
    np.testing.assert_allclose(ours.logits, tl_stack, atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------------------
# the final read-out is the model's, for every way of keeping weights


def _final_matches_model(model, tokens, atol, readout=None):
    logits, cache = run(model, tokens)
    res = lens.logit_lens(cache, tokens, target="final", return_logits=True, k=3, readout=readout)
    err = float(np.abs(res.logits[-1] - logits).max())
    assert err <= atol, f"lens at final_post vs model logits: {err:.3g} > {atol:g}"
    assert (res.target_ranks[-1] == 0).all()
    assert res.kl[-1].max() <= 1e-6
    direct = (readout or lens.FinalReadout(model)).logits(cache["resid_post", -1])
    assert float(np.abs(direct - logits).max()) <= atol
    return res, cache, err


@pytest.mark.parametrize("processed", [True, False], ids=["processed", "raw"])
def test_final_layer_is_model_logits_bf16(llamas, processed):
    """bf16 weights kept as stored: processing is virtual (gain after unembed.hook_in, centred
    logits in the engine); the lens must still give the model's logits, and equal the NumPy lens
    on the same (bf16-valued) raw weights."""
    model = llamas.gb(LLAMA_BF16, processed=processed, dtype="bfloat16")
    from glassbox.loading.stored import StoredMatrix

    assert isinstance(model.unembed._params["W_U"], StoredMatrix)
    if processed:
        assert model._virtual is not None and "ln_final.w" in model._virtual.norm_weights
    tokens = llama_tokens(LLAMA_BF16, seed=3)
    res, cache, _ = _final_matches_model(model, tokens, ATOL)
    readout = raw_readout(llamas.hf(LLAMA_BF16, "bfloat16"))
    L = model.cfg.n_layers
    stack = np.stack([cache["resid_pre", l] for l in range(L)] + [cache["resid_post", L - 1]])
    ref = ref_logits(readout, stack)
    check_against_ref(res, ref, ref[-1], np.argmax(ref[-1], -1), "bf16 logit lens")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    pytest.importorskip("gguf")
    from test_gguf import write_tiny_llama

    root = tmp_path_factory.mktemp("lens-gguf")
    return write_tiny_llama(root / "tiny-llama.gguf", seed=11)


@pytest.mark.parametrize("processed", [True, False], ids=["processed", "raw"])
def test_final_layer_is_model_logits_gguf(tiny_gguf, processed):
    """A GGUF Llama (quantised Q4_K/Q6_K/Q8_0/... blocks, F16 output matrix): lens == engine, and
    == the NumPy lens on the dequantised raw weights (ln_final gain by hand)."""
    load = glassbox.HookedTransformer.from_pretrained if processed else glassbox.HookedTransformer.from_pretrained_no_processing
    model = load(str(tiny_gguf))
    tokens = np.asarray(model.to_tokens(["the hello world the", "hello world"]))[:, :4]
    res, cache, _ = _final_matches_model(model, tokens, 2e-4)
    raw = glassbox.HookedTransformer.from_pretrained_no_processing(str(tiny_gguf))
    readout = ("RMS", raw.ln_final.param_np("w").astype(np.float64), None,
               raw.unembed.param_np("W_U").astype(np.float64), raw.cfg.eps)
    L = model.cfg.n_layers
    stack = np.stack([cache["resid_pre", l] for l in range(L)] + [cache["resid_post", L - 1]])
    ref = ref_logits(readout, stack)
    check_against_ref(res, ref, ref[-1], np.argmax(ref[-1], -1), "gguf logit lens")


def test_smollm2_lens():
    """A real model (SmolLM2-135M, GGUF Q4_1, tied, 9/3 heads): the lens at final_post is the
    model's output, and the lens behaves like one on a factual prompt: " Berlin" (the model's
    answer, p ~ 0.97) is far down the list in the first half of the network and reaches the top
    only in the last layers, where KL to the output falls (measured: rank ~5000 at layers 0-23,
    37 / 6 / 0 at 28_pre / 29_pre / final_post; KL 16.4 at 1_pre, 3.5 at 29_pre)."""
    from model_files import smollm2_gguf_path

    model = glassbox.HookedTransformer.from_pretrained(smollm2_gguf_path())
    tokens = np.asarray(model.to_tokens("The capital of France is Paris. The capital of Germany is"))
    readout = lens.FinalReadout(model)  # W_U dequantised once, reused by every call below
    res, cache, err = _final_matches_model(model, tokens, 5e-4, readout)
    berlin = lens.logit_lens(cache, tokens, target=" Berlin", k=3, readout=readout)
    ranks = berlin.target_ranks[:, 0, -1, 0]
    kl = berlin.kl[:, 0, -1]
    assert berlin.target_probs[-1, 0, -1, 0] > 0.5 and ranks[-1] == 0
    assert np.median(ranks[:15]) > 1000 and ranks[-2] < 20
    assert kl[-1] == 0.0 and kl[-2] < 0.5 * kl[1:15].min()
    heads = lens.component_lens(cache, tokens, target="final", components="heads", pos_slice=-1, k=3,
                                readout=readout)
    assert heads.to_numpy()["kl"].shape == (30 * 9, 1, 1)
    with pytest.raises(ValueError, match="readout must be"):
        lens.logit_lens(cache, readout=object())


# ------------------------------------------------------------------------------------------
# array kinds, batch axis, slicing


def test_torch_mode_and_batchless_cache(zoo):
    torch = pytest.importorskip("torch")
    model = zoo.gb(GPT2)
    tokens = gpt2_tokens(model, batch=1)
    _, cache = run(model, tokens)
    ref = lens.logit_lens(cache, tokens, k=5, return_logits=True)
    _, tcache = model.run_with_cache(torch.as_tensor(tokens))
    got = lens.logit_lens(tcache, torch.as_tensor(tokens), k=5, return_logits=True)
    for name in ("top_tokens", "top_probs", "target_probs", "target_ranks", "kl", "entropy", "logits"):
        value = getattr(got, name)
        assert isinstance(value, torch.Tensor), name
        np.testing.assert_allclose(value.numpy(), getattr(ref, name), atol=1e-6, rtol=0, equal_nan=True)
    assert isinstance(ref.kl, np.ndarray)
    _, nb = run(model, tokens)
    nb.remove_batch_dim()
    flat = lens.logit_lens(nb, tokens[0], k=5, return_logits=True)
    assert flat.kl.shape == (len(flat.labels), tokens.shape[1])
    assert flat.target_ranks.shape == (len(flat.labels), tokens.shape[1], 1)
    np.testing.assert_allclose(flat.logits, ref.logits[:, 0], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(flat.target_ranks, ref.target_ranks[:, 0])
    assert flat.to_dict()["has_batch_dim"] is False and len(flat.to_records()) == flat.kl.size


def test_pos_slice_targets_and_explicit_sites(zoo):
    model = zoo.gb(GPT2)
    tokens = gpt2_tokens(model)
    _, cache = run(model, tokens)
    full = lens.logit_lens(cache, tokens, sites=["resid_pre", "resid_post"], target=[3, 7], k=3)
    L = model.cfg.n_layers
    assert full.labels == [f"{l}_{s}" for l in range(L) for s in ("pre", "post")]
    assert full.target_names == [repr(model.to_single_str_token(3)), repr(model.to_single_str_token(7))]
    assert full.target_probs.shape == (2 * L, 2, 12, 2)
    part = lens.logit_lens(cache, tokens, sites=["resid_pre", "resid_post"], target=[3, 7], k=3, pos_slice=(2, 9, 3))
    np.testing.assert_array_equal(part.positions, [2, 5, 8])
    np.testing.assert_allclose(part.target_probs, full.target_probs[:, :, [2, 5, 8]], atol=1e-7)
    np.testing.assert_allclose(part.kl, full.kl[:, :, [2, 5, 8]], atol=1e-7)
    last = lens.logit_lens(cache, tokens, target="next", pos_slice=-1)
    assert (last.target_ranks == -1).all() and np.isnan(last.target_probs).all()  # no next token there
    # resid_post of layer l is resid_pre of l + 1: same read-out
    np.testing.assert_allclose(full.kl[1:-1:2], full.kl[2::2], atol=1e-6)
    # per-position target array, -1 = none
    arr = np.full(tokens.shape, -1)
    arr[1, 4] = 7
    one = lens.logit_lens(cache, tokens, target=arr)  # resid_pre of each layer, then final_post
    has = one.to_numpy()["target_ranks"][..., 0] >= 0
    assert has[:, 1, 4].all() and has.sum() == len(one.labels)
    same_rows = np.r_[np.arange(0, 2 * L, 2), 2 * L - 1]
    np.testing.assert_allclose(one.target_probs[:, 1, 4, 0], full.target_probs[same_rows, 1, 4, 1], atol=1e-7)
    np.testing.assert_array_equal(one.target_ranks[:, 1, 4, 0], full.target_ranks[same_rows, 1, 4, 1])
    # activation_lens on an explicit stack == logit_lens on the same vectors
    stack = np.stack([cache["resid_mid", l] for l in range(L)])
    act = lens.activation_lens(cache, stack, [f"m{l}" for l in range(L)], tokens, target=[3, 7], k=3)
    mid = lens.logit_lens(cache, tokens, sites="resid_mid", target=[3, 7], k=3)
    np.testing.assert_allclose(act.target_probs, mid.target_probs, atol=1e-7)
    assert act.labels == [f"m{l}" for l in range(L)] and mid.labels == [f"{l}_mid" for l in range(L)]


# ------------------------------------------------------------------------------------------
# table, export, plots


def test_repr_html_dict_records(zoo):
    model = zoo.gb(GPT2)
    tokens = gpt2_tokens(model)
    _, cache = run(model, tokens)
    res = lens.logit_lens(cache, tokens, target=[5, 9], k=4)
    text = repr(res)
    assert text.startswith("LensResult(logit lens: accumulated;") and "final_post" in text and "(model)" in text
    assert len(text.splitlines()) == 1 + 1 + 2 + 1 + len(res.labels) + 1
    html = res._repr_html_()
    assert html.count("<tr>") == len(res.labels) + 2 and "<script" not in html
    d = res.to_dict()
    json.dumps(d)
    assert np.array_equal(np.asarray(d["target_ranks"]), res.target_ranks)
    assert len(d["top_strs"][0][0][0]) == 4
    recs = res.to_records()
    assert len(recs) == res.kl.size * 2
    r = recs[-1]
    assert r["component"] == "final_post" and r["rank"] == int(res.target_ranks[-1, -1, -1, -1])
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(recs)
    assert set(df["target_token"]) == {5, 9}
    pytest.importorskip("IPython")
    from IPython.core.formatters import HTMLFormatter

    assert HTMLFormatter()(res).count("<tr>") == len(res.labels) + 2  # what Jupyter shows


def test_html_escapes_tokens(zoo):
    """Token strings that look like markup are shown as text in the HTML table."""
    model = zoo.gb(GPT2)
    tokens = gpt2_tokens(model, batch=1)
    _, cache = run(model, tokens)
    res = lens.logit_lens(cache, tokens)
    res.str_tokens = [["<b>x</b>"] * tokens.shape[1]]
    res._decode = lambda ids: ["</script><i>" for _ in ids]
    html = res._repr_html_()
    assert "<i>" not in html and "&lt;/script&gt;&lt;i&gt;" in html and "&lt;b&gt;x&lt;/b&gt;" in html


def test_plots_return_figures_with_the_data(zoo):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    model = zoo.gb(GPT2)
    tokens = gpt2_tokens(model)
    _, cache = run(model, tokens)
    res = lens.logit_lens(cache, tokens, target="next", incl_mid=True)
    fig = res.plot_heatmap("rank", batch=1)
    assert isinstance(fig, Figure)
    img = fig.axes[0].images[0].get_array()
    ranks = res.target_ranks[:, 1, :, 0].astype(float)
    np.testing.assert_array_equal(np.ma.filled(img, np.nan), np.where(ranks < 0, np.nan, ranks + 1))
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == res.labels
    fig.savefig(__import__("io").BytesIO(), format="png")
    fig = res.plot_heatmap("prob", annotate="value")
    np.testing.assert_allclose(np.ma.filled(fig.axes[0].images[0].get_array(), np.nan), res.target_probs[:, 0, :, 0])
    fig = res.plot_lines(("prob", "rank", "kl"), pos=-2)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), res.target_probs[:, 0, -2, 0])
    np.testing.assert_allclose(fig.axes[2].lines[0].get_ydata(), res.kl[:, 0, -2])
    res.str_tokens = [["$x$ \n"] * 12, ["a$"] * 12]  # mathtext and control characters print literally
    res.plot_heatmap("kl").savefig(__import__("io").BytesIO(), format="png")
    heads = lens.component_lens(cache, tokens, target=[4, 8], components="heads", pos_slice=[3, 7])
    fig = heads.plot_heads("prob", target=1, pos=1, batch=1)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    grid = np.ma.filled(fig.axes[0].images[0].get_array(), np.nan)
    np.testing.assert_allclose(grid, heads.target_probs[:, 1, 1, 1].reshape(L, H))
    with pytest.raises(ValueError, match="heads result"):
        res.plot_heads()


# ------------------------------------------------------------------------------------------
# bad input


def test_bad_input(zoo):
    model = zoo.gb(GPT2)
    tokens = gpt2_tokens(model)
    _, cache = run(model, tokens)
    keys = list(cache.keys())
    bad = [
        (dict(ln_mode="fast"), "ln_mode"),
        (dict(k=0), "k must be"),
        (dict(target="not a single token at all"), "single token"),
        (dict(target=model.cfg.d_vocab), "out of range"),
        (dict(target=np.zeros((2, 5), np.int64)), "shape"),
        (dict(target=np.zeros((2, 12))), "integer"),
        (dict(target=object()), "target must be"),
        (dict(tokens=tokens[:, :5]), "tokens have shape"),
        (dict(tokens=None, target="next"), "needs tokens"),
        (dict(sites="resid_last"), "sites must be"),
        (dict(sites=["resid_pre", "resid_pre"]), "twice"),
        (dict(sites="resid_pre", layers=[99]), "layers"),
        (dict(pos_slice=[40]), "pos_slice"),
        (dict(final_logits=np.zeros((2, 12, 7))), "final_logits"),
    ]
    for kw, match in bad:
        kw.setdefault("tokens", tokens)
        with pytest.raises(ValueError, match=match):
            lens.logit_lens(cache, **kw)
    with pytest.raises(ValueError, match="components must be"):
        lens.component_lens(cache, components="attn")
    with pytest.raises(ValueError, match="cannot be combined"):
        lens.component_lens(cache, components=["heads", "attn_out"])
    with pytest.raises(ValueError, match="activations must have shape"):
        lens.activation_lens(cache, np.zeros((3, 2, 12, 5)))
    with pytest.raises(ValueError, match="labels has"):
        lens.activation_lens(cache, np.zeros((3, 2, 12, model.cfg.d_model)), ["a"])
    _, small = run(model, tokens, names_filter=lambda n: "resid_pre" in n)
    with pytest.raises(ValueError, match="hook_resid_post"):
        lens.logit_lens(small, sites="resid_pre")
    assert list(cache.keys()) == keys
    res = lens.logit_lens(cache, tokens)
    with pytest.raises(IndexError, match="pos"):
        res.table(pos=50)
    with pytest.raises(ValueError, match="metric"):
        res.plot_heatmap("loss")
    none = lens.logit_lens(cache, tokens, target=None)
    with pytest.raises(ValueError, match="needs a target"):
        none.plot_heatmap("rank")
