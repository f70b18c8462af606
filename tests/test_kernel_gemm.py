"""GEMM kernels (csrc/kernels/gemm*.c) through glassbox._C.gemm.

Every ISA this CPU supports is checked against numpy in float64 and against
the scalar reference path; ISAs the CPU lacks are skipped with a reason.

Tolerance: an fp32 dot product of length K has rounding error well below
K * eps * max|a| * max|b|; we allow RTOL * scale with
    scale = K * max|a| * max|b| + max|C0| + max|bias| (+ 1e-30)
and RTOL = 1e-5 (fp32 eps is 1.2e-7, so this is ~100 ulps of the scale).
bf16 / f16 B matrices are widened exactly, so the same tolerance applies
against numpy's widening of the same bits.
"""
import os
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

from glassbox import _C

RTOL = 1e-5
ISAS = ["scalar", "avx2", "avx512"]


def isa_param(name):
    return pytest.param(
        name,
        marks=pytest.mark.skipif(
            not _C.isa_supported(name), reason=f"CPU/build lacks {name}"
        ),
        id=name,
    )


SIMD = [isa_param(n) for n in ISAS[1:]]
ALL = [isa_param(n) for n in ISAS]


def rng_for(*key):
    # crc32, not hash(): str hashes are salted per process
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def dense_b(B, trans):
    """The logical [K, N] float64 matrix that a B argument describes."""
    B = np.asarray(B)
    if B.dtype == np.uint16:  # bfloat16 bits
        B = (B.astype(np.uint32) << 16).view(np.float32)
    B = B.astype(np.float64)
    if trans:
        return B.T
    if B.ndim == 3:  # per-head [H, K, d] -> [K, H*d]
        H, K, d = B.shape
        return B.transpose(1, 0, 2).reshape(K, H * d)
    return B


def reference(A, B, trans=False, bias=None, C0=None):
    out = A.astype(np.float64) @ dense_b(B, trans)
    if C0 is not None:
        out = out + C0.astype(np.float64)
    if bias is not None:
        out = out + bias.astype(np.float64)
    return out


def scale_of(A, B, trans=False, bias=None, C0=None):
    K = A.shape[1]
    Bd = dense_b(B, trans)
    s = K * (np.abs(A).max(initial=0.0)) * (np.abs(Bd).max(initial=0.0))
    if bias is not None:
        s += np.abs(bias).max(initial=0.0)
    if C0 is not None:
        s += np.abs(C0).max(initial=0.0)
    return s + 1e-30


def check(isa, A, B, trans=False, bias=None, C0=None):
    """Run isa and scalar; compare both with float64 numpy and each other."""
    want = reference(A, B, trans, bias, C0)
    tol = RTOL * scale_of(A, B, trans, bias, C0)
    acc = None if C0 is None else C0.copy()
    got = _C.gemm(A, B, bias, trans=trans, accumulate=acc, isa=isa)
    assert got.shape == want.shape and got.dtype == np.float32
    if C0 is not None:
        assert got is acc  # accumulated in place
    err = np.abs(got - want).max(initial=0.0)
    assert err <= tol, f"{isa}: max err {err:.3g} > tol {tol:.3g}"
    if isa != "scalar":
        acc = None if C0 is None else C0.copy()
        ref = _C.gemm(A, B, bias, trans=trans, accumulate=acc, isa="scalar")
        d = np.abs(got - ref).max(initial=0.0)
        assert d <= 2 * tol, f"{isa} vs scalar: {d:.3g} > {2 * tol:.3g}"
    return got


MS = [1, 2, 3, 7, 8, 9, 63, 257]
# (K, N): tiny, not multiples of 16/48, exact multiples, K across the
# 384-deep K blocks (771 = two block boundaries).
KN = [(1, 1), (5, 17), (33, 47), (64, 48), (100, 130), (771, 50)]


