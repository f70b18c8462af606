"""Ops kernels (norms, activations, RoPE, attention, elementwise) against
PyTorch / HF / TransformerLens references, through the glassbox._C test
bindings (csrc/bind_ops.c).

Tolerances (absolute, fp32 in and out):
  norms, activations, RoPE, elementwise ........ 1e-5 (plus rtol 1e-6 where
                                                  values are large)
  attention scores / pattern ................... 1e-5
  attention z (d = 64 / 128) ................... 1e-4
  SIMD path vs scalar path ..................... 1e-6 (the row kernels are
                                                  lane-wise, so in practice equal)
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glassbox import _C

ATOL = 1e-5
ATOL_Z = 1e-4

ISAS = [name for name in ("scalar", "avx2", "avx512") if _C.isa_supported(name)]


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test under each SIMD path this CPU supports, then restore."""
    before = _C.isa()
    _C.set_isa(request.param)
    yield request.param
    _C.set_isa(before)


def rng(seed=0):
    return np.random.default_rng(seed)


def f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def close(got, want, atol=ATOL, rtol=0.0):
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)


# ------------------------------------------------------------------ norms


@pytest.mark.parametrize("M,D", [(37, 768), (5, 1024), (3, 7)])
def test_layer_norm_vs_torch(M, D, isa):
    r = rng(1)
    x = f32(r.standard_normal((M, D)) * 4.0 + 3.0)  # offset exercises centering
    w = f32(1.0 + 0.1 * r.standard_normal(D))
    b = f32(0.1 * r.standard_normal(D))
    eps = 1e-5
    centred, scale = _C.layer_norm_scale(x, eps, True)
    xt = torch.from_numpy(x)
    c_ref = xt - xt.double().mean(-1, keepdim=True).float()
    s_ref = (c_ref.double().pow(2).mean(-1) + eps).sqrt()
    close(centred, c_ref, atol=ATOL)
    close(scale, s_ref.float(), atol=0, rtol=1e-6)
    out = _C.norm_apply(centred, scale, w, b)
    close(out, F.layer_norm(xt, (D,), torch.from_numpy(w), torch.from_numpy(b), eps), atol=ATOL)
    # no weight / no bias (TL LayerNormPre then applies nothing)
    out = _C.norm_apply(centred, scale)
    close(out, F.layer_norm(xt, (D,), None, None, eps), atol=ATOL)


@pytest.mark.parametrize("M,D,eps", [(11, 4096, 1e-6), (9, 576, 1e-5), (2, 3, 1e-6)])
def test_rms_norm_vs_formula(M, D, eps, isa):
    r = rng(2)
    x = f32(r.standard_normal((M, D)) * 2.0 + 0.5)
    w = f32(1.0 + 0.1 * r.standard_normal(D))
    centred, scale = _C.norm_scale(x, eps, center=False)
    np.testing.assert_array_equal(centred, x)  # RMSNorm does not centre
    xt = torch.from_numpy(x).double()
    s_ref = (xt.pow(2).mean(-1) + eps).sqrt()
    close(scale, s_ref, atol=0, rtol=1e-6)
    out = _C.norm_apply(centred, scale, w)
    # TL RMSNorm: x / scale * w (in fp32)
    ref = torch.from_numpy(x) / torch.from_numpy(scale)[:, None] * torch.from_numpy(w)
    close(out, ref, atol=ATOL)
    # HF LlamaRMSNorm: w * (x * rsqrt(mean(x^2) + eps))
    xf = torch.from_numpy(x)
    hf = torch.from_numpy(w) * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps))
    close(out, hf, atol=ATOL)


# ----------------------------------------------------------- activations


def gelu_fast_tl(x):
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def gelu_new_hf(x):
    return 0.5 * x * (1.0 + torch.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACTS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": gelu_fast_tl,
    "silu": F.silu,
}


def act_input(n=50_000):
    r = rng(3)
    x = r.standard_normal(n) * 3.0
    x[:12] = [0.0, -0.0, 1e-8, -1e-8, 10, -10, 20, -20, 40, -40, 88, -88]
    return f32(x)


