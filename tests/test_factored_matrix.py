"""glassbox.FactoredMatrix against TransformerLens's FactoredMatrix on the very same factors.

Every case builds random float32 factors with torch, then one TL ``FactoredMatrix`` on them and
one glassbox ``FactoredMatrix`` in each array kind: on the torch tensors (results must be torch)
and on NumPy copies (results must be NumPy). Values are compared in float64.

Tolerances (relative to the reference's largest entry, float32 factors):
* RTOL_MM = 1e-5 for products (AB, BA, @, corners): same float32 products, summation order only;
* RTOL_SVD = 1e-4 for anything from the SVD (S, norm, reconstructions, make_even, collapse_*) and
  eigenvalues: ours is QR-based, TL's SVD-based, LAPACK builds differ.
Singular vectors are compared up to sign: |<u_ours, u_TL>| >= 1 - 1e-3 per column (the test
matrices have well-separated singular values), plus the reconstruction U diag(S) V^T == AB.
"""
from __future__ import annotations

import subprocess
import sys
import tracemalloc
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tlfm = pytest.importorskip("transformer_lens.FactoredMatrix")

import glassbox  # noqa: E402
from glassbox import set_array_backend  # noqa: E402
from glassbox.FactoredMatrix import FactoredMatrix, FactoredMatrixShapeError  # noqa: E402

TL = tlfm.FactoredMatrix
RTOL_MM = 1e-5
RTOL_SVD = 1e-4
KINDS = ["torch", "numpy"]


def f64(x):
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.complex128 if x.is_complex() else torch.float64).numpy()
    return np.asarray(x).astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def close(got, ref, rtol, what=""):
    g, r = f64(got), f64(ref)
    assert g.shape == r.shape, f"{what}: shape {g.shape} != {r.shape}"
    scale = max(float(np.abs(r).max()), 1e-30) if r.size else 1.0
    err = float(np.abs(g - r).max()) if r.size else 0.0
    assert err <= rtol * scale, f"{what}: max abs error {err:.3g} > {rtol:g} * {scale:.3g}"


def check_kind(x, kind):
    if kind == "torch":
        assert isinstance(x, torch.Tensor), type(x)
    else:
        assert isinstance(x, np.ndarray), type(x)


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def make(kind, A, B):
    """glassbox FactoredMatrix of the kind, and TL's on the same values."""
    if kind == "torch":
        return FactoredMatrix(A, B), TL(A, B)
    return FactoredMatrix(A.numpy().copy(), B.numpy().copy()), TL(A, B)


def arr(kind, t):
    return t if kind == "torch" else t.numpy().copy()


def fm_close(g, t, rtol, what, kind):
    assert isinstance(g, FactoredMatrix), type(g)
    assert tuple(g.shape) == tuple(t.shape), f"{what}: shape {g.shape} != {t.shape}"
    assert g.mdim == t.mdim, f"{what}: inner dim {g.mdim} != TL's {t.mdim}"
    check_kind(g.A, kind)
    check_kind(g.B, kind)
    close(g.AB, t.AB, rtol, what + ".AB")


# ---------------------------------------------------------------------------------------------
# construction, attributes, repr
def test_import_paths():
    from glassbox import FactoredMatrix as top
    from glassbox.FactoredMatrix import FactoredMatrix as mod

    assert top is mod is glassbox.FactoredMatrix


@pytest.mark.parametrize("kind", KINDS)
def test_attributes_and_broadcasting(kind):
    A, B = rand(4, 20, 5), rand(3, 1, 5, 17, seed=1)
    g, t = make(kind, A, B)
    assert tuple(g.shape) == tuple(t.shape) == (3, 4, 20, 17)
    assert (g.ldim, g.mdim, g.rdim, g.ndim, g.has_leading_dims) == (t.ldim, t.mdim, t.rdim, t.ndim, t.has_leading_dims)
    assert tuple(g.A.shape) == tuple(t.A.shape) and tuple(g.B.shape) == tuple(t.B.shape)
    check_kind(g.A, kind)
    if kind == "torch":
        assert isinstance(g.shape, torch.Size)
        assert repr(g) == repr(t) == "FactoredMatrix: Shape(torch.Size([3, 4, 20, 17])), Hidden Dim(5)"
    else:
        assert type(g.shape) is tuple
        assert repr(g) == "FactoredMatrix: Shape((3, 4, 20, 17)), Hidden Dim(5)"
    pa, pb = g.pair
    assert pa is g.A and pb is g.B
    close(g.AB, t.AB, RTOL_MM, "AB")
    two = FactoredMatrix(arr(kind, rand(6, 3)), arr(kind, rand(3, 7)))
    assert not two.has_leading_dims and two.ndim == 2


