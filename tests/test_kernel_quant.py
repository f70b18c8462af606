"""GGUF block types: _C.dequantize, _C.embed_rows and _C.gemm with raw block B.

Reference: the `gguf` package's numpy decoders (gguf.quants.dequantize).
Our decoders do the same fp32 operations in the same order, so dequantize()
must match it bit for bit (tolerance 0 ulp), on every ISA.

GEMM with block-type B (file layout [N, row_bytes], trans=True) dequantises
inside the packing step; its result is checked
  - against float64 numpy A @ dequantize(B).T with the tolerance of
    test_kernel_gemm.py (RTOL * K * max|A| * max|B| + ...), and
  - bitwise against _C.gemm on the fp32 dequantised matrix with the same ISA
    (the same microkernels see the same fp32 values in the same order).

gguf can quantize Q8_0 / Q4_0 / Q4_1 (used with random float data); the
K-quants are dequantize-only there, so Q4_K / Q6_K tensors are random bytes
with finite f16 scale fields (random bytes are used for the 32-blocks too:
they reach every quant value, e.g. int8 -128).
"""
import os
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402
from gguf.quants import quantize as gguf_quantize  # noqa: E402

from glassbox import _C  # noqa: E402

RTOL = 1e-5
ISAS = ["scalar", "avx2", "avx512"]
BLOCK_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K"]
FLOAT_TYPES = ["F32", "BF16", "F16"]
BLOCK = {"Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_1": (32, 20),
         "Q4_K": (256, 144), "Q6_K": (256, 210),
         "F32": (1, 4), "BF16": (1, 2), "F16": (1, 2)}