@pytest.mark.parametrize("name", sorted(ACTS))
def test_activation_vs_torch(name, isa):
    x = act_input()
    got = _C.activation(x, name)
    close(got, ACTS[name](torch.from_numpy(x)), atol=ATOL, rtol=1e-6)
    if name == "gelu_new":
        close(got, gelu_new_hf(torch.from_numpy(x)), atol=ATOL, rtol=1e-6)
    # shape preserved for n-D input
    x3 = x[:4 * 6 * 5].reshape(4, 6, 5)
    assert _C.activation(x3, name).shape == (4, 6, 5)


@pytest.mark.parametrize("name", ["silu", "gelu", "gelu_new", "relu"])
def test_gated_activation_vs_torch(name, isa):
    x = act_input()
    up = f32(rng(4).standard_normal(x.shape))
    got = _C.gated_activation(x, up, name)
    ref = ACTS[name](torch.from_numpy(x)) * torch.from_numpy(up)
    close(got, ref, atol=ATOL, rtol=1e-6)


# ------------------------------------------------------------ elementwise


def test_add_and_embed():
    r = rng(5)
    a = f32(r.standard_normal((300, 1000)))
    b = f32(r.standard_normal((300, 1000)))
    np.testing.assert_array_equal(_C.add(a, b), a + b)
    W = f32(r.standard_normal((50, 64)))
    tok = np.array([0, 49, 7, 7, 3], dtype=np.int64)
    np.testing.assert_array_equal(_C.embed(W, tok), W[tok])
    assert _C.embed(W, np.zeros(0, np.int64)).shape == (0, 64)


# ------------------------------------------------------------------ RoPE


def hf_inv_freq(R, base=10000.0):
    return 1.0 / (base ** (torch.arange(0, R, 2, dtype=torch.int64).float() / R))


def hf_cos_sin(positions, inv_freq):
    """cos/sin [M, R] exactly as LlamaRotaryEmbedding.forward builds them."""
    freqs = positions[:, None].float() * inv_freq.float()
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def gptj_rope(x, positions, inv_freq):
    """GPT-J / TL rotary_adjacent_pairs: pairs (2i, 2i+1), freqs [f0, f0, f1, f1, ...]."""
    freqs = positions[:, None].float() * inv_freq.float()  # [M, R/2]
    cos = freqs.cos().repeat_interleave(2, dim=-1)[:, None, :]
    sin = freqs.sin().repeat_interleave(2, dim=-1)[:, None, :]
    rot = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
    return x * cos + rot * sin


@pytest.mark.parametrize(
    "n_heads,d_head,R,offset,base",
    [
        (32, 128, 128, 0, 10000.0),  # LLaMA-2 7B
        (9, 64, 64, 17, 100000.0),  # SmolLM-ish, query offset (past length 17)
        (4, 64, 32, 5, 10000.0),  # partial rotary (GPT-NeoX / Pythia style, R = d/2)
        (2, 80, 20, 3000, 10000.0),  # partial, odd R/2 = 10, large positions
    ],
)
@pytest.mark.parametrize("adjacent", [False, True])
def test_rope_vs_reference(n_heads, d_head, R, offset, base, adjacent, isa):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, rotate_half  # noqa: F401

    M = 23
    r = rng(6)
    x = f32(r.standard_normal((M, n_heads * d_head)))
    positions = np.arange(offset, offset + M, dtype=np.int64)
    positions[5] = 0  # arbitrary (non-contiguous) positions are allowed
    inv_freq = hf_inv_freq(R, base)
    got = _C.rope(x, n_heads, d_head, R, positions, inv_freq.numpy(), adjacent)

    xt = torch.from_numpy(x).view(M, n_heads, d_head)
    pos_t = torch.from_numpy(positions)
    xr, xpass = xt[..., :R], xt[..., R:]
    if not adjacent:
        cos, sin = hf_cos_sin(pos_t, inv_freq)  # [M, R]
        # HF layout [batch, heads, seq, dim]; here batch = 1, seq = M
        q = xr.permute(1, 0, 2)[None]
        q_emb, _ = apply_rotary_pos_emb(q, q, cos[None], sin[None])
        rot = q_emb[0].permute(1, 0, 2)
    else:
        rot = gptj_rope(xr, pos_t, inv_freq)
    ref = torch.cat((rot, xpass), dim=-1).reshape(M, -1)
    close(got, ref, atol=ATOL)
    # the pass-through part is untouched bit for bit, and the input is not modified
    np.testing.assert_array_equal(got.reshape(M, n_heads, d_head)[..., R:],
                                  x.reshape(M, n_heads, d_head)[..., R:])


