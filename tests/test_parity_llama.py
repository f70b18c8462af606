"""LLaMA-family parity (Llama, Mistral, Qwen2): glassbox vs Hugging Face and vs TransformerLens on
identical random weights.

Tolerance (fp32): every comparison asserts max |glassbox - reference| <= ATOL = 1e-4 (absolute)
over all finite entries, with identical positions of -inf / NaN. For the processed model
(``center_unembed`` shifts logits by a per-position constant) logits are compared with HF through
log_softmax; with TL they are compared directly (TL processes the same way).

The fixtures cover GQA ratios 1, 3 and 4 (8/8, 9/3, 8/2 heads), odd sizes (head_dim 10, 12 and an
explicit ``head_dim=14`` that differs from hidden/heads; d_mlp 131), Mistral with a sliding window
shorter than the test sequence, Qwen2 with q/k/v biases, Llama-3 ("llama3") and linear rope
scaling, and tied embeddings. HF Llama has no partial rotary, so rotary_dim == d_head throughout.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest

import helpers_llama as hl
from helpers_models import max_abs_diff, to_np

torch = pytest.importorskip("torch")
pytest.importorskip("transformer_lens")
pytest.importorskip("transformers")

warnings.filterwarnings("ignore", category=DeprecationWarning)
logging.getLogger().setLevel(logging.ERROR)

ATOL = 1e-4
B, P = 2, 20

SPECS = [
    hl.spec("llama-mha-8x8", hidden_size=96, num_attention_heads=8, num_key_value_heads=8,
            intermediate_size=160, vocab_size=151, seed=0),
    hl.spec("llama-gqa-9x3", hidden_size=90, num_attention_heads=9, num_key_value_heads=3,
            intermediate_size=131, vocab_size=103, seed=1),
    hl.spec("llama-gqa-8x2-hd14", hidden_size=64, num_attention_heads=8, num_key_value_heads=2,
            intermediate_size=100, seed=2, extra={"head_dim": 14}),
    hl.spec("mistral-window7", arch="mistral", seed=3, extra={"sliding_window": 7, "rope_theta": 1e6}),
    hl.spec("qwen2-bias", arch="qwen2", hidden_size=72, num_attention_heads=6, num_key_value_heads=2,
            seed=4, extra={"rope_theta": 1e6}),
    hl.spec("llama3-rope", seed=5, extra={"rope_theta": 500000.0, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}}),
    hl.spec("llama-linear-rope", seed=6, extra={"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    hl.spec("llama-tied", seed=7, num_key_value_heads=4, extra={"tie_word_embeddings": True}),
]
SPEC_IDS = [s.name for s in SPECS]
BY_NAME = {s.name: s for s in SPECS}
GQA_SPECS = [s for s in SPECS if s.G != s.H]


class LlamaZoo:
    """Folders, HF, TL and glassbox models built once per session (shared: undo any change)."""

    def __init__(self, root: Path):
        self.root = root
        self._cache = {}

    def _get(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def folder(self, s):
        return self._get(("folder", s), lambda: hl.save_folder(s, self.root / s.key()))

    def hf(self, s):
        return self._get(("hf", s), lambda: hl.load_hf(self.folder(s)))

    def tl(self, s, processed=True, **flags):
        key = ("tl", s, processed, tuple(sorted(flags.items())))
        return self._get(key, lambda: hl.load_tl(self.hf(s), processed=processed, **flags))

    def gb(self, s, processed=True, fresh=False, **kw):
        from glassbox import HookedTransformer

        def make():
            load = HookedTransformer.from_pretrained if processed else HookedTransformer.from_pretrained_no_processing
            return load(str(self.folder(s)), **kw)

        if fresh:
            return make()
        return self._get(("gb", s, processed, tuple(sorted(kw.items()))), make)


@pytest.fixture(scope="session")
def lzoo(fixture_root) -> LlamaZoo:
    root = fixture_root / "llama"
    root.mkdir(parents=True, exist_ok=True)
    return LlamaZoo(root)


def assert_close(got, ref, what: str, atol: float = ATOL) -> float:
    got_np, ref_np = to_np(got), to_np(ref)
    assert tuple(got_np.shape) == tuple(ref_np.shape), (
        f"{what}: shape {tuple(got_np.shape)} != reference {tuple(ref_np.shape)}")
    err = max_abs_diff(got_np, ref_np)
    assert err <= atol, (
        f"{what}: max abs error {err:.3g} > {atol:g} (reference max |x| = "
        f"{np.nanmax(np.abs(np.where(np.isfinite(ref_np), ref_np, 0))):.3g})")
    return err


def log_softmax(x):
    x = to_np(x).astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def tokens_for(s, seed=0, shape=(B, P)):
    return np.random.default_rng(seed).integers(0, s.vocab_size, size=shape, dtype=np.int64)


def hf_logits(lzoo, s, toks, attention_mask=None, position_ids=None):
    kw = {}
    if attention_mask is not None:
        kw["attention_mask"] = torch.as_tensor(attention_mask)
    if position_ids is not None:
        kw["position_ids"] = torch.as_tensor(position_ids)
    with torch.no_grad():
        return lzoo.hf(s)(torch.as_tensor(toks), **kw).logits.numpy()


def compare_caches(gb_cache, tl_cache, what, atol=ATOL):
    gb_keys, tl_keys = list(gb_cache.keys()), list(tl_cache.keys())
    missing = [k for k in tl_keys if k not in gb_keys]
    extra = [k for k in gb_keys if k not in tl_keys]
    assert not missing and not extra, f"{what}: missing keys {missing[:8]}, extra keys {extra[:8]}"
    assert gb_keys == tl_keys, f"{what}: same key set but different order"
    worst, worst_key = 0.0, None
    for k in tl_keys:
        err = assert_close(gb_cache[k], tl_cache[k], f"{what}: cache[{k!r}]", atol=atol)
        if err > worst:
            worst, worst_key = err, k
    return worst, worst_key


# ------------------------------------------------------------------------------------------
# logits


@pytest.mark.parametrize("s", SPECS, ids=SPEC_IDS)
def test_logits_unprocessed_vs_hf_and_tl(lzoo, s):
    toks = tokens_for(s, seed=1)
    gb = lzoo.gb(s, processed=False)
    out = gb(toks)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert_close(out, hf_logits(lzoo, s, toks), f"{s.name}: logits vs HF (unprocessed)")
    with torch.no_grad():
        ref_tl = lzoo.tl(s, processed=False)(torch.as_tensor(toks))
    assert_close(out, ref_tl, f"{s.name}: logits vs TL (unprocessed)")


@pytest.mark.parametrize("s", SPECS, ids=SPEC_IDS)
def test_logits_processed_vs_hf_and_tl(lzoo, s):
    toks = tokens_for(s, seed=2)
    gb = lzoo.gb(s, processed=True)
    assert gb.cfg.normalization_type == "RMSPre"
    out = gb(toks)
    assert_close(log_softmax(out), log_softmax(hf_logits(lzoo, s, toks)),
                 f"{s.name}: log_softmax vs HF (processed)")
    with torch.no_grad():
        ref_tl = lzoo.tl(s, processed=True)(torch.as_tensor(toks))
    assert_close(out, ref_tl, f"{s.name}: logits vs TL (processed)")
    assert np.abs(to_np(out).mean(-1)).max() < 1e-4, "center_unembed: logits not centred"


def test_sliding_window_matters(lzoo):
    """The Mistral fixture's window (7) is shorter than the sequence, and changes the output."""
    s = BY_NAME["mistral-window7"]
    gb = lzoo.gb(s, processed=False)
    assert gb.cfg.use_local_attn and gb.cfg.window_size == 7 and P > 7
    _, cache = gb.run_with_cache(tokens_for(s, seed=3), names_filter="blocks.0.attn.hook_pattern")
    pat = to_np(cache["blocks.0.attn.hook_pattern"])
    assert np.all(pat[:, :, 10, :4] == 0) and np.all(pat[:, :, 10, 4:11] > 0)