@pytest.mark.parametrize("kind", KINDS)
def test_AB_BA_T(kind):
    g, t = make(kind, rand(2, 3, 9, 4), rand(2, 3, 4, 9, seed=1))
    close(g.AB, t.AB, RTOL_MM, "AB")
    close(g.BA, t.BA, RTOL_MM, "BA")
    check_kind(g.BA, kind)
    fm_close(g.T, t.T, RTOL_MM, "T", kind)
    close(g.T.AB, np.swapaxes(f64(t.AB), -1, -2), RTOL_MM, "T.AB")
    rect, _ = make(kind, rand(9, 4), rand(4, 7))
    with pytest.raises(ValueError, match="ldim==rdim"):
        rect.BA


# ---------------------------------------------------------------------------------------------
# products
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rdim", [17, 3])  # rdim > mdim keeps A; rdim <= mdim multiplies out AB
def test_matmul_right(kind, rdim):
    g, t = make(kind, rand(3, 20, 5), rand(3, 5, rdim, seed=1))
    for other in (rand(rdim, 9, seed=2), rand(2, 1, rdim, 4, seed=3)):
        fm_close(g @ arr(kind, other), t @ other, RTOL_MM, f"fm @ {tuple(other.shape)}", kind)
    v = rand(rdim, seed=4)
    out = g @ arr(kind, v)
    check_kind(out, kind)
    close(out, t @ v, RTOL_MM, "fm @ vector")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ldim", [20, 4])
def test_matmul_left(kind, ldim):
    g, t = make(kind, rand(3, ldim, 5), rand(3, 5, 11, seed=1))
    for other in (rand(7, ldim, seed=2), rand(2, 1, 6, ldim, seed=3)):
        fm_close(arr(kind, other) @ g, other @ t, RTOL_MM, f"{tuple(other.shape)} @ fm", kind)
    v = rand(ldim, seed=4)
    out = arr(kind, v) @ g
    check_kind(out, kind)
    close(out, v @ t, RTOL_MM, "vector @ fm")


@pytest.mark.parametrize("kind", KINDS)
def test_matmul_factored(kind):
    g1, t1 = make(kind, rand(2, 30, 4), rand(2, 4, 25, seed=1))
    g2, t2 = make(kind, rand(2, 25, 6, seed=2), rand(2, 6, 12, seed=3))
    fm_close(g1 @ g2, t1 @ t2, RTOL_MM, "fm @ fm", kind)
    fm_close(g2.T @ g1.T, t2.T @ t1.T, RTOL_MM, "fm.T @ fm.T", kind)
    g3, t3 = make(kind, rand(2, 9, 5, seed=4), rand(2, 5, 30, seed=5))
    fm_close(g1.__rmatmul__(g3), t1.__rmatmul__(t3), RTOL_MM, "rmatmul(fm)", kind)
    fm_close(g3 @ g1, t3 @ t1, RTOL_MM, "fm @ fm (small inner dim kept)", kind)


@pytest.mark.parametrize("kind", KINDS)
def test_scalar_multiplication(kind):
    g, t = make(kind, rand(2, 8, 3), rand(2, 3, 6, seed=1))
    for s in (2.5, -3, np.float64(0.5)):
        fm_close(g * s, t * float(s), RTOL_MM, f"fm * {s!r}", kind)
        fm_close(s * g, float(s) * t, RTOL_MM, f"{s!r} * fm", kind)
    zero_d = arr(kind, torch.tensor(1.5))
    out = g * zero_d
    fm_close(out, t * torch.tensor(1.5), RTOL_MM, "fm * 0-d", kind)
    assert out.A.dtype == g.A.dtype  # a one-element array does not widen the factors
    fm_close(zero_d * g, torch.tensor(1.5) * t, RTOL_MM, "0-d * fm", kind)
    with pytest.raises(ValueError, match="scalar"):
        g * arr(kind, rand(3))
    with pytest.raises(TypeError):
        g * g


