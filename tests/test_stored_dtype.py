"""LLaMA-family weights kept in their stored dtype (bf16 / f16) and virtual weight processing.

``from_pretrained(path, dtype="bfloat16" | "float16" | "auto")`` keeps the big matrices as
:class:`~glassbox.loading.stored.StoredMatrix` (memory-mapped file rows) and computes in float32.
References, all on the very same (bf16- or f16-rounded) weight values:

* HF in float32 (the checkpoint up-cast exactly): logits, and log_softmax when processed;
* TransformerLens in float32, built from that up-cast HF model with TL's converter and processing:
  every ``run_with_cache`` hook, logits, ``state_dict()`` and the W_* accessors;
* glassbox's own float32 path (``dtype="float32"`` on the same file).

Tolerance: ATOL = 1e-4 absolute for every activation (both sides compute in float32 on identical
values; only summation order differs), 1e-6 for weights read back.
"""
from __future__ import annotations

import logging
import warnings

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
B, P = 2, 18

SPECS = [
    hl.spec("bf-llama-gqa-8x2-hd14", hidden_size=64, num_attention_heads=8, num_key_value_heads=2,
            intermediate_size=100, seed=21, extra={"head_dim": 14}),
    hl.spec("bf-qwen2-bias", arch="qwen2", hidden_size=72, num_attention_heads=6, num_key_value_heads=2,
            seed=22, extra={"rope_theta": 1e6}),
    hl.spec("bf-mistral-window", arch="mistral", seed=23, extra={"sliding_window": 6}),
    hl.spec("bf-llama-tied-mha", num_key_value_heads=4, seed=24, extra={"tie_word_embeddings": True}),
]
BY_NAME = {s.name: s for s in SPECS}
QWEN = BY_NAME["bf-qwen2-bias"]


class StoredZoo:
    def __init__(self, root):
        self.root = root
        self._c = {}

    def _get(self, key, make):
        if key not in self._c:
            self._c[key] = make()
        return self._c[key]

    def folder(self, s, dtype="bfloat16"):
        return self._get(("folder", s, dtype),
                         lambda: hl.save_folder(s, self.root / f"{s.key()}-{dtype}", dtype=dtype))

    def hf(self, s, dtype="bfloat16"):
        """HF computing in float32 on the stored (rounded) values."""
        return self._get(("hf", s, dtype), lambda: hl.load_hf(self.folder(s, dtype), dtype="float32"))

    def tl(self, s, processed, dtype="bfloat16"):
        return self._get(("tl", s, processed, dtype), lambda: hl.load_tl(self.hf(s, dtype), processed=processed))

    def gb(self, s, processed, load_dtype="bfloat16", file_dtype="bfloat16", fresh=False):
        from glassbox import HookedTransformer

        def make():
            load = HookedTransformer.from_pretrained if processed else HookedTransformer.from_pretrained_no_processing
            return load(str(self.folder(s, file_dtype)), dtype=load_dtype)

        return make() if fresh else self._get(("gb", s, processed, load_dtype, file_dtype), make)


@pytest.fixture(scope="session")
def szoo(fixture_root):
    root = fixture_root / "stored"
    root.mkdir(parents=True, exist_ok=True)
    return StoredZoo(root)


def assert_close(got, ref, what, atol=ATOL):
    got_np, ref_np = to_np(got), to_np(ref)
    assert tuple(got_np.shape) == tuple(ref_np.shape), f"{what}: shape {got_np.shape} != {ref_np.shape}"
    err = max_abs_diff(got_np, ref_np)
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol:g}"
    return err


def log_softmax(x):
    x = to_np(x).astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def tokens_for(s, seed=0, shape=(B, P)):
    return np.random.default_rng(seed).integers(0, s.vocab_size, size=shape, dtype=np.int64)


def _memmapped(arr) -> bool:
    from glassbox.loading.mapped import mapped_file_of

    return mapped_file_of(arr) is not None


# ------------------------------------------------------------------------------------------
# storage