# ------------------------------------------------------------------------------------------
# every hook


@pytest.mark.parametrize("processed", [False, True], ids=["unprocessed", "processed"])
@pytest.mark.parametrize("s", SPECS, ids=SPEC_IDS)
def test_run_with_cache_every_hook_vs_tl(lzoo, s, processed):
    toks = tokens_for(s, seed=4)
    gb, tl = lzoo.gb(s, processed=processed), lzoo.tl(s, processed=processed)
    gb_logits, gb_cache = gb.run_with_cache(toks)
    with torch.no_grad():
        tl_logits, tl_cache = tl.run_with_cache(torch.as_tensor(toks))
    assert_close(gb_logits, tl_logits, "run_with_cache logits")
    worst, key = compare_caches(gb_cache, tl_cache, f"{s.name} processed={processed}")
    print(f"{s.name} processed={processed}: worst hook error {worst:.2e} at {key}")


@pytest.mark.parametrize("s", GQA_SPECS, ids=[x.name for x in GQA_SPECS])
def test_gqa_hook_shapes(lzoo, s):
    """hook_k / hook_v / hook_rot_k keep the G un-repeated kv heads; q, z and patterns have H."""
    gb = lzoo.gb(s)
    _, c = gb.run_with_cache(tokens_for(s, seed=5))
    d = s.d_head
    for name, shape in [("attn.hook_q", (B, P, s.H, d)), ("attn.hook_k", (B, P, s.G, d)),
                        ("attn.hook_v", (B, P, s.G, d)), ("attn.hook_rot_q", (B, P, s.H, d)),
                        ("attn.hook_rot_k", (B, P, s.G, d)), ("attn.hook_z", (B, P, s.H, d)),
                        ("attn.hook_attn_scores", (B, s.H, P, P)), ("attn.hook_pattern", (B, s.H, P, P)),
                        ("mlp.hook_pre_linear", (B, P, s.intermediate_size)),
                        ("ln1.hook_scale", (B, P, 1))]:
        assert tuple(c[f"blocks.1.{name}"].shape) == shape, name
    assert tuple(gb.blocks[0].attn._W_K.shape) == (s.G, s.hidden_size, d)
    assert tuple(gb.blocks[0].attn.W_K.shape) == (s.H, s.hidden_size, d)
    assert tuple(gb.W_V.shape) == (s.num_hidden_layers, s.H, s.hidden_size, d)