def test_mixed_kinds_and_backend_override():
    A, B = rand(2, 10, 3), rand(2, 3, 8, seed=1)
    g_np = FactoredMatrix(A.numpy(), B.numpy())
    other = rand(8, 5, seed=2)
    out = g_np @ other  # auto: a torch operand makes the result torch
    assert isinstance(out.A, torch.Tensor) and isinstance(out.B, torch.Tensor)
    close(out.AB, (TL(A, B) @ other).AB, RTOL_MM, "numpy fm @ torch")
    try:
        set_array_backend("torch")
        g = FactoredMatrix(A.numpy(), B.numpy())
        assert isinstance(g.A, torch.Tensor) and isinstance(g.S, torch.Tensor)
        set_array_backend("numpy")
        g = FactoredMatrix(A, B)
        assert isinstance(g.A, np.ndarray) and isinstance(g.S, np.ndarray) and type(g.shape) is tuple
        assert isinstance(g @ other, FactoredMatrix) and isinstance((g @ other).A, np.ndarray)
    finally:
        set_array_backend("auto")


def test_numpy_dispatch_never_densifies():
    """ndarray @ fm / ndarray * fm reach the FactoredMatrix (no object arrays, no AB)."""
    g = FactoredMatrix(np.ones((6, 2), np.float32), np.ones((2, 6), np.float32))
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    out = x @ g
    assert isinstance(out, FactoredMatrix) and out.shape == (2, 6)
    np.testing.assert_allclose(out.AB, x @ np.full((6, 6), 2.0), rtol=1e-6)
    assert isinstance(np.float32(2) * g, FactoredMatrix)
    assert not hasattr(g, "__array__")


# ---------------------------------------------------------------------------------------------
# spectral
def assert_same_svd(g, t, kind, what):
    U, S, V = g.svd()
    for x in (U, S, V):
        check_kind(x, kind)
    Ut, St, Vt = t.svd()
    assert tuple(U.shape) == tuple(Ut.shape) and tuple(S.shape) == tuple(St.shape) and tuple(V.shape) == tuple(Vt.shape)
    close(S, St, RTOL_SVD, what + " S")
    u, v, s = f64(U), f64(V), f64(S)
    close(np.einsum("...ik,...k,...jk->...ij", u, s, v), t.AB, RTOL_SVD, what + " U S V^T")
    for name, mine, ref in (("U", u, f64(Ut)), ("V", v, f64(Vt))):
        eye = np.swapaxes(mine, -1, -2) @ mine
        close(eye, np.broadcast_to(np.eye(eye.shape[-1]), eye.shape), RTOL_SVD, f"{what} {name} orthonormal")
        align = np.abs((mine * ref).sum(-2))
        assert align.min() >= 1 - 1e-3, f"{what}: {name} columns differ from TL's beyond sign ({align.min():.6f})"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [((3, 40, 6), (3, 6, 30)), ((2, 5, 9), (2, 9, 12)), ((7, 3), (3, 2))],
                         ids=["mdim-smallest", "ldim-smallest", "rdim-smallest"])
def test_svd(kind, shape):
    g, t = make(kind, rand(*shape[0]), rand(*shape[1], seed=1))
    assert_same_svd(g, t, kind, "svd")
    assert g.svd() is g.svd()  # cached on the object
    assert g.U is g.svd()[0] and g.S is g.svd()[1] and g.V is g.svd()[2]
    close(g.S, t.S, RTOL_SVD, "S")
    close(g.norm(), t.norm(), RTOL_SVD, "norm")
    check_kind(g.norm(), kind)
    close(g.norm(), np.sqrt((f64(t.AB) ** 2).sum((-2, -1))), RTOL_SVD, "norm vs dense Frobenius")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert g.Vh is g.V
    assert any(issubclass(w.category, DeprecationWarning) for w in rec)