def test_rope_row_stride():
    """x may carry extra columns (e.g. a fused QKV row): only n_heads*d_head rotate."""
    M, H, d = 6, 3, 16
    r = rng(7)
    x = f32(r.standard_normal((M, H * d + 10)))
    inv = hf_inv_freq(d).numpy()
    pos = np.arange(M, dtype=np.int64)
    got = _C.rope(x, H, d, d, pos, inv)
    np.testing.assert_array_equal(got[:, H * d:], x[:, H * d:])
    np.testing.assert_array_equal(got[:, :H * d], _C.rope(f32(x[:, :H * d]), H, d, d, pos, inv))


# ------------------------------------------------------------- attention


def attn_reference(q, k, v, B, P, K, H, G, d, inv_scale, window=0, key_mask=None):
    """TransformerLens-style attention in torch fp32.
    q [B*P, H*d], k/v [B*K, G*d] -> z [B*P, H*d], scores, pattern [B, H, P, K]."""
    qt = torch.from_numpy(q).view(B, P, H, d)
    kt = torch.from_numpy(k).view(B, K, G, d).repeat_interleave(H // G, dim=2)
    vt = torch.from_numpy(v).view(B, K, G, d).repeat_interleave(H // G, dim=2)
    scores = torch.einsum("bphd,bkhd->bhpk", qt, kt) * inv_scale
    i = torch.arange(P)[:, None] + (K - P)
    j = torch.arange(K)[None, :]
    visible = j <= i
    if window > 0:
        visible = visible & (i - j < window)
    visible = visible[None, None].expand(B, H, P, K)
    if key_mask is not None:
        visible = visible & (torch.from_numpy(key_mask) != 0)[:, None, None, :]
    scores = scores.masked_fill(~visible, float("-inf"))
    pattern = F.softmax(scores, dim=-1)
    pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern)
    z = torch.einsum("bhpk,bkhd->bphd", pattern, vt).reshape(B * P, H * d)
    return z, scores, pattern


def make_qkv(B, P, K, H, G, d, seed=0, scale=1.0, extra_cols=0):
    r = rng(seed)
    q = f32(r.standard_normal((B * P, H * d + extra_cols)) * scale)
    k = f32(r.standard_normal((B * K, G * d + extra_cols)) * scale)
    v = f32(r.standard_normal((B * K, G * d + extra_cols)))
    return q, k, v


def left_padding_mask(B, K, pads):
    m = np.ones((B, K), dtype=np.int32)
    for b, n in enumerate(pads):
        m[b, :n] = 0
    return m


CASES = {
    # name: (B, P, K, H, G, d, window, pads, qk_scale)
    "gpt2": (2, 40, 40, 12, 12, 64, 0, None, 1.0),
    "gqa_9_3": (2, 33, 33, 9, 3, 64, 0, None, 1.0),
    "gqa_8_2_d128": (1, 29, 29, 8, 2, 128, 0, None, 1.0),
    "kv_cache_K_gt_P": (2, 7, 30, 8, 2, 64, 0, None, 1.0),
    "single_query": (3, 1, 19, 4, 4, 64, 0, None, 1.0),
    "left_padding": (3, 16, 16, 6, 2, 64, 0, [0, 5, 16], 1.0),  # row b=2 fully masked
    "padding_kv_cache": (2, 4, 12, 4, 2, 64, 0, [3, 0], 1.0),
    "sliding_window": (2, 37, 37, 8, 4, 64, 8, None, 1.0),
    "window_cache_pad": (2, 5, 21, 6, 3, 64, 4, [2, 18], 1.0),
    "sharp_scores": (1, 24, 24, 4, 1, 64, 0, None, 3.0),
    "odd_d": (2, 9, 11, 3, 1, 13, 0, [1, 0], 1.0),
}


def run_case(name, extra_cols=0, seed=0):
    B, P, K, H, G, d, window, pads, scale = CASES[name]
    q, k, v = make_qkv(B, P, K, H, G, d, seed=seed, scale=scale, extra_cols=extra_cols)
    mask = left_padding_mask(B, K, pads) if pads is not None else None
    args = (q, k, v, B, P, K, H, G, d, float(1.0 / np.sqrt(d)))
    ref = attn_reference(
        f32(q[:, :H * d]), f32(k[:, :G * d]), f32(v[:, :G * d]), B, P, K, H, G, d,
        float(1.0 / np.sqrt(d)), window, mask,
    )
    return args, dict(window=window, key_mask=mask), ref


def check_scores(got, ref):
    # masked entries must be exactly -inf; the rest within tolerance
    ref = ref.numpy()
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(got[fin], ref[fin], atol=ATOL)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("materialise", ["none", "scores", "pattern", "both"])
def test_attention_fused(name, materialise, isa):
    args, kw, (z_ref, s_ref, p_ref) = run_case(name)
    want_s = materialise in ("scores", "both")
    want_p = materialise in ("pattern", "both")
    z, s, p = _C.attention(*args, **kw, want_scores=want_s, want_pattern=want_p)
    close(z, z_ref, atol=ATOL_Z)
    assert (s is not None) == want_s and (p is not None) == want_p
    if want_s:
        check_scores(s, s_ref)
    if want_p:
        close(p, p_ref, atol=ATOL)
        assert np.all(p[np.isneginf(s_ref.numpy())] == 0)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("in_place", [False, True])
def test_attention_split(name, in_place, isa):
    args, kw, (z_ref, s_ref, p_ref) = run_case(name)
    z, s, p = _C.attention_split(*args, **kw, in_place=in_place)
    close(z, z_ref, atol=ATOL_Z)
    close(p, p_ref, atol=ATOL)
    if not in_place:
        check_scores(s, s_ref)
    # fused (blocked GEMM for prefill) and split (per row) agree closely: only the order of
    # the sums differs; the same entries are masked
    zf, sf, pf = _C.attention(*args, **kw, want_scores=True, want_pattern=True)
    close(z, zf, atol=1e-5)
    close(p, pf, atol=ATOL)
    if not in_place:
        np.testing.assert_array_equal(np.isneginf(s), np.isneginf(sf))
        fin = np.isfinite(sf)
        np.testing.assert_allclose(s[fin], sf[fin], atol=1e-5)


def test_attention_row_stride():
    """q/k/v rows may be wider than H*d / G*d (ld > width): extra columns ignored."""
    args, kw, (z_ref, _, _) = run_case("gqa_9_3", extra_cols=7)
    z, _, _ = _C.attention(*args, **kw)
    close(z, z_ref, atol=ATOL_Z)
    z2, _, _ = _C.attention_split(*args, **kw)
    close(z2, z_ref, atol=ATOL_Z)


def test_fully_masked_rows_are_zero():
    args, kw, _ = run_case("left_padding")  # sequence b=2 is all padding
    z, s, p = _C.attention(*args, **kw, want_scores=True, want_pattern=True)
    B, P, K, H, G, d = args[3:9]
    assert np.all(np.isneginf(s[2]))
    assert np.all(p[2] == 0)
    assert np.all(z.reshape(B, P, H * d)[2] == 0)
    assert np.all(np.isfinite(z)) and np.all(np.isfinite(p))
    # sequence 1: queries 0..4 sit on padding -> no visible key (causal) -> 0
    assert np.all(p[1, :, :5] == 0)
    assert np.all(z.reshape(B, P, H * d)[1, :5] == 0)


def test_isa_paths_agree():
    """Every SIMD path against the scalar path (lane-wise kernels: ~bitwise)."""
    before = _C.isa()
    try:
        outs = {}
        for name in ISAS:
            _C.set_isa(name)
            args, kw, _ = run_case("window_cache_pad", seed=3)
            fused = _C.attention(*args, **kw, want_scores=True, want_pattern=True)
            split = _C.attention_split(*args, **kw)
            outs[name] = fused + split
        for name in ISAS[1:]:
            for a, b in zip(outs["scalar"], outs[name]):
                np.testing.assert_allclose(a, b, atol=1e-6)
    finally:
        _C.set_isa(before)


def test_softmax_hook_semantics():
    """gb_attn_softmax on hook-edited scores: no re-masking; all -inf or NaN rows -> 0."""
    r = rng(8)
    s = f32(r.standard_normal((2, 3, 4, 6)))
    s[0, 0, 0, :] = -np.inf  # fully masked row
    s[0, 1, 2, 3] = np.nan  # NaN row (torch: NaN pattern, TL: zeroed)
    s[1, 2, 1, 5] = np.inf  # +inf: torch gives NaN for the row -> 0
    s[1, 0, 0, 1:] = -np.inf  # one visible key
    p = _C.attn_softmax(s)
    ref = F.softmax(torch.from_numpy(s), dim=-1)
    ref = torch.where(torch.isnan(ref), torch.zeros_like(ref), ref)
    close(p, ref, atol=ATOL)
    assert np.all(p[0, 0, 0] == 0) and np.all(p[0, 1, 2] == 0) and np.all(p[1, 2, 1] == 0)
    assert p[1, 0, 0, 0] == 1.0


def test_apply_hook_edited_pattern():
    """gb_attn_apply uses every pattern entry (a hook may put weight anywhere)."""
    B, P, K, H, G, d = 2, 5, 7, 6, 2, 16
    r = rng(9)
    p = f32(r.random((B, H, P, K)))
    v = f32(r.standard_normal((B * K, G * d)))
    z = _C.attn_apply(p, v, G, d)
    vt = torch.from_numpy(v).view(B, K, G, d).repeat_interleave(H // G, dim=2)
    ref = torch.einsum("bhpk,bkhd->bphd", torch.from_numpy(p), vt).reshape(B * P, H * d)
    close(z, ref, atol=ATOL)


def test_attention_thread_count_invariant(tmp_path):
    """Results are bitwise identical with 1 thread and with many (no cross-thread reductions)."""
    code = (
        "import sys, numpy as np; sys.path[:0] = sys.argv[2:]\n"
        "import tests.test_kernel_ops as t\n"
        "args, kw, _ = t.run_case('gpt2', seed=4)\n"
        "z, s, p = t._C.attention(*args, **kw, want_scores=True, want_pattern=True)\n"
        "z2, _, _ = t._C.attention(*args, **kw)\n"
        "np.savez(sys.argv[1], z=z, s=s, p=p, z2=z2)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = {}
    for n in ("1", "4"):
        out = tmp_path / f"o{n}.npz"
        env = dict(os.environ, OMP_NUM_THREADS=n)
        subprocess.run([sys.executable, "-c", code, str(out), root] + sys.path, check=True, env=env)
        res[n] = np.load(out)
    for key in ("z", "s", "p", "z2"):
        np.testing.assert_array_equal(res["1"][key], res["4"][key])
    np.testing.assert_array_equal(res["1"]["z"], res["1"]["z2"])


# ----------------------------------------------------------- bad inputs


def test_bad_inputs_norm_act():
    x = f32(np.zeros((4, 8)))
    with pytest.raises(ValueError, match="x must be 2-D"):
        _C.norm_scale(f32(np.zeros(8)), 1e-5)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        _C.norm_scale(np.zeros((4, 8)), 1e-5)
    c, s = _C.norm_scale(x, 1e-5)
    with pytest.raises(ValueError, match=r"scale has shape \(3,\); expected \(4,\)"):
        _C.norm_apply(c, s[:3])
    with pytest.raises(ValueError, match=r"w has shape \(7,\); expected \(8,\)"):
        _C.norm_apply(c, s, f32(np.ones(7)))
    with pytest.raises(ValueError, match=r"b has shape"):
        _C.norm_apply(c, s, None, f32(np.ones(9)))
    with pytest.raises(ValueError, match="unknown activation 'gelu2'"):
        _C.activation(x, "gelu2")
    with pytest.raises(ValueError, match=r"up has shape \(4, 7\); expected the shape of gate \(4, 8\)"):
        _C.gated_activation(x, f32(np.zeros((4, 7))), "silu")
    with pytest.raises(ValueError, match="b has shape"):
        _C.add(x, f32(np.zeros(32)))
    with pytest.raises(ValueError, match=r"tokens\[1\] = 50 is out of range"):
        _C.embed(f32(np.zeros((50, 4))), np.array([0, 50], np.int64))
    with pytest.raises(ValueError, match=r"tokens\[0\] = -1"):
        _C.embed(f32(np.zeros((50, 4))), np.array([-1], np.int64))
    with pytest.raises(TypeError, match="tokens must have dtype int64"):
        _C.embed(f32(np.zeros((50, 4))), np.array([0], np.int32))


def test_bad_inputs_rope():
    x = f32(np.zeros((3, 64)))
    pos = np.arange(3, dtype=np.int64)
    inv = f32(np.ones(16))
    with pytest.raises(ValueError, match="rotary_dim even"):
        _C.rope(x, 2, 32, 31, pos, inv)
    with pytest.raises(ValueError, match="rotary_dim even"):
        _C.rope(x, 2, 32, 34, pos, inv)
    with pytest.raises(ValueError, match=r"x has shape \(3, 64\); expected \(M, >= n_heads\*d_head = 96\)"):
        _C.rope(x, 3, 32, 32, pos, inv)
    with pytest.raises(ValueError, match=r"positions has shape \(2,\); expected \(3,\)"):
        _C.rope(x, 2, 32, 32, pos[:2], inv)
    with pytest.raises(ValueError, match=r"inv_freq has shape \(16,\); expected \(8,\)"):
        _C.rope(x, 2, 32, 16, pos, inv)


def test_bad_inputs_attention():
    B, P, K, H, G, d = 2, 3, 5, 4, 2, 8
    q, k, v = make_qkv(B, P, K, H, G, d)
    ok = (q, k, v, B, P, K, H, G, d, 0.35)
    _C.attention(*ok)  # sanity
    with pytest.raises(ValueError, match="H % G == 0"):
        _C.attention(q, k, v, B, P, K, H, 3, d, 0.35)
    with pytest.raises(ValueError, match="K >= P"):
        _C.attention(q, k, v, B, P, 2, H, G, d, 0.35)
    with pytest.raises(ValueError, match=r"q has shape \(6, 32\); expected \(B\*P = 6, >= H\*d = 64\)"):
        _C.attention(q, k, v, B, P, K, 8, G, d, 0.35)
    with pytest.raises(ValueError, match=r"k has shape \(9, 16\); expected \(B\*K = 10"):
        _C.attention(q, k[:9], v, B, P, K, H, G, d, 0.35)
    with pytest.raises(ValueError, match=r"v has shape \(10, 15\)"):
        _C.attention(q, k, f32(v[:, :15]), B, P, K, H, G, d, 0.35)
    with pytest.raises(ValueError, match=r"key_mask has shape \(2, 4\); expected \(B, K\) = \(2, 5\)"):
        _C.attention(*ok, key_mask=np.ones((2, 4), np.int32))
    with pytest.raises(TypeError, match="key_mask must have dtype int32"):
        _C.attention(*ok, key_mask=np.ones((2, 5), np.int64))
    with pytest.raises(TypeError, match="q must have dtype float32"):
        _C.attention(q.astype(np.float64), *ok[1:])
    with pytest.raises(ValueError, match="k must be 2-D"):
        _C.attention_split(q, k.reshape(B, K, -1), v, B, P, K, H, G, d, 0.35)
    with pytest.raises(ValueError, match="scores must be 4-D"):
        _C.attn_softmax(f32(np.zeros((3, 4))))
    with pytest.raises(ValueError, match="H % G == 0"):
        _C.attn_apply(f32(np.zeros((B, H, P, K))), v, 3, d)


@pytest.mark.parametrize("name", sorted(CASES))
def test_attention_row_path_matches_reference(name, isa, monkeypatch):
    """gb_attention takes a blocked GEMM path for prefill (P >= 8) and a per-row path for
    generation; GLASSBOX_ATTN_ROWS forces the per-row path so both are held to the reference."""
    args, kw, (z_ref, s_ref, p_ref) = run_case(name)
    monkeypatch.setenv("GLASSBOX_ATTN_ROWS", "1")
    z, s, p = _C.attention(*args, **kw, want_scores=True, want_pattern=True)
    close(z, z_ref, atol=ATOL_Z)
    close(p, p_ref, atol=ATOL)
    check_scores(s, s_ref)