# byte offsets of the f16 scale fields inside one block
F16_FIELDS = {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q4_K": [0, 2], "Q6_K": [208]}
QUANTIZABLE = {"Q8_0", "Q4_0", "Q4_1"}


def isa_param(name):
    return pytest.param(
        name,
        marks=pytest.mark.skipif(not _C.isa_supported(name), reason=f"CPU/build lacks {name}"),
        id=name,
    )


ALL = [isa_param(n) for n in ISAS]


def rng_for(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


@pytest.fixture
def restore_isa():
    before = _C.isa()
    yield
    _C.set_isa(before)


def random_raw(dtype, N, K, rng, scale=0.05):
    """Random raw rows [N, row_bytes] of a block type with sane f16 scales
    (finite; some zero, negative and subnormal ones)."""
    be, bb = BLOCK[dtype]
    nb = K // be
    raw = rng.integers(0, 256, size=(N, nb, bb), dtype=np.uint8)
    for off in F16_FIELDS[dtype]:
        v = (rng.standard_normal((N, nb)) * scale).astype(np.float16)
        flat = v.reshape(-1)
        flat[::7] = np.float16(0.0)
        flat[3::11] = np.float16(6e-6)  # subnormal f16
        flat[5::13] = -np.abs(flat[5::13])
        raw[:, :, off:off + 2] = v.view(np.uint8).reshape(N, nb, 2)
    return raw.reshape(N, nb * bb)


def make_raw(dtype, N, K, rng, quantized=False):
    if dtype in FLOAT_TYPES:
        x = rng.standard_normal((N, K)).astype(np.float32)
        if dtype == "F32":
            return x.view(np.uint8)
        if dtype == "F16":
            return x.astype(np.float16).view(np.uint8)
        return gguf_quantize(x, QT.BF16).view(np.uint8).reshape(N, -1)
    if quantized and dtype in QUANTIZABLE:
        x = rng.standard_normal((N, K)).astype(np.float32)
        return gguf_quantize(x, getattr(QT, dtype)).view(np.uint8).reshape(N, -1)
    return random_raw(dtype, N, K, rng)


def ref_dequant(raw, dtype):
    return np.asarray(gguf_dequantize(raw, getattr(QT, dtype)), dtype=np.float32)


def assert_bits_equal(got, want):
    assert got.shape == want.shape and got.dtype == np.float32
    g, w = got.view(np.uint32), want.view(np.uint32)
    bad = np.flatnonzero(g != w)
    assert bad.size == 0, (
        f"{bad.size} mismatches, first at {bad[0]}: {got.flat[bad[0]]!r} vs {want.flat[bad[0]]!r}")


# -------------------------------------------------------------- geometry

@pytest.mark.parametrize("dtype", BLOCK_TYPES)
def test_block_sizes_match_gguf(dtype):
    from gguf.constants import GGML_QUANT_SIZES
    assert GGML_QUANT_SIZES[getattr(QT, dtype)] == BLOCK[dtype]


# ------------------------------------------------------------ dequantize

@pytest.mark.parametrize("isa", ALL)
@pytest.mark.parametrize("dtype", BLOCK_TYPES + FLOAT_TYPES)
@pytest.mark.parametrize("quantized", [False, True])
def test_dequantize_bit_exact(isa, dtype, quantized, restore_isa):
    if quantized and dtype not in QUANTIZABLE:
        pytest.skip(f"gguf cannot quantize {dtype}")
    r = rng_for("deq", dtype, quantized)
    K = 768 if BLOCK[dtype][0] == 256 else 96
    raw = make_raw(dtype, 37, K, r, quantized)
    _C.set_isa(isa)
    got = _C.dequantize(raw, dtype)
    assert got.shape == (37, K)
    assert_bits_equal(got, ref_dequant(raw, dtype))


@pytest.mark.parametrize("isa", ALL)
@pytest.mark.parametrize("dtype", BLOCK_TYPES)
def test_dequantize_every_scale_pattern(isa, dtype, restore_isa):
    # one block per f16 scale pattern (finite values only: inf * 0 would give
    # nan in both, which is fine, but nan != nan bitwise after arithmetic)
    be, bb = BLOCK[dtype]
    bits = np.arange(65536, dtype=np.uint16)
    finite = bits[np.isfinite(bits.view(np.float16))]
    r = rng_for("pattern", dtype)
    n = finite.size if be == 32 else 4096
    raw = r.integers(0, 256, size=(n, bb), dtype=np.uint8)
    pick = finite if n == finite.size else r.choice(finite, n)
    for off in F16_FIELDS[dtype]:
        raw[:, off:off + 2] = pick.view(np.uint8).reshape(n, 2)
    _C.set_isa(isa)
    with np.errstate(over="ignore", invalid="ignore"):
        want = ref_dequant(raw, dtype)
    got = _C.dequantize(raw, dtype)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    assert_bits_equal(np.where(nan, 0, got).astype(np.float32),
                      np.where(nan, 0, want).astype(np.float32))


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_dequantize_half_every_bit_pattern(dtype):
    raw = np.arange(65536, dtype=np.uint16).view(np.uint8).reshape(1, -1)
    with np.errstate(invalid="ignore"):
        want = ref_dequant(raw, dtype).reshape(1, -1)
    got = _C.dequantize(raw, dtype)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    assert_bits_equal(got[~nan], want[~nan])


# ------------------------------------------------------------- embed_rows

@pytest.mark.parametrize("dtype", BLOCK_TYPES + FLOAT_TYPES)
def test_embed_rows(dtype):
    r = rng_for("embed", dtype)
    D = 512 if BLOCK[dtype][0] == 256 else 160
    V = 50
    raw = make_raw(dtype, V, D, r)
    full = _C.dequantize(raw, dtype)
    tokens = r.integers(0, V, size=41).astype(np.int64)
    tokens[:3] = [0, V - 1, 0]
    got = _C.embed_rows(raw, dtype, tokens, D)
    assert got.shape == (41, D) and got.dtype == np.float32
    assert_bits_equal(got, full[tokens])
    assert_bits_equal(got, ref_dequant(raw, dtype)[tokens])
    # int32 tokens and a list work too; no tokens -> [0, D]
    assert_bits_equal(_C.embed_rows(raw, dtype, tokens.astype(np.int32), D), full[tokens])
    assert_bits_equal(_C.embed_rows(raw, dtype, [int(t) for t in tokens[:5]], D), full[tokens[:5]])
    assert _C.embed_rows(raw, dtype, np.zeros(0, np.int64), D).shape == (0, D)


def test_embed_rows_many_tokens_parallel():
    # large enough to take the OpenMP path
    r = rng_for("embed-big")
    V, D = 300, 1024
    raw = make_raw("Q4_K", V, D, r)
    tokens = r.integers(0, V, size=700).astype(np.int64)
    assert_bits_equal(_C.embed_rows(raw, "Q4_K", tokens, D), ref_dequant(raw, "Q4_K")[tokens])


# ------------------------------------------------------------------- GEMM

def reference(A, Bd, bias=None, C0=None):
    out = A.astype(np.float64) @ Bd.astype(np.float64).T
    if C0 is not None:
        out = out + C0.astype(np.float64)
    if bias is not None:
        out = out + bias.astype(np.float64)
    return out


def tolerance(A, Bd, bias=None, C0=None):
    s = A.shape[1] * np.abs(A).max(initial=0.0) * np.abs(Bd).max(initial=0.0)
    if bias is not None:
        s += np.abs(bias).max(initial=0.0)
    if C0 is not None:
        s += np.abs(C0).max(initial=0.0)
    return RTOL * (s + 1e-30)


def check_gemm(isa, A, raw, dtype, bias=None, C0=None, K=None):
    Bd = ref_dequant(raw, dtype)
    if K is not None:
        Bd = np.ascontiguousarray(Bd[:, :K])
    want = reference(A, Bd, bias, C0)
    acc = None if C0 is None else C0.copy()
    kw = {} if K is None else {"K": K}
    got = _C.gemm(A, raw, bias, trans=True, accumulate=acc, isa=isa, dtype=dtype, **kw)
    assert got.shape == want.shape and got.dtype == np.float32
    if C0 is not None:
        assert got is acc
    err = np.abs(got - want).max(initial=0.0)
    tol = tolerance(A, Bd, bias, C0)
    assert err <= tol, f"{isa} {dtype}: max err {err:.3g} > tol {tol:.3g}"
    # bitwise the fp32 GEMM of the dequantised weights on the same ISA
    acc = None if C0 is None else C0.copy()
    same = _C.gemm(A, Bd, bias, trans=True, accumulate=acc, isa=isa)
    assert_bits_equal(got, same)
    return got


def ks_for(dtype):
    return [256, 768] if BLOCK[dtype][0] == 256 else [64, 96, 576]


GEMM_CASES = [(dtype, K) for dtype in BLOCK_TYPES for K in ks_for(dtype)]


@pytest.mark.parametrize("isa", ALL)
@pytest.mark.parametrize("dtype,K", GEMM_CASES)
@pytest.mark.parametrize("M", [1, 2, 3, 7, 9, 33])
@pytest.mark.parametrize("N", [1, 50])
def test_gemm_block_b(isa, dtype, K, M, N):
    r = rng_for("gemm", dtype, K, M, N)
    A = r.standard_normal((M, K), dtype=np.float32)
    raw = make_raw(dtype, N, K, r)
    bias = r.standard_normal(N, dtype=np.float32) if M % 2 else None
    check_gemm(isa, A, raw, dtype, bias=bias)


@pytest.mark.parametrize("isa", ALL)
@pytest.mark.parametrize("dtype", BLOCK_TYPES)
@pytest.mark.parametrize("M", [1, 4, 5, 130])
def test_gemm_block_b_accumulate_strided_a(isa, dtype, M):
    # N = 97 (not a multiple of 16 / 48), A rows strided, C accumulated
    r = rng_for("gemm-acc", dtype, M)
    K = 512 if BLOCK[dtype][0] == 256 else 416
    N = 97
    Abig = r.standard_normal((M, K + 9), dtype=np.float32)
    A = Abig[:, 4:4 + K]
    raw = make_raw(dtype, N, K, r, quantized=True)
    bias = r.standard_normal(N, dtype=np.float32)
    C0 = r.standard_normal((M, N), dtype=np.float32)
    check_gemm(isa, A, raw, dtype, bias=bias, C0=C0)


@pytest.mark.parametrize("isa", ALL)
@pytest.mark.parametrize("dtype", BLOCK_TYPES)
@pytest.mark.parametrize("M", [2, 8])
def test_gemm_block_b_partial_rows(isa, dtype, M):
    # K < elements per stored row: only the first K columns of B are used
    r = rng_for("gemm-partial", dtype, M)
    be = BLOCK[dtype][0]
    raw = make_raw(dtype, 21, 4 * be, r)
    A = r.standard_normal((M, 3 * be), dtype=np.float32)
    check_gemm(isa, A, raw, dtype, K=3 * be)
    # a row-strided view of a bigger byte array (copied by the binding)
    big = make_raw(dtype, 42, 4 * be, r)
    A4 = r.standard_normal((M, 4 * be), dtype=np.float32)
    check_gemm(isa, A4, big[::2], dtype)


@pytest.mark.parametrize("isa", [p for p in ALL if p.values[0] != "scalar"])
@pytest.mark.parametrize("dtype", ["Q4_1", "Q4_K", "Q6_K"])
def test_gemm_block_b_large(isa, dtype):
    # several K blocks (KC = 384 / 256) and several M chunks
    r = rng_for("gemm-large", dtype)
    A = r.standard_normal((130, 1536), dtype=np.float32)
    raw = make_raw(dtype, 200, 1536, r)
    check_gemm(isa, A, raw, dtype)


@pytest.mark.parametrize("isa", ALL)
def test_gemm_block_b_empty(isa):
    raw = make_raw("Q4_K", 6, 256, rng_for("empty"))
    assert _C.gemm(np.zeros((0, 256), np.float32), raw, trans=True, dtype="Q4_K",
                   isa=isa).shape == (0, 6)
    assert _C.gemm(np.zeros((3, 256), np.float32), raw[:0], trans=True, dtype="Q4_K",
                   isa=isa).shape == (3, 0)
    bias = np.arange(6, dtype=np.float32)
    out = _C.gemm(np.zeros((3, 0), np.float32), raw, bias, trans=True, dtype="Q4_K", K=0,
                  isa=isa)
    np.testing.assert_array_equal(out, np.broadcast_to(bias, (3, 6)))


THREAD_SCRIPT = textwrap.dedent(
    """
    import hashlib, sys
    import numpy as np
    from glassbox import _C
    r = np.random.default_rng(11)
    h = hashlib.sha256()
    for isa in sys.argv[1:]:
        for dtype, be, bb in [("Q4_0", 32, 18), ("Q4_K", 256, 144), ("Q6_K", 256, 210)]:
            for M, K, N in [(1, 1024, 700), (3, 512, 300), (70, 768, 130)]:
                raw = r.integers(0, 256, size=(N, K // be, bb), dtype=np.uint8)
                d = (r.standard_normal((N, K // be)) * 0.05).astype(np.float16)
                off = 208 if dtype == "Q6_K" else 0
                raw[:, :, off:off + 2] = d.view(np.uint8).reshape(N, K // be, 2)
                raw = raw.reshape(N, -1)
                A = r.standard_normal((M, K), dtype=np.float32)
                h.update(_C.gemm(A, raw, trans=True, dtype=dtype, isa=isa).tobytes())
        tok = r.integers(0, 130, size=300)  # raw: the last Q6_K [130, 768]
        h.update(_C.embed_rows(raw, "Q6_K", tok, 768).tobytes())
    print(_C.num_threads(), h.hexdigest())
    """
)


def test_thread_count_invariance(tmp_path):
    isas = [n for n in ISAS if _C.isa_supported(n)]
    script = tmp_path / "quant_threads.py"
    script.write_text(THREAD_SCRIPT)
    outs = []
    for n in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=n)
        res = subprocess.run([sys.executable, str(script)] + isas, env=env,
                             capture_output=True, text=True, check=True)
        outs.append(res.stdout.split())
    if outs[1][0] == "1":
        pytest.skip("serial build (no OpenMP): nothing to compare")
    assert outs[0][0] == "1" and outs[1][0] == "2"
    assert outs[0][1] == outs[1][1]


# ------------------------------------------------------------- bad inputs

def test_bad_inputs():
    r = rng_for("bad")
    raw = make_raw("Q4_K", 4, 512, r)  # [4, 288]
    A = np.ones((2, 512), np.float32)
    # block dtype needs the file layout
    with pytest.raises(ValueError, match="trans=True"):
        _C.gemm(A, raw, dtype="Q4_K")
    # row bytes not a whole number of blocks
    with pytest.raises(ValueError, match=r"\(4, 287\).*Q4_K.*144 bytes"):
        _C.gemm(A, raw[:, :287], trans=True, dtype="Q4_K")
    # K not a multiple of the block size / too large
    with pytest.raises(ValueError, match="K=300 .*Q4_K block size 256"):
        _C.gemm(np.ones((2, 300), np.float32), raw, trans=True, dtype="Q4_K", K=300)
    with pytest.raises(ValueError, match="K=768"):
        _C.gemm(np.ones((2, 768), np.float32), raw, trans=True, dtype="Q4_K", K=768)
    # A's K differs from the rows' element count
    with pytest.raises(ValueError, match=r"\(2, 256\).*Q4_K.*K = 512"):
        _C.gemm(np.ones((2, 256), np.float32), raw, trans=True, dtype="Q4_K")
    with pytest.raises(ValueError, match="only used with dtype"):
        _C.gemm(A, np.ones((512, 3), np.float32), K=512)
    # wrong container types / names
    with pytest.raises(TypeError, match="uint8"):
        _C.gemm(A, raw.view(np.int8), trans=True, dtype="Q4_K")
    with pytest.raises(TypeError, match="ndarray"):
        _C.gemm(A, raw.tolist(), trans=True, dtype="Q4_K")
    with pytest.raises(ValueError, match="2-D"):
        _C.gemm(A, raw.reshape(-1), trans=True, dtype="Q4_K")
    with pytest.raises(ValueError, match="unknown dtype 'Q5_K'"):
        _C.gemm(A, raw, trans=True, dtype="Q5_K")
    # dequantize
    with pytest.raises(ValueError, match=r"\(4, 100\).*Q4_0.*18 bytes"):
        _C.dequantize(raw[:, :100], "Q4_0")
    with pytest.raises(TypeError, match="uint8"):
        _C.dequantize(np.zeros((2, 34), np.float32), "Q8_0")
    with pytest.raises(ValueError, match="2-D"):
        _C.dequantize(np.zeros(34, np.uint8), "Q8_0")
    with pytest.raises(ValueError, match="unknown dtype"):
        _C.dequantize(raw, "q3_k")
    # embed_rows
    with pytest.raises(ValueError, match="D=500 .*block size 256"):
        _C.embed_rows(raw, "Q4_K", [0], 500)
    with pytest.raises(ValueError, match=r"\(4, 288\).*D=256.*144 bytes"):
        _C.embed_rows(raw, "Q4_K", [0], 256)
    with pytest.raises(ValueError, match=r"tokens\[1\] = 4 is out of range.*4 rows"):
        _C.embed_rows(raw, "Q4_K", [0, 4], 512)
    with pytest.raises(ValueError, match=r"tokens\[0\] = -1"):
        _C.embed_rows(raw, "Q4_K", [-1], 512)
    with pytest.raises(TypeError, match="integer"):
        _C.embed_rows(raw, "Q4_K", np.zeros(2, np.float32), 512)
    with pytest.raises(ValueError, match="1-D"):
        _C.embed_rows(raw, "Q4_K", np.zeros((2, 2), np.int64), 512)
    # names are case-insensitive; inputs are never modified
    before = raw.copy()
    _C.gemm(A, raw, trans=True, dtype="q4_k")
    np.testing.assert_array_equal(raw, before)