@pytest.mark.parametrize("kind", KINDS)
def test_make_even_and_collapse(kind):
    g, t = make(kind, rand(2, 3, 30, 5), rand(2, 3, 5, 24, seed=1))
    ge, te = g.make_even(), t.make_even()
    fm_close(ge, te, RTOL_SVD, "make_even", kind)
    close(ge.S, t.S, RTOL_SVD, "make_even S")
    a, b = f64(ge.A), f64(ge.B)  # even: A^T A == B B^T == diag(S)
    close(np.swapaxes(a, -1, -2) @ a, b @ np.swapaxes(b, -1, -2), RTOL_SVD, "make_even balance")
    cl, cr = g.collapse_l(), g.collapse_r()
    check_kind(cl, kind)
    tl_cl, tl_cr = f64(t.collapse_l()), f64(t.collapse_r())
    assert cl.shape == tuple(tl_cl.shape) and cr.shape == tuple(tl_cr.shape)
    close(f64(g.U) @ f64(cl), t.AB, RTOL_SVD, "U @ collapse_l")
    close(f64(cr) @ np.swapaxes(f64(g.V), -1, -2), t.AB, RTOL_SVD, "collapse_r @ V^T")
    # sign-free comparisons with TL: Gram matrices
    close(np.swapaxes(f64(cl), -1, -2) @ f64(cl), np.swapaxes(tl_cl, -1, -2) @ tl_cl, RTOL_SVD, "collapse_l gram")
    close(f64(cr) @ np.swapaxes(f64(cr), -1, -2), tl_cr @ np.swapaxes(tl_cr, -1, -2), RTOL_SVD, "collapse_r gram")


def match_eigs(got, ref):
    """max distance after pairing each reference eigenvalue with its nearest unused one."""
    got, ref = list(f64(got).ravel()), list(f64(ref).ravel())
    worst = 0.0
    for r in sorted(ref, key=lambda z: (z.real, z.imag)):
        j = int(np.argmin([abs(r - x) for x in got]))
        worst = max(worst, abs(r - got.pop(j)))
    return worst


@pytest.mark.parametrize("kind", KINDS)
def test_eigenvalues(kind):
    g, t = make(kind, rand(3, 12, 5), rand(3, 5, 12, seed=1))
    ev, tev = g.eigenvalues, t.eigenvalues
    check_kind(ev, kind)
    assert (ev.is_complex() if kind == "torch" else np.iscomplexobj(ev))
    assert tuple(ev.shape) == tuple(tev.shape) == (3, 5)
    scale = float(np.abs(f64(tev)).max())
    for h in range(3):
        assert match_eigs(ev[h], tev[h]) <= RTOL_SVD * scale
        # and against the dense matrix: AB has these eigenvalues plus ldim - mdim zeros
        dense = np.linalg.eigvals(f64(t.AB[h]))
        nonzero = sorted(dense, key=lambda z: -abs(z))[:5]
        assert match_eigs(ev[h], np.array(nonzero)) <= RTOL_SVD * scale
    bf = FactoredMatrix(rand(6, 2).bfloat16(), rand(2, 6, seed=1).bfloat16())
    assert bf.eigenvalues.dtype == torch.complex64  # 16-bit factors are widened, as TL does


def test_svd_bfloat16_factors():
    A, B = rand(2, 16, 4).bfloat16(), rand(2, 4, 10, seed=1).bfloat16()
    g = FactoredMatrix(A, B)
    assert g.A.dtype == torch.bfloat16
    U, S, V = g.svd()
    assert S.dtype == torch.float32
    close(S, torch.linalg.svdvals((A.float() @ B.float())).narrow(-1, 0, 4), RTOL_SVD, "bf16 S")


