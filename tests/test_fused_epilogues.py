"""Fused GEMM epilogues (kernels.h's gb_epilogue, `_C.gemm(act=, gate=, residual=)`) and the
forward's use of them (`_C.set_fused_epilogues`).

The blocked GEMM applies bias + activation, act(gate) * up and the residual add to each tile
right after its last K block, while the tile is in cache; the small-M, int8 and scalar paths
run the same steps after the product. Every step is the same elementwise float operation as
the separate pass (gb_activation, gb_gated_activation, gb_add), so the contract is **bitwise
equality** with the unfused passes: on every ISA, path (M <= 8 streaming and dot kernels,
blocked with several K blocks, GGUF blocks, int8 activations), thread count, and in whole
forwards of GPT-2 (GELU, biases) and Llama (SwiGLU, GQA, bf16 weights) with and without hooks.
The separate passes are themselves tested against NumPy / torch (test_kernel_ops.py); here a
NumPy float64 reference also bounds the fused result directly (rtol 1e-4 + atol 1e-5)."""
from __future__ import annotations

import numpy as np
import pytest

import helpers_llama as hl
import helpers_models as hm

import glassbox
from glassbox import HookedTransformer, _C

F32 = np.float32
ISAS = [i for i in ("scalar", "avx2", "avx512") if _C.isa_supported(i)]
ACTS = ["relu", "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "silu"]
# (M, K, N): the M <= 8 streaming/dot paths, one tile, ragged tiles, several K blocks (K > 384)
# and a GEMM big enough for two threads and several column rounds of 4096
SHAPES = [(1, 64, 100), (5, 70, 33), (8, 96, 48), (9, 70, 33), (37, 800, 257), (130, 768, 4200)]


def np_act(x, name):
    x = x.astype(np.float64)
    if name == "relu":
        return np.maximum(x, 0)
    if name == "gelu":
        from math import erf
        return 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    return x / (1 + np.exp(-x))


def operands(M, K, N, seed=0, trans=False, dtype=F32):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((M, K), dtype=F32)
    B = (rng.standard_normal((N, K) if trans else (K, N), dtype=F32) * 0.06).astype(F32)
    bias = rng.standard_normal(N, dtype=F32)
    gate = rng.standard_normal((M, N), dtype=F32) * 2
    resid = rng.standard_normal((M, N), dtype=F32)
    return A, B, bias, gate, resid


def bf16_bits(W):
    """Round-to-nearest-even bf16 bits of W (uint16), the storage _C.gemm widens exactly."""
    u = W.astype(F32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


@pytest.fixture
def restore_fusion():
    before = _C.fused_epilogues()
    yield
    _C.set_fused_epilogues(**before)


# --------------------------------------------------------------------------- the kernel

@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("layout", ["plain", "trans", "bf16"])
def test_fused_gemm_is_bitwise_the_separate_passes(isa, M, K, N, layout):
    A, B, bias, gate, resid = operands(M, K, N, trans=layout != "plain")
    kw = dict(isa=isa, trans=layout != "plain")
    if layout == "bf16":
        B = bf16_bits(B)
    plain = _C.gemm(A, B, bias, **kw)
    up = _C.gemm(A, B, None, **kw)
    for act in ACTS:
        got = _C.gemm(A, B, bias, act=act, **kw)
        assert np.array_equal(got, _C.activation(plain, act)), f"{act} differs from gemm + activation"
        got = _C.gemm(A, B, None, act=act, gate=gate, **kw)
        assert np.array_equal(got, _C.gated_activation(gate, up, act)), f"gated {act} differs"
    r = resid.copy()
    got = _C.gemm(A, B, bias, residual=r, **kw)
    assert np.array_equal(got, plain)  # C keeps sum + bias
    assert np.array_equal(r, resid + plain)  # resid += C, the same float add as gb_add
    # all three at once: resid += act(gate) * up
    r = resid.copy()
    got = _C.gemm(A, B, None, act="silu", gate=gate, residual=r, **kw)
    assert np.array_equal(r, resid + _C.gated_activation(gate, up, "silu"))


@pytest.mark.parametrize("M,K,N", [(5, 70, 33), (37, 800, 257)])
def test_fused_gemm_against_numpy(M, K, N):
    """The fused result itself, against float64 NumPy: tolerance rtol 1e-4, atol 1e-5 (fp32
    sums of up to 800 products; the activations' fast tanh/exp are within 2e-7)."""
    A, B, bias, gate, resid = operands(M, K, N)
    pre = A.astype(np.float64) @ B.astype(np.float64)
    for act in ACTS:
        np.testing.assert_allclose(_C.gemm(A, B, bias, act=act), np_act(pre + bias, act),
                                   rtol=1e-4, atol=1e-5, err_msg=act)
        np.testing.assert_allclose(_C.gemm(A, B, None, act=act, gate=gate),
                                   np_act(gate, act) * pre, rtol=1e-4, atol=1e-5, err_msg=act)
    r = resid.copy()
    _C.gemm(A, B, bias, residual=r)
    np.testing.assert_allclose(r, resid + pre + bias, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
def test_fused_gemm_with_accumulate_and_strided_outputs(isa):
    """accumulate= then the epilogue; row strides larger than N on every operand."""
    M, K, N = 20, 400, 70
    A, B, bias, gate, resid = operands(M, K, N, seed=3)
    C0 = np.random.default_rng(4).standard_normal((M, N + 9), dtype=F32)[:, :N]
    want = _C.activation(_C.gemm(A, B, bias, accumulate=C0.copy(), isa=isa), "gelu_new")
    acc = C0.copy()
    got = _C.gemm(A, B, bias, accumulate=acc, act="gelu_new", isa=isa)
    assert got is acc and np.array_equal(got, want)
    gbig = np.zeros((M, N + 5), F32)
    gbig[:, :N] = gate
    rbig = np.zeros((M, N + 3), F32)
    rbig[:, :N] = resid
    got = _C.gemm(A, B, None, act="silu", gate=gbig[:, :N], residual=rbig[:, :N], isa=isa)
    assert np.array_equal(got, _C.gated_activation(gate, _C.gemm(A, B, None, isa=isa), "silu"))
    assert np.array_equal(rbig[:, :N], resid + got) and not rbig[:, N:].any()


gguf = pytest.importorskip("gguf")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("M", [1, 4, 40])
@pytest.mark.parametrize("int8", [False, True])
def test_fused_gemm_gguf_blocks_and_int8(isa, M, int8):
    from gguf import GGMLQuantizationType as QT
    from gguf.quants import quantize
    rng = np.random.default_rng(5)
    K, N = 256, 96
    A = rng.standard_normal((M, K), dtype=F32)
    raw = quantize(rng.standard_normal((N, K)).astype(F32), QT.Q8_0).view(np.uint8).reshape(N, -1)
    gate = rng.standard_normal((M, N), dtype=F32)
    before = glassbox.get_int8_activations()
    glassbox.set_int8_activations(int8)
    try:
        up = _C.gemm(A, raw, None, trans=True, dtype="Q8_0", isa=isa)
        got = _C.gemm(A, raw, None, trans=True, dtype="Q8_0", isa=isa, act="silu", gate=gate)
        assert np.array_equal(got, _C.gated_activation(gate, up, "silu"))
    finally:
        glassbox.set_int8_activations(before)


def test_fused_gemm_two_threads_bitwise_one():
    A, B, bias, gate, resid = operands(130, 768, 4200, seed=6)
    out = {}
    try:
        for n in (1, 2):
            glassbox.set_num_threads(n)
            r = resid.copy()
            out[n] = (_C.gemm(A, B, bias, act="gelu_new"), _C.gemm(A, B, None, act="silu", gate=gate),
                      _C.gemm(A, B, bias, residual=r), r)
    finally:
        glassbox.set_num_threads(0)
    for x, y in zip(out[1], out[2]):
        assert np.array_equal(x, y)


def test_fused_gemm_bad_input_leaves_operands_alone():
    A, B, bias, gate, resid = operands(6, 32, 16)
    r = resid.copy()
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        _C.gemm(A, B, act="swish", residual=r)
    with pytest.raises(ValueError, match="gate= needs act="):
        _C.gemm(A, B, gate=gate)
    with pytest.raises(ValueError, match=r"gate must be float32 \[6, 16\]"):
        _C.gemm(A, B, act="silu", gate=gate[:, :8])
    with pytest.raises(ValueError, match=r"residual must be a writeable float32 \[6, 16\]"):
        _C.gemm(A, B, residual=r[:3])
    with pytest.raises(ValueError, match="sharing no memory"):
        acc = np.zeros((6, 16), F32)
        _C.gemm(A, B, accumulate=acc, residual=acc)
    with pytest.raises(ValueError, match="sharing no memory"):
        g = gate.copy()
        _C.gemm(A, B, act="silu", gate=g, residual=g)
    with pytest.raises(TypeError, match="residual must be a float32"):
        _C.gemm(A, B, residual=r.astype(np.float64))
    ro = resid.copy()
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="writeable"):
        _C.gemm(A, B, residual=ro)
    assert np.array_equal(r, resid)


# -------------------------------------------------------------------------- whole models

GPT2 = hm.GPT2Spec("gpt2-fuse", n_layer=2, n_embd=128, n_head=4, vocab_size=500,
                   n_positions=128, seed=11, init_std=0.05)
LLAMA = hl.spec("llama-fuse-4x2", hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=344, vocab_size=500, max_position_embeddings=128, seed=11)


@pytest.fixture(scope="module")
def models(zoo, fixture_root):
    llama_bf16 = HookedTransformer.from_pretrained(
        str(hl.save_folder(LLAMA, fixture_root / "llama" / (LLAMA.key() + "-bf16"),
                           dtype="bfloat16")))
    return {"gpt2": zoo.gb(GPT2), "llama-bf16": llama_bf16}


def _both(fn):
    """fn() with every fusion on, then every fusion off: the two results."""
    out = []
    for on in (True, False):
        _C.set_fused_epilogues(residual=on, activation=on)
        out.append(fn())
    return out


def _assert_tree_equal(a, b, what):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), f"{what}: {k} differs"
    else:
        assert np.array_equal(np.asarray(a), np.asarray(b)), f"{what} differs"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", ["gpt2", "llama-bf16"])
def test_forward_fused_equals_unfused(models, restore_fusion, isa, name):
    model = models[name]
    tokens = np.random.default_rng(0).integers(0, 500, size=(2, 40))
    old = _C.isa()
    _C.set_isa(isa)
    try:
        on, off = _both(lambda: model(tokens))
        _assert_tree_equal(on, off, f"{name} logits")
        # every hook cached: nothing fuses, and the logits are still the fused forward's
        logits_all, _ = model.run_with_cache(tokens)
        _assert_tree_equal(logits_all, on, f"{name} run_with_cache logits")
        # caching mlp_out / attn_out keeps the residual fusion (a cache only reads them)
        filt = lambda k: k.endswith(("hook_mlp_out", "hook_attn_out", "mlp.hook_post", "resid_post"))
        (l1, c1), (l2, c2) = _both(lambda: model.run_with_cache(tokens, names_filter=filt))
        _assert_tree_equal(l1, l2, f"{name} filtered logits")
        _assert_tree_equal({k: np.array(v) for k, v in c1.items()},
                           {k: np.array(v) for k, v in c2.items()}, f"{name} cache")
        # generation (KV cache, M = 1 decode: the epilogue runs after the product)
        gen = lambda: model.generate(tokens[:1, :6], max_new_tokens=5, do_sample=False, verbose=False,
                                     stop_at_eos=False)
        g1, g2 = _both(gen)
        _assert_tree_equal(g1, g2, f"{name} generate")
    finally:
        _C.set_isa(old)


@pytest.mark.parametrize("name", ["gpt2", "llama-bf16"])
def test_hooks_that_edit_disable_the_fusion_they_would_skip(models, restore_fusion, name):
    """A hook that edits mlp.hook_pre / hook_pre_linear / hook_mlp_out / hook_attn_out must see
    and change the intermediate before it is used: the patched run fused-by-default equals the
    unfused run, and differs from the clean one."""
    model = models[name]
    tokens = np.random.default_rng(1).integers(0, 500, size=(1, 24))
    clean = np.asarray(model(tokens))
    pre = "blocks.1.mlp.hook_pre_linear" if name.startswith("llama") else "blocks.1.mlp.hook_pre"
    for hook_name in [pre, "blocks.0.hook_mlp_out", "blocks.1.hook_attn_out", "blocks.0.mlp.hook_pre"]:
        def halve(act, hook):
            act[..., 0:8] = act[..., 0:8] * 0.5 + 1.0
            return act
        on, off = _both(lambda: model.run_with_hooks(tokens, fwd_hooks=[(hook_name, halve)]))
        _assert_tree_equal(on, off, f"{name} {hook_name}")
        assert not np.allclose(np.asarray(on), clean), f"{hook_name}: the edit had no effect"


def test_switch(restore_fusion):
    assert _C.fused_epilogues() == {"residual": True, "activation": False}  # the defaults
    _C.set_fused_epilogues(activation=True)
    assert _C.fused_epilogues() == {"residual": True, "activation": True}
    _C.set_fused_epilogues(residual=False)
    assert _C.fused_epilogues() == {"residual": False, "activation": True}
    with pytest.raises(TypeError, match="residual must be a bool"):
        _C.set_fused_epilogues(residual=1)
    with pytest.raises(TypeError, match="activation must be a bool"):
        _C.set_fused_epilogues(activation="yes")
    with pytest.raises(TypeError):
        _C.set_fused_epilogues(True)  # keywords only
    assert _C.fused_epilogues() == {"residual": False, "activation": True}


@pytest.mark.parametrize("residual,activation", [(True, False), (False, True)])
def test_each_fusion_alone_equals_unfused(models, restore_fusion, residual, activation):
    tokens = np.random.default_rng(2).integers(0, 500, size=(2, 33))
    for name, model in models.items():
        _C.set_fused_epilogues(residual=False, activation=False)
        want = np.asarray(model(tokens))
        _C.set_fused_epilogues(residual=residual, activation=activation)
        assert np.array_equal(np.asarray(model(tokens)), want), name