def test_matrices_stay_stored_and_memory_mapped(szoo):
    from glassbox.loading.stored import StoredMatrix

    s = BY_NAME["bf-llama-gqa-8x2-hd14"]
    gb = szoo.gb(s, processed=True)
    assert gb.has_stored_weights
    raw = gb._state_dict_np()
    for name in ("embed.W_E", "blocks.0.attn.W_Q", "blocks.0.attn._W_K", "blocks.1.attn.W_O",
                 "blocks.1.mlp.W_in", "blocks.1.mlp.W_gate", "blocks.1.mlp.W_out", "unembed.W_U"):
        sm = raw[name]
        assert isinstance(sm, StoredMatrix) and sm.dtype == "BF16", name
        assert _memmapped(sm.storage), f"{name}: not a view of the memory-mapped file"
    for name in ("blocks.0.attn.b_Q", "blocks.0.attn.b_O", "unembed.b_U"):
        assert isinstance(raw[name], np.ndarray) and raw[name].dtype == np.float32, name
    # processed: the norms are parameter-free for the user, as in TL
    assert gb.cfg.normalization_type == "RMSPre"
    assert not any(".ln" in k for k in gb.state_dict())
    # tied embeddings share one storage
    t = szoo.gb(BY_NAME["bf-llama-tied-mha"], processed=False)._state_dict_np()
    assert np.shares_memory(t["embed.W_E"].storage, t["unembed.W_U"].storage)


def test_dtype_auto_float16_and_rounding(szoo):
    """dtype="auto" keeps what the file holds; "float16" keeps an f16 file as is; "bfloat16" on a
    float32 file rounds in memory (same result as the bf16 file); "auto" on a float32 file gives
    plain editable float32 arrays."""
    from glassbox.loading.stored import StoredMatrix

    s = BY_NAME["bf-llama-gqa-8x2-hd14"]
    toks = tokens_for(s, seed=1)
    auto = szoo.gb(s, processed=False, load_dtype="auto")
    assert auto._state_dict_np()["blocks.0.attn.W_Q"].dtype == "BF16"
    assert_close(auto(toks), szoo.gb(s, processed=False)(toks), "auto vs bfloat16", atol=0)

    f16 = szoo.gb(s, processed=False, load_dtype="float16", file_dtype="float16")
    assert f16._state_dict_np()["blocks.0.attn.W_Q"].dtype == "F16"
    with torch.no_grad():
        ref = szoo.hf(s, "float16")(torch.as_tensor(toks)).logits.numpy()
    assert_close(f16(toks), ref, "f16 weights vs HF fp32 on the same values")

    # (matrices only: the norm weights of the float32 file stay float32, unlike the bf16 file's)
    rounded = szoo.gb(s, processed=False, load_dtype="bfloat16", file_dtype="float32")._state_dict_np()
    stored = szoo.gb(s, processed=False)._state_dict_np()
    for k, sm in rounded.items():
        if isinstance(sm, StoredMatrix):
            assert sm.dtype == "BF16" and not _memmapped(sm.storage), k
            np.testing.assert_array_equal(np.asarray(sm.storage).view(np.uint16),
                                          np.asarray(stored[k].storage).view(np.uint16), err_msg=k)
    plain = szoo.gb(s, processed=False, load_dtype="auto", file_dtype="float32")
    assert not plain.has_stored_weights


# ------------------------------------------------------------------------------------------
# numerics


@pytest.mark.parametrize("processed", [False, True], ids=["unprocessed", "processed"])
@pytest.mark.parametrize("s", SPECS, ids=[x.name for x in SPECS])
def test_bf16_vs_hf_tl_and_fp32_path(szoo, s, processed):
    toks = tokens_for(s, seed=2)
    gb = szoo.gb(s, processed)
    logits, cache = gb.run_with_cache(toks)
    with torch.no_grad():
        ref_hf = szoo.hf(s)(torch.as_tensor(toks)).logits.numpy()
        tl_logits, tl_cache = szoo.tl(s, processed).run_with_cache(torch.as_tensor(toks))
    if processed:
        e_hf = assert_close(log_softmax(logits), log_softmax(ref_hf), f"{s.name}: log_softmax vs HF")
        assert np.abs(to_np(logits).mean(-1)).max() < 1e-4, "center_unembed: logits not centred"
    else:
        e_hf = assert_close(logits, ref_hf, f"{s.name}: logits vs HF")
    e_tl = assert_close(logits, tl_logits, f"{s.name}: logits vs TL")
    assert list(cache.keys()) == list(tl_cache.keys())
    worst = max(assert_close(cache[k], tl_cache[k], f"{s.name}: cache[{k!r}] vs TL") for k in tl_cache.keys())
    # our own float32 path on the same file (weights up-cast and processed for real)
    fp32 = szoo.gb(s, processed, load_dtype="float32")
    logits32, cache32 = fp32.run_with_cache(toks)
    e_32 = assert_close(logits, logits32, f"{s.name}: logits vs glassbox fp32 path")
    for k in cache32.keys():
        assert_close(cache[k], cache32[k], f"{s.name}: cache[{k!r}] vs glassbox fp32 path")
    print(f"{s.name} processed={processed}: HF {e_hf:.2e}, TL logits {e_tl:.2e}, TL hooks {worst:.2e}, "
          f"fp32 path {e_32:.2e}")