@pytest.mark.parametrize("isa", ALL)
@pytest.mark.parametrize("M", MS)
@pytest.mark.parametrize("K,N", KN)
def test_plain_layout(isa, M, K, N):
    r = rng_for("plain", M, K, N)
    A = r.standard_normal((M, K), dtype=np.float32)
    B = r.standard_normal((K, N), dtype=np.float32)
    check(isa, A, B)


@pytest.mark.parametrize("isa", ALL)
@pytest.mark.parametrize("M", [1, 4, 5, 8])
@pytest.mark.parametrize("trans", [False, True])
def test_small_m_wide_n_blocks(isa, M, trans):
    """Small-M streaming paths with N wider than one column block (8192) and odd, with bias
    and accumulate: every block boundary and the ragged last block."""
    r = rng_for("wide", M, trans)
    K, N = 37, 17001
    A = r.standard_normal((M, K), dtype=np.float32)
    B = r.standard_normal((N, K) if trans else (K, N), dtype=np.float32)
    bias = r.standard_normal(N, dtype=np.float32)
    check(isa, A, B, trans=trans, bias=bias)
    acc = r.standard_normal((M, N), dtype=np.float32)
    check(isa, A, B, trans=trans, bias=bias, C0=acc)


@pytest.mark.parametrize("isa", ALL)
@pytest.mark.parametrize("M", MS)
@pytest.mark.parametrize("K,N", KN)
def test_trans_layout_with_bias(isa, M, K, N):
    r = rng_for("trans", M, K, N)
    A = r.standard_normal((M, K), dtype=np.float32)
    B = r.standard_normal((N, K), dtype=np.float32)  # [out, in]
    bias = r.standard_normal(N, dtype=np.float32)
    check(isa, A, B, trans=True, bias=bias)


@pytest.mark.parametrize("isa", ALL)
@pytest.mark.parametrize("M", [1, 3, 6, 7, 63])
@pytest.mark.parametrize("H,K,d", [(3, 100, 64), (5, 40, 13), (2, 400, 13), (12, 64, 64)])
def test_per_head_layout(isa, M, H, K, d):
    # TransformerLens W_Q [H, D, d] used as [D, H*d]: panels of 16/48 columns
    # straddle heads when d = 13.
    r = rng_for("heads", M, H, K, d)
    A = r.standard_normal((M, K), dtype=np.float32)
    W = r.standard_normal((H, K, d), dtype=np.float32)
    bias = r.standard_normal(H * d, dtype=np.float32)
    check(isa, A, W, bias=bias)


@pytest.mark.parametrize("isa", ALL)
def test_per_head_strided_view(isa):
    # a non-contiguous [H, K, d] view (every other head of a bigger tensor,
    # columns sliced) exercises group_stride / ld different from K*d / d
    r = rng_for("headview")
    big = r.standard_normal((8, 70, 40), dtype=np.float32)
    W = big[::2, :, :29]
    A = r.standard_normal((9, 70), dtype=np.float32)
    check(isa, A, W)


@pytest.mark.parametrize("isa", ALL)
@pytest.mark.parametrize("M", [1, 7, 257])
@pytest.mark.parametrize("trans", [False, True])
def test_accumulate_and_strided_rows(isa, M, trans):
    r = rng_for("acc", M, trans)
    K, N = 450, 70
    Abig = r.standard_normal((M, K + 11), dtype=np.float32)
    A = Abig[:, 3 : 3 + K]  # row stride K + 11
    B = r.standard_normal((N, K) if trans else (K, N), dtype=np.float32)
    bias = r.standard_normal(N, dtype=np.float32)
    C0 = r.standard_normal((M, N), dtype=np.float32)
    check(isa, A, B, trans=trans, bias=bias, C0=C0)
    # accumulate into a strided view: only the view's elements change
    Cbig = r.standard_normal((M, N + 5), dtype=np.float32)
    before = Cbig.copy()
    view = Cbig[:, 2 : 2 + N]
    out = _C.gemm(A, B, bias, trans=trans, accumulate=view, isa=isa)
    want = reference(A, B, trans, bias, before[:, 2 : 2 + N])
    assert np.abs(out - want).max() <= RTOL * scale_of(A, B, trans, bias, before)
    np.testing.assert_array_equal(Cbig[:, :2], before[:, :2])
    np.testing.assert_array_equal(Cbig[:, 2 + N :], before[:, 2 + N :])