@pytest.mark.parametrize("s", GQA_SPECS[:2] + [BY_NAME["qwen2-bias"]], ids=lambda x: x.name)
def test_ungroup_grouped_query_attention_vs_tl(lzoo, s):
    toks = tokens_for(s, seed=6)
    gb = lzoo.gb(s, processed=False, fresh=True)
    tl = lzoo.tl(s, processed=False)
    base = to_np(gb(toks)).copy()
    try:
        gb.set_ungroup_grouped_query_attention(True)
        tl.set_ungroup_grouped_query_attention(True)
        gb_logits, gb_cache = gb.run_with_cache(toks)
        with torch.no_grad():
            _, tl_cache = tl.run_with_cache(torch.as_tensor(toks))
        assert tuple(gb_cache["blocks.0.attn.hook_k"].shape) == (B, P, s.H, s.d_head)
        assert tuple(gb_cache["blocks.0.attn.hook_rot_k"].shape) == (B, P, s.H, s.d_head)
        compare_caches(gb_cache, tl_cache, f"{s.name} ungrouped")
        assert_close(gb_logits, base, "ungrouping changes logits", atol=1e-5)
        # an in-place edit of the grouped weights still reaches the ungrouped computation
        gb.blocks[0].attn._W_V[...] = 0
        _, c2 = gb.run_with_cache(toks, names_filter="blocks.0.attn.hook_v")
        b_V = to_np(gb.blocks[0].attn.b_V)
        np.testing.assert_allclose(to_np(c2["blocks.0.attn.hook_v"]), np.broadcast_to(b_V, (B, P) + b_V.shape),
                                   atol=1e-6)
    finally:
        tl.set_ungroup_grouped_query_attention(False)


@pytest.mark.parametrize("s", [BY_NAME["llama-gqa-9x3"], BY_NAME["qwen2-bias"]], ids=lambda x: x.name)
def test_flag_gated_hooks_gqa_vs_tl(lzoo, s):
    """split_qkv_input (k/v inputs with G heads), attn_result and hook_mlp_in vs TL."""
    toks = tokens_for(s, seed=7)
    gb, tl = lzoo.gb(s, fresh=True), lzoo.tl(s, processed=True)
    setters = ["set_use_split_qkv_input", "set_use_attn_result", "set_use_hook_mlp_in"]
    try:
        for name in setters:
            getattr(gb, name)(True)
            getattr(tl, name)(True)
        _, gb_cache = gb.run_with_cache(toks)
        with torch.no_grad():
            _, tl_cache = tl.run_with_cache(torch.as_tensor(toks))
        assert tuple(gb_cache["blocks.0.hook_k_input"].shape) == (B, P, s.G, s.hidden_size)
        assert tuple(gb_cache["blocks.0.hook_q_input"].shape) == (B, P, s.H, s.hidden_size)
        compare_caches(gb_cache, tl_cache, f"{s.name} split_qkv+attn_result+mlp_in")
    finally:
        for name in setters:
            getattr(tl, name)(False)
    with pytest.raises(AssertionError, match="GroupedQueryAttention"):
        gb.set_use_attn_in(True)


# ------------------------------------------------------------------------------------------
# padding


@pytest.mark.parametrize("s", [BY_NAME["llama-gqa-9x3"], BY_NAME["mistral-window7"],
                               BY_NAME["qwen2-bias"]], ids=lambda x: x.name)