@pytest.mark.parametrize("s", [QWEN, BY_NAME["bf-llama-tied-mha"]], ids=lambda x: x.name)
def test_weights_read_back_as_tl_processed(szoo, s):
    """state_dict() and the W_* accessors equal TL's processed weights (fold_ln products, centred
    W_U, value biases folded into b_O) although nothing stored was edited."""
    gb, tl = szoo.gb(s, True), szoo.tl(s, True)
    ref = {k: v.detach().numpy() for k, v in tl.state_dict().items()
           if not k.endswith((".mask", ".IGNORE", "rotary_sin", "rotary_cos"))}
    ours = gb.state_dict()
    assert sorted(ours) == sorted(ref)
    for k in ref:
        assert_close(ours[k], ref[k], f"state_dict()[{k!r}]", atol=1e-6)
    for attr in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out", "W_U", "W_E", "b_O", "b_V"):
        assert_close(getattr(gb, attr), getattr(tl, attr).detach(), f"model.{attr}", atol=1e-6)
    assert_close(gb.blocks[1].attn.W_K, tl.blocks[1].attn.W_K.detach(), "blocks[1].attn.W_K", atol=1e-6)
    if s is QWEN:
        assert np.abs(to_np(gb.b_V)).max() == 0 and np.abs(to_np(gb.b_O)).max() > 0


def test_stored_weights_cannot_be_edited(szoo):
    s = BY_NAME["bf-llama-gqa-8x2-hd14"]
    gb = szoo.gb(s, True, fresh=True)
    toks = tokens_for(s, seed=3)
    before = to_np(gb(toks)).copy()
    import glassbox

    glassbox.set_array_backend("numpy")
    try:
        W_Q = gb.blocks[0].attn.W_Q
        with pytest.raises(ValueError, match="read-only"):
            W_Q[0] = 0
    finally:
        glassbox.set_array_backend("auto")
    with pytest.raises(TypeError, match="stored dtype.*dtype='float32'"):
        gb.blocks[0].attn.W_Q = np.zeros(W_Q.shape, np.float32)
    with pytest.raises(TypeError, match="stored dtype"):
        gb.blocks[0].mlp.W_in = np.zeros((s.hidden_size, s.intermediate_size), np.float32)
    # small float32 parameters stay editable
    gb.blocks[0].attn.b_O = np.ones(s.hidden_size, np.float32)
    assert max_abs_diff(gb(toks), before) > 1e-3
    # a complete float32 state dict replaces the stored weights (and the model stays equivalent)
    gb.blocks[0].attn.b_O = np.zeros(s.hidden_size, np.float32)
    gb.load_state_dict(szoo.gb(s, True).state_dict())
    assert not gb.has_stored_weights
    assert_close(gb(toks), szoo.gb(s, True)(toks), "after load_state_dict(float32 copies)")


@pytest.mark.parametrize("s", [QWEN, BY_NAME["bf-llama-gqa-8x2-hd14"]], ids=lambda x: x.name)
def test_hooks_edits_on_processed_bf16_vs_tl(szoo, s):
    """Edits at unembed.hook_in (the folded ln_final's output), ln_final.hook_normalized, hook_z
    and hook_rot_k on the virtually processed model == the same edits on TL's processed model."""
    toks = torch.as_tensor(tokens_for(s, seed=4))
    gb, tl = szoo.gb(s, True), szoo.tl(s, True)

    def scale_in(x, hook):
        x[:, 3:] *= 0.5

    def patch_norm(x, hook):
        out = x.clone()
        out[:, :, :5] = 1.0
        return out

    def zero_head(z, hook):
        z[:, :, 0] = 0

    def rot_k(k, hook):
        return k * 1.5

    cases = [[("unembed.hook_in", scale_in)], [("ln_final.hook_normalized", patch_norm)],
             [("ln_final.hook_normalized", patch_norm), ("unembed.hook_in", scale_in)],
             [("blocks.0.attn.hook_z", zero_head), ("blocks.1.attn.hook_rot_k", rot_k)]]
    clean = to_np(gb(toks)).copy()
    for hooks in cases:
        out = gb.run_with_hooks(toks, fwd_hooks=hooks)
        with torch.no_grad():
            ref = tl.run_with_hooks(toks, fwd_hooks=hooks)
        assert_close(out, ref, f"run_with_hooks {[n for n, _ in hooks]}")
        assert max_abs_diff(out, clean) > 1e-3
    # a hook and the cache on unembed.hook_in together
    seen = {}

    def keep(x, hook):
        seen["x"] = to_np(x).copy()

    gb.add_hook("unembed.hook_in", keep)
    try:
        _, cache = gb.run_with_cache(toks, names_filter=lambda n: n.startswith(("ln_final", "unembed")))
    finally:
        gb.reset_hooks()
    with torch.no_grad():
        _, tl_cache = tl.run_with_cache(toks, names_filter=lambda n: n.startswith(("ln_final", "unembed")))
    assert list(cache.keys()) == list(tl_cache.keys())
    for k in tl_cache.keys():
        assert_close(cache[k], tl_cache[k], f"cache[{k!r}]")
    assert_close(seen["x"], tl_cache["unembed.hook_in"], "hook sees the normalized vector")