def to_bf16_bits(x):
    """Round-to-nearest-even fp32 -> bf16 bit patterns (uint16)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = u + 0x7FFF + ((u >> 16) & 1)
    return (u >> 16).astype(np.uint16)


@pytest.mark.parametrize("isa", ALL)
@pytest.mark.parametrize("M", [1, 3, 4, 5, 8, 63])
@pytest.mark.parametrize("trans", [False, True])
@pytest.mark.parametrize("dtype", ["bf16", "f16"])
def test_half_precision_b(isa, M, trans, dtype):
    r = rng_for("half", M, trans, dtype)
    K, N = 390, 53
    A = r.standard_normal((M, K), dtype=np.float32)
    Bf = r.standard_normal((N, K) if trans else (K, N), dtype=np.float32)
    B = to_bf16_bits(Bf) if dtype == "bf16" else Bf.astype(np.float16)
    bias = r.standard_normal(N, dtype=np.float32)
    check(isa, A, B, trans=trans, bias=bias)


@pytest.mark.parametrize("isa", ALL)
@pytest.mark.parametrize("dtype", ["bf16", "f16"])
def test_half_widening_every_bit_pattern(isa, dtype):
    # K = 1, A = 1: C = 0 + 1 * widen(b) is exactly the widened value
    # (except -0, which 0 + (-0) turns into +0), for all 65536 patterns:
    # subnormals, inf and nan included.
    bits = np.arange(65536, dtype=np.uint16)
    B = bits[None, :] if dtype == "bf16" else bits.view(np.float16)[None, :]
    with np.errstate(invalid="ignore"):  # nan payloads through float64
        want = dense_b(B, False)[0].astype(np.float32)
    got = _C.gemm(np.ones((1, 1), np.float32), B, isa=isa)[0]
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan], want[~nan])
    # subnormal f16 values really are subnormal-derived, not flushed
    if dtype == "f16":
        assert got[1] == np.float32(2.0**-24)


@pytest.mark.parametrize("isa", ALL)
def test_empty_dims(isa):
    r = rng_for("empty")
    bias = r.standard_normal(6, dtype=np.float32)
    # K = 0: C = bias (or C0 + bias)
    out = _C.gemm(np.zeros((3, 0), np.float32), np.zeros((0, 6), np.float32), bias, isa=isa)
    np.testing.assert_array_equal(out, np.broadcast_to(bias, (3, 6)))
    C0 = r.standard_normal((3, 6), dtype=np.float32)
    out = _C.gemm(np.zeros((3, 0), np.float32), np.zeros((0, 6), np.float32), bias,
                  accumulate=C0.copy(), isa=isa)
    np.testing.assert_array_equal(out, C0 + bias)
    assert _C.gemm(np.zeros((0, 4), np.float32), np.ones((4, 6), np.float32), isa=isa).shape == (0, 6)
    assert _C.gemm(np.zeros((2, 4), np.float32), np.ones((4, 0), np.float32), isa=isa).shape == (2, 0)


@pytest.mark.parametrize("isa", SIMD)
def test_large_shape_against_numpy(isa):
    r = rng_for("large")
    A = r.standard_normal((130, 1000), dtype=np.float32)
    B = r.standard_normal((1000, 200), dtype=np.float32)
    check(isa, A, B)


def test_default_path_matches_selected_isa():
    r = rng_for("default")
    A = r.standard_normal((9, 40), dtype=np.float32)
    B = r.standard_normal((40, 30), dtype=np.float32)
    np.testing.assert_array_equal(_C.gemm(A, B), _C.gemm(A, B, isa=_C.isa()))


THREAD_SCRIPT = textwrap.dedent(
    """
    import hashlib, sys
    import numpy as np
    from glassbox import _C
    r = np.random.default_rng(7)
    h = hashlib.sha256()
    for isa in sys.argv[1:]:
        # the last four: few-row streaming paths split over both threads (weights count 8x
        # toward the threshold); the first two of them with N over 8192 columns, cut into an
        # even number of blocks
        for M, K, N, trans in [(257, 700, 130, False), (5, 900, 333, True),
                               (64, 800, 1000, False), (1, 1000, 1500, False),
                               (1, 200, 17001, False), (4, 96, 50257, False), (1, 768, 768, True),
                               (3, 768, 768, False)]:
            A = r.standard_normal((M, K), dtype=np.float32)
            B = r.standard_normal((N, K) if trans else (K, N), dtype=np.float32)
            bias = r.standard_normal(N, dtype=np.float32)
            h.update(_C.gemm(A, B, bias, trans=trans, isa=isa).tobytes())
        A = r.standard_normal((2, 576), dtype=np.float32)  # bf16 weights (bits as uint16)
        B16 = (r.standard_normal((1500, 576), dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
        h.update(_C.gemm(A, B16, trans=True, isa=isa).tobytes())
    print(_C.num_threads(), h.hexdigest())
    """
)


def test_thread_count_invariance(tmp_path):
    """Results are bitwise identical for 1 and 2 OpenMP threads."""
    isas = [n for n in ISAS if _C.isa_supported(n)]
    script = tmp_path / "gemm_threads.py"
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
    A = np.ones((4, 5), np.float32)
    B = np.ones((5, 6), np.float32)
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(7, 6\)"):
        _C.gemm(A, np.ones((7, 6), np.float32))
    with pytest.raises(ValueError, match="trans=True"):
        _C.gemm(A, np.ones((6, 4), np.float32), trans=True)
    with pytest.raises(ValueError, match="trans=True"):
        _C.gemm(A, np.ones((2, 5, 3), np.float32), trans=True)
    with pytest.raises(ValueError, match="2-D"):
        _C.gemm(np.ones(5, np.float32), B)
    with pytest.raises(ValueError, match="4-D"):
        _C.gemm(A, np.ones((1, 1, 5, 6), np.float32))
    with pytest.raises(TypeError, match="A has unsupported dtype"):
        _C.gemm(A.astype(np.float64), B)
    with pytest.raises(TypeError, match="B has unsupported dtype"):
        _C.gemm(A, B.astype(np.int32))
    with pytest.raises(TypeError, match="ndarray"):
        _C.gemm([[1.0]], B)
    with pytest.raises(ValueError, match=r"bias has shape \(5,\), expected \(6,\)"):
        _C.gemm(A, B, np.ones(5, np.float32))
    with pytest.raises(TypeError, match="bias"):
        _C.gemm(A, B, np.ones(6, np.float64))
    with pytest.raises(ValueError, match=r"accumulate has shape \(4, 5\), expected \(4, 6\)"):
        _C.gemm(A, B, accumulate=np.ones((4, 5), np.float32))
    with pytest.raises(TypeError, match="accumulate"):
        _C.gemm(A, B, accumulate=np.ones((4, 6), np.float64))
    ro = np.ones((4, 6), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        _C.gemm(A, B, accumulate=ro)
    with pytest.raises(ValueError, match="unknown isa"):
        _C.gemm(A, B, isa="neon")
    for name in ISAS:
        if not _C.isa_supported(name):
            with pytest.raises(ValueError, match="not supported"):
                _C.gemm(A, B, isa=name)
    # inputs are never modified
    A2, B2 = A.copy(), B.copy()
    _C.gemm(A2, B2, isa="scalar")
    np.testing.assert_array_equal(A2, A)
    np.testing.assert_array_equal(B2, B)