def test_autograd_through_norm_and_svd():
    A = rand(3, 20, 4).requires_grad_(True)
    B = rand(3, 4, 15, seed=1).requires_grad_(True)
    FactoredMatrix(A, B).norm().sum().backward()
    ga, gb = A.grad.clone(), B.grad.clone()
    A.grad = B.grad = None
    TL(A, B).norm().sum().backward()
    close(ga, A.grad, RTOL_SVD, "d norm / dA")
    close(gb, B.grad, RTOL_SVD, "d norm / dB")


@pytest.mark.parametrize("kind", KINDS)
def test_svd_is_compact(kind):
    """svd/S/norm of a 20000 x 20000 rank-4 matrix (1.6 GB dense in float32) stay O(factors)."""
    n, m = 20000, 4
    A, B = rand(n, m), rand(m, n, seed=1)
    if kind == "numpy":
        g = FactoredMatrix(A.numpy(), B.numpy())
        tracemalloc.start()
        try:
            S = g.svd()[1]
            g.norm()
            g.make_even()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 16 * n * m * 4 + (8 << 20), f"svd peak {peak / 2**20:.1f} MB: the product was formed"
    else:  # torch allocations are not traced: measure the peak RSS of a fresh process
        code = (
            "import resource, torch; from glassbox.FactoredMatrix import FactoredMatrix\n"
            f"A = torch.randn({n}, {m}); B = torch.randn({m}, {n}); g = FactoredMatrix(A, B)\n"
            "g.svd(); g.T.svd(); g[:5].norm(); base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "g = FactoredMatrix(A * 2, B); g.svd(); g.norm(); g.make_even()\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                             cwd=str(__import__("pathlib").Path(glassbox.__file__).parents[1]))
        assert out.returncode == 0, out.stderr
        grown_kb = int(out.stdout.split()[-1])
        assert grown_kb < 200 * 1024, f"svd grew the process by {grown_kb / 1024:.0f} MB: the product was formed"
        return
    assert tuple(S.shape) == (m,)
    a, b = f64(A), f64(B)  # S^2 = non-zero eigenvalues of (AB)^T AB, i.e. of (A^T A)(B B^T)
    ref = np.sqrt(np.sort(np.linalg.eigvals((a.T @ a) @ (b @ b.T)).real)[::-1])
    close(S, ref, RTOL_SVD, "S of the rank-4 product")