@pytest.mark.parametrize("s", [QWEN, BY_NAME["bf-llama-gqa-8x2-hd14"]], ids=lambda x: x.name)
def test_ungroup_and_process_weights_on_stored(szoo, s):
    toks = tokens_for(s, seed=5)
    gb = szoo.gb(s, False, fresh=True)
    tl = szoo.tl(s, False)
    try:
        gb.set_ungroup_grouped_query_attention(True)
        tl.set_ungroup_grouped_query_attention(True)
        _, c = gb.run_with_cache(toks)
        with torch.no_grad():
            _, t = tl.run_with_cache(torch.as_tensor(toks))
        assert tuple(c["blocks.0.attn.hook_v"].shape) == (B, P, s.H, s.d_head)
        for k in t.keys():
            assert_close(c[k], t[k], f"ungrouped cache[{k!r}]")
    finally:
        tl.set_ungroup_grouped_query_attention(False)
    gb.set_ungroup_grouped_query_attention(False)
    # process_weights_ on a model loaded without processing == from_pretrained's processing
    gb.process_weights_()
    assert gb.cfg.normalization_type == "RMSPre" and gb.has_stored_weights
    assert_close(gb(toks), szoo.gb(s, True)(toks), "process_weights_() vs from_pretrained", atol=1e-5)


# ------------------------------------------------------------------------------------------
# bad input


def test_refactor_rotary_refused(szoo):
    from glassbox import HookedTransformer
    from glassbox.loading import RotaryRefactorError

    s = BY_NAME["bf-llama-gqa-8x2-hd14"]
    for dtype in ("bfloat16", "float32"):
        with pytest.raises(RotaryRefactorError, match="rotary.*refactor_factored_attn_matrices=False"):
            HookedTransformer.from_pretrained(str(szoo.folder(s)), dtype=dtype,
                                              refactor_factored_attn_matrices=True)
    with pytest.raises(AssertionError):  # TL's exception type is kept (RotaryRefactorError is one)
        HookedTransformer.from_pretrained(str(szoo.folder(s)), refactor_factored_attn_matrices=True)


def test_bad_dtype_and_config_shapes(szoo, tmp_path):
    import json
    import shutil

    from glassbox import HookedTransformer

    s = BY_NAME["bf-llama-gqa-8x2-hd14"]
    with pytest.raises(ValueError, match="float32.*bfloat16.*float16.*auto"):
        HookedTransformer.from_pretrained(str(szoo.folder(s)), dtype="int8")
    d = tmp_path / "bad"
    shutil.copytree(szoo.folder(s), d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 120}))
    for dtype in ("bfloat16", "float32"):
        with pytest.raises(ValueError, match=r"up_proj\.weight' has shape \(100, 64\).*implies \(120, 64\)"):
            HookedTransformer.from_pretrained(str(d), dtype=dtype)
    (d / "config.json").write_text(json.dumps({**cfg, "num_key_value_heads": 4}))
    with pytest.raises(ValueError, match=r"k_proj\.weight' has shape \(28, 64\).*implies \(56, 64\)"):
        HookedTransformer.from_pretrained(str(d), dtype="bfloat16")
    (d / "config.json").write_text(json.dumps({**cfg, "architectures": ["PhiForCausalLM"]}))
    with pytest.raises(ValueError, match="PhiForCausalLM.*supported.*LlamaForCausalLM.*MistralForCausalLM"
                                         ".*Qwen2ForCausalLM"):
        HookedTransformer.from_pretrained(str(d), dtype="bfloat16")