def test_left_padded_batch(lzoo, s):
    """tokens + attention_mask with left padding: logits and every hook == TL at all positions;
    logits == HF (position ids cumsum(mask)-1, as TL) at the non-pad positions."""
    toks = tokens_for(s, seed=8, shape=(3, P))
    mask = np.ones_like(toks)
    mask[0, :6] = 0
    mask[2, :13] = 0
    gb, tl = lzoo.gb(s, processed=False), lzoo.tl(s, processed=False)
    gb_logits, gb_cache = gb.run_with_cache(toks, attention_mask=mask)
    with torch.no_grad():
        tl_logits, tl_cache = tl.run_with_cache(torch.as_tensor(toks), attention_mask=torch.as_tensor(mask))
    keep = mask.astype(bool)
    assert_close(to_np(gb_logits)[keep], to_np(tl_logits)[keep], f"{s.name} left-padded logits vs TL")
    compare_caches(gb_cache, tl_cache, f"{s.name} left-padded")
    pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    ref = hf_logits(lzoo, s, toks, attention_mask=mask, position_ids=pos)
    assert_close(to_np(gb_logits)[keep], ref[keep], f"{s.name} left-padded logits vs HF")
    # the unpadded row is unaffected by the others
    assert_close(to_np(gb_logits)[1], to_np(gb(toks[1:2]))[0], "row without padding", atol=1e-5)


# ------------------------------------------------------------------------------------------
# run_with_hooks edits


@pytest.mark.parametrize("s", [BY_NAME["llama-gqa-8x2-hd14"], BY_NAME["qwen2-bias"],
                               BY_NAME["llama-mha-8x8"]], ids=lambda x: x.name)
def test_run_with_hooks_edits_vs_tl(lzoo, s):
    """Zero one head through hook_z (in place) and patch hook_rot_k from another run (returned
    tensor): same logits as TL with the same hooks, and different from the clean run."""
    toks = torch.as_tensor(tokens_for(s, seed=9))
    other = torch.as_tensor(tokens_for(s, seed=10))
    gb, tl = lzoo.gb(s), lzoo.tl(s, processed=True)
    _, gb_c = gb.run_with_cache(other, names_filter="blocks.1.attn.hook_rot_k")
    with torch.no_grad():
        _, tl_c = tl.run_with_cache(other, names_filter="blocks.1.attn.hook_rot_k")
    donor_gb = to_np(gb_c["blocks.1.attn.hook_rot_k"]).copy()
    donor_tl = tl_c["blocks.1.attn.hook_rot_k"].clone()
    assert_close(donor_gb, donor_tl, "donor rot_k")

    def zero_head(z, hook):
        z[:, :, 1] = 0

    def patch_rot_k(donor):
        def fn(k, hook):
            out = k.clone() if hasattr(k, "clone") else k.copy()
            out[:, 5:, 0] = torch.as_tensor(donor)[:, 5:, 0] if hasattr(out, "clone") else donor[:, 5:, 0]
            return out
        return fn

    clean = to_np(gb(toks)).copy()
    for hooks_gb, hooks_tl in [
        ([("blocks.0.attn.hook_z", zero_head)], [("blocks.0.attn.hook_z", zero_head)]),
        ([("blocks.1.attn.hook_rot_k", patch_rot_k(donor_gb))], [("blocks.1.attn.hook_rot_k", patch_rot_k(donor_tl))]),
        ([("blocks.0.attn.hook_z", zero_head), ("blocks.1.attn.hook_rot_k", patch_rot_k(donor_gb))],
         [("blocks.0.attn.hook_z", zero_head), ("blocks.1.attn.hook_rot_k", patch_rot_k(donor_tl))]),
    ]:
        out = gb.run_with_hooks(toks, fwd_hooks=hooks_gb)
        with torch.no_grad():
            ref = tl.run_with_hooks(toks, fwd_hooks=hooks_tl)
        assert_close(out, ref, f"{s.name} run_with_hooks {[n for n, _ in hooks_gb]}")
        assert max_abs_diff(out, clean) > 1e-3, "the edit had no effect"
    assert_close(gb(toks), clean, "hooks removed after run_with_hooks", atol=0)


@pytest.mark.parametrize("s", [BY_NAME["llama-gqa-9x3"], BY_NAME["llama-tied"]], ids=lambda x: x.name)
def test_stop_at_layer_and_loss_vs_tl(lzoo, s):
    toks = torch.as_tensor(tokens_for(s, seed=11))
    gb, tl = lzoo.gb(s), lzoo.tl(s, processed=True)
    with torch.no_grad():
        assert_close(gb(toks, stop_at_layer=1), tl(toks, stop_at_layer=1), "stop_at_layer=1")
        assert_close(gb(toks, return_type="loss").double(), tl(toks, return_type="loss").double(), "loss")