# ---------------------------------------------------------------------------------------------
# indexing, corners, unsqueeze
INDICES = [0, -1, (1, 2), (slice(0, 2),), (slice(None), 1), (1, 2, 3), (0, 1, -1), (1, 2, slice(3, 9)),
           (0, 1, 4, 5), (0, 1, -1, -1), (0, slice(1, 3), slice(2, 6), slice(0, 4)), (None, 1), (Ellipsis,)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("idx", INDICES, ids=[repr(i) for i in INDICES])
def test_getitem(kind, idx):
    g, t = make(kind, rand(2, 3, 10, 4), rand(2, 3, 4, 8, seed=1))
    fm_close(g[idx], t[idx], RTOL_MM, f"fm[{idx!r}]", kind)


@pytest.mark.parametrize("kind", KINDS)
def test_getitem_too_long_and_tensor_index(kind):
    g, t = make(kind, rand(2, 3, 10, 4), rand(2, 3, 4, 8, seed=1))
    with pytest.raises(ValueError, match="too long an index"):
        g[0, 0, 0, 0, 0]
    heads = torch.tensor([2, 0])
    fm_close(g[:, heads], t[:, heads], RTOL_MM, "fm[:, tensor]", kind)
    fm_close(g[:, [2, 0]], t[:, [2, 0]], RTOL_MM, "fm[:, list]", kind)


@pytest.mark.parametrize("kind", KINDS)
def test_get_corner_and_unsqueeze(kind):
    g, t = make(kind, rand(4, 5, 10, 3), rand(4, 5, 3, 12, seed=1))
    for k in (1, 3, 7):
        c = g.get_corner(k)
        check_kind(c, kind)
        close(c, t.get_corner(k), RTOL_MM, f"get_corner({k})")
    for k in (0, 1, 2):
        fm_close(g.unsqueeze(k), t.unsqueeze(k), RTOL_MM, f"unsqueeze({k})", kind)
    from glassbox import utils
    from transformer_lens.utilities import get_matrix_corner

    close(utils.get_matrix_corner(g, 3), get_matrix_corner(t, 3), RTOL_MM, "utils.get_matrix_corner")
    fm_close(utils.get_corner(g, 2), t[:2, :2, :2, :2], RTOL_MM, "utils.get_corner", kind)


# ---------------------------------------------------------------------------------------------
# composition scores
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("broadcast", [True, False])
def test_composition_scores(kind, broadcast):
    from glassbox import utils
    from transformer_lens.utilities import composition_scores

    L, H, D, d = 3, 4, 30, 6
    WV, WO, WQ, WK = rand(L, H, D, d), rand(L, H, d, D, seed=1), rand(L, H, D, d, seed=2), rand(L, H, D, d, seed=3)
    left, tleft = make(kind, WV, WO)
    right, tright = make(kind, WQ, WK.transpose(-1, -2))
    got = utils.composition_scores(left, right, broadcast_dims=broadcast)
    ref = composition_scores(tleft, tright, broadcast_dims=broadcast)
    check_kind(got, kind)
    close(got, ref, RTOL_SVD, "composition_scores")
    dense = utils.composition_scores(arr(kind, tleft.AB), arr(kind, tright.AB), broadcast_dims=broadcast)
    close(dense, ref, RTOL_SVD, "composition_scores (dense arrays)")
    if broadcast:  # the blocked product, one left block at a time
        from glassbox.utilities import matrix as mx

        old, mx._CHUNK_BYTES = mx._CHUNK_BYTES, 1
        try:
            close(utils.composition_scores(left, right), ref, RTOL_SVD, "composition_scores (1 block / chunk)")
        finally:
            mx._CHUNK_BYTES = old
    mixed = utils.composition_scores(FactoredMatrix(WV.numpy(), WO.numpy()), FactoredMatrix(WQ, WK.transpose(-1, -2)),
                                     broadcast_dims=broadcast)
    assert isinstance(mixed, torch.Tensor)
    close(mixed, ref, RTOL_SVD, "composition_scores (NumPy left, torch right)")
    close(utils.composition_scores(tleft, tright, broadcast_dims=broadcast), ref, RTOL_SVD,
          "composition_scores (TL FactoredMatrix arguments)")
    single = utils.composition_scores(left[0, 0], right[1, 2])
    assert tuple(single.shape) == ()
    close(single, composition_scores(tleft[0, 0], tright[1, 2]), RTOL_SVD, "composition_scores (one pair)")
    with pytest.raises(ValueError, match="left.rdim==right.ldim"):
        utils.composition_scores(left, FactoredMatrix(arr(kind, rand(5, 2)), arr(kind, rand(2, 5))))


# ---------------------------------------------------------------------------------------------
# bad input
@pytest.mark.parametrize("kind", KINDS)
def test_bad_shapes(kind):
    a = arr(kind, rand(3, 10, 4))
    with pytest.raises(ValueError, match="inner dimension") as e:
        FactoredMatrix(a, arr(kind, rand(3, 5, 6)))
    assert isinstance(e.value, AssertionError)  # TL asserts: old except-clauses still work
    with pytest.raises(FactoredMatrixShapeError, match="broadcast"):
        FactoredMatrix(a, arr(kind, rand(2, 4, 6)))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        FactoredMatrix(arr(kind, rand(4)), arr(kind, rand(4, 3)))
    g = FactoredMatrix(a, arr(kind, rand(3, 4, 6)))
    with pytest.raises(ValueError, match="Right matrix"):
        g @ arr(kind, rand(5, 2))
    with pytest.raises(ValueError, match="Right matrix"):
        g @ arr(kind, rand(5))
    with pytest.raises(ValueError, match="Left matrix"):
        arr(kind, rand(2, 6)) @ g
    with pytest.raises(TypeError):
        g @ 3
    # nothing was modified
    assert tuple(g.shape) == (3, 10, 6) and tuple(g.A.shape) == (3, 10, 4)
