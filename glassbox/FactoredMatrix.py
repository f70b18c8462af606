"""``FactoredMatrix``: a low-rank matrix kept as the product of its two factors.

TransformerLens's ``FactoredMatrix`` (``transformer_lens.FactoredMatrix``), same names and
semantics. ``FactoredMatrix(A, B)`` stands for ``M = A @ B`` with ``A`` of shape
``[..., ldim, mdim]`` and ``B`` of shape ``[..., mdim, rdim]`` (leading dimensions broadcast).
Typical use is a head's OV circuit ``W_V @ W_O`` or QK circuit ``W_Q @ W_K.T``: a
``[d_model, d_model]`` matrix of rank ``d_head``. ``model.OV`` is ``[n_layers, n_heads, d_model,
d_model]`` — 340 MB (324 MiB) of float32 for GPT-2 small if multiplied out — but only its
factors (2 x 28 MB) are held.

Nothing is multiplied out unless asked (:attr:`AB`): products with arrays or other factored
matrices stay factored, and :meth:`svd`, :attr:`S`, :meth:`norm`, :attr:`eigenvalues` work from
the factors (QR of each factor, then an SVD of a ``[mdim, mdim]`` core).

Arrays: NumPy arrays in, NumPy arrays out; torch tensors in (or
``glassbox.set_array_backend("torch")``), torch tensors out, computed with torch on the
tensors' device (autograd flows through). ``set_array_backend("numpy")`` makes everything NumPy.
"""
from __future__ import annotations

import warnings
from functools import cached_property
from typing import Any, List, Tuple, Union

import numpy as np

from glassbox.arrays import get_array_backend, get_torch, is_torch, to_numpy

Array = Any  # numpy.ndarray or torch.Tensor
Index = Union[int, slice, None, Tuple[Any, ...], Any]

__all__ = ["FactoredMatrix", "FactoredMatrixShapeError"]


class FactoredMatrixShapeError(ValueError, AssertionError, RuntimeError):
    """Shapes of factors or operands do not fit.

    A ``ValueError`` (glassbox's rule for bad input) that is also an ``AssertionError`` and a
    ``RuntimeError``: what TransformerLens raises for these mistakes (an ``assert`` on inner
    dimensions, a ``RuntimeError`` on leading dimensions that do not broadcast), so existing
    ``except`` clauses keep working."""


# ---------------------------------------------------------------------------------------------
# NumPy / torch dispatch
# ---------------------------------------------------------------------------------------------
def _torch_result(*operands: Any) -> bool:
    """Whether a result computed from ``operands`` is a torch tensor (glassbox's array rule)."""
    backend = get_array_backend()
    if backend == "numpy":
        return False
    if backend == "torch":
        return True
    return any(is_torch(x) or (isinstance(x, FactoredMatrix) and x._torch) for x in operands)


def _as_kind(x: Any, torch_mode: bool, like: Any = None) -> Array:
    """``x`` as a torch tensor (on ``like``'s device) if ``torch_mode``, else as a NumPy array.

    NumPy -> torch shares memory when it can; torch -> NumPy detaches (bfloat16 becomes float32)."""
    if not torch_mode:
        return to_numpy(x)
    torch = get_torch()
    if not is_torch(x):
        arr = np.asarray(x)
        if arr.dtype == object:
            raise TypeError(f"cannot use an object of type {type(x).__name__} as an array")
        if not arr.flags.writeable:
            arr = arr.copy()
        x = torch.from_numpy(arr)
    if like is not None and is_torch(like) and x.device != like.device:
        x = x.to(like.device)
    return x


def _same_dtype(a: Array, b: Array) -> Tuple[Array, Array]:
    """torch does not promote dtypes in matmul: cast both to their common dtype (NumPy does)."""
    if is_torch(a) and a.dtype != b.dtype:
        torch = get_torch()
        common = torch.promote_types(a.dtype, b.dtype)
        return a.to(common), b.to(common)
    return a, b


def _mm(a: Array, b: Array) -> Array:
    a, b = _same_dtype(a, b)
    return a @ b


def _t(x: Array) -> Array:
    """Swap the last two dimensions (a view)."""
    return x.transpose(-1, -2) if is_torch(x) else np.swapaxes(x, -1, -2)


def _h(x: Array) -> Array:
    """Conjugate transpose of the last two dimensions (the transpose for real arrays)."""
    if is_torch(x):
        return x.mH if x.is_complex() else x.transpose(-1, -2)
    return np.conj(np.swapaxes(x, -1, -2)) if np.iscomplexobj(x) else np.swapaxes(x, -1, -2)


def _sqrt(x: Array) -> Array:
    return x.sqrt() if is_torch(x) else np.asarray(np.sqrt(x))  # 0-d array, not a NumPy scalar


def _unsqueeze(x: Array, dim: int) -> Array:
    return x.unsqueeze(dim) if is_torch(x) else np.expand_dims(x, dim)


def _broadcast_to(x: Array, shape: Tuple[int, ...]) -> Array:
    if tuple(x.shape) == tuple(shape):
        return x
    return x.broadcast_to(shape) if is_torch(x) else np.broadcast_to(x, shape)


def _for_linalg(x: Array) -> Array:
    """Factors in a dtype LAPACK handles: 16-bit floats and integers become float32 (torch) /
    float64 (NumPy integers); float32 / float64 / complex are kept."""
    if is_torch(x):
        torch = get_torch()
        if x.dtype in (torch.float32, torch.float64, torch.complex64, torch.complex128):
            return x
        return x.to(torch.float32)
    if x.dtype in (np.float32, np.float64, np.complex64, np.complex128):
        return x
    return x.astype(np.float32 if x.dtype == np.float16 else np.float64)


def _qr(x: Array) -> Tuple[Array, Array]:
    if is_torch(x):
        return get_torch().linalg.qr(x, mode="reduced")
    return np.linalg.qr(x, mode="reduced")


def _svd(x: Array) -> Tuple[Array, Array, Array]:
    if is_torch(x):
        return get_torch().linalg.svd(x, full_matrices=False)
    return np.linalg.svd(x, full_matrices=False)


def _eigvals(x: Array) -> Array:
    if is_torch(x):
        return get_torch().linalg.eigvals(x)
    vals = np.linalg.eigvals(x)
    # torch always answers in a complex dtype; NumPy drops to real when it can
    return vals.astype(np.result_type(x.dtype, np.complex64), copy=False)


def _shape_type(torch_mode: bool, shape: Tuple[int, ...]) -> Tuple[int, ...]:
    return get_torch().Size(shape) if torch_mode else tuple(int(s) for s in shape)


def _is_array(x: Any) -> bool:
    return is_torch(x) or isinstance(x, np.ndarray)


# ---------------------------------------------------------------------------------------------
class FactoredMatrix:
    """A matrix ``M = A @ B`` held as its factors, with leading (batch) dimensions.

    Args:
        A: ``[..., ldim, mdim]`` left factor (NumPy array or torch tensor).
        B: ``[..., mdim, rdim]`` right factor.

    Leading dimensions of ``A`` and ``B`` are broadcast against each other (as views), so
    ``FactoredMatrix(W_V, W_O)`` with ``W_V`` ``[n_heads, d_model, d_head]`` and ``W_O``
    ``[n_heads, d_head, d_model]`` is the ``[n_heads, d_model, d_model]`` OV circuit of every
    head; ``fm[h]`` is head ``h``'s.

    Attributes: ``A``, ``B`` (broadcast factors), ``ldim``, ``mdim``, ``rdim``, ``shape``
    (``torch.Size`` when the factors are torch tensors, else a tuple), ``ndim``,
    ``has_leading_dims``.

    Raises:
        FactoredMatrixShapeError: (a ValueError) the inner dimensions differ or the leading
            dimensions do not broadcast.
    """

    # NumPy must not try to turn a FactoredMatrix into an array: ``ndarray @ fm`` and
    # ``ndarray * fm`` then fall through to ``fm.__rmatmul__`` / ``fm.__rmul__``.
    __array_ufunc__ = None

    def __init__(self, A: Array, B: Array):
        torch_mode = _torch_result(A, B)
        A = _as_kind(A, torch_mode, like=B if is_torch(B) else None)
        B = _as_kind(B, torch_mode, like=A)
        if A.ndim < 2 or B.ndim < 2:
            raise FactoredMatrixShapeError(
                f"FactoredMatrix factors must have at least 2 dimensions ([..., ldim, mdim] and "
                f"[..., mdim, rdim]), got A of shape {tuple(A.shape)} and B of shape {tuple(B.shape)}")
        if A.shape[-1] != B.shape[-2]:
            raise FactoredMatrixShapeError(
                f"Factored matrix must match on inner dimension, shapes were a: {tuple(A.shape)}, "
                f"b: {tuple(B.shape)} (A's last dimension must equal B's second-to-last)")
        self._torch: bool = torch_mode
        self.ldim: int = int(A.shape[-2])
        self.rdim: int = int(B.shape[-1])
        self.mdim: int = int(B.shape[-2])
        self.has_leading_dims: bool = A.ndim > 2 or B.ndim > 2
        try:
            leading = np.broadcast_shapes(tuple(A.shape[:-2]), tuple(B.shape[:-2]))
        except ValueError:
            raise FactoredMatrixShapeError(
                f"Shape mismatch: cannot broadcast leading dimensions. A has shape {tuple(A.shape)}, "
                f"B has shape {tuple(B.shape)}") from None
        self.shape: Tuple[int, ...] = _shape_type(torch_mode, tuple(leading) + (self.ldim, self.rdim))
        self.A: Array = _broadcast_to(A, tuple(leading) + (self.ldim, self.mdim))
        self.B: Array = _broadcast_to(B, tuple(leading) + (self.mdim, self.rdim))

    # -- products ------------------------------------------------------------------------------
    def __matmul__(self, other: Any) -> Union["FactoredMatrix", Array]:
        """``self @ other``.

        * ``other`` a FactoredMatrix: ``(self @ other.A) @ other.B`` (stays factored).
        * ``other`` a vector ``[rdim]``: the dense vector ``A @ (B @ other)``, ``[..., ldim]``.
        * ``other`` a matrix ``[..., rdim, new_rdim]``: a FactoredMatrix; its inner dimension
          is the smaller of ``mdim`` and ``rdim`` (``A, B @ other`` if ``rdim > mdim``, else
          ``AB, other``), as in TransformerLens.
        """
        if isinstance(other, FactoredMatrix):
            return (self @ other.A) @ other.B
        if not _is_array(other):
            if isinstance(other, (int, float, complex)):
                return NotImplemented
            other = np.asarray(other)
        torch_mode = _torch_result(self, other)
        A, B = self._factors(torch_mode)
        other = _as_kind(other, torch_mode, like=A)
        if other.ndim < 1 or other.shape[-1 if other.ndim == 1 else -2] != self.rdim:
            raise FactoredMatrixShapeError(
                f"Right matrix must match on inner dimension, shapes were self: {tuple(self.shape)}, "
                f"other: {tuple(other.shape)} (need other.shape[-2] == rdim == {self.rdim}, or a "
                f"vector of length {self.rdim})")
        if other.ndim < 2:
            return _mm(A, _mm(B, _unsqueeze(other, -1)))[..., 0]
        if self.rdim > self.mdim:
            return FactoredMatrix(A, _mm(B, other))
        return FactoredMatrix(_mm(A, B), other)

    def __rmatmul__(self, other: Any) -> Union["FactoredMatrix", Array]:
        """``other @ self``: the mirror image of :meth:`__matmul__` (vector ``[ldim]`` -> dense
        ``[..., rdim]``; matrix ``[..., new_ldim, ldim]`` -> FactoredMatrix)."""
        if isinstance(other, FactoredMatrix):
            return other.A @ (other.B @ self)
        if not _is_array(other):
            if isinstance(other, (int, float, complex)):
                return NotImplemented
            other = np.asarray(other)
        torch_mode = _torch_result(self, other)
        A, B = self._factors(torch_mode)
        other = _as_kind(other, torch_mode, like=A)
        if other.ndim < 1 or other.shape[-1] != self.ldim:
            raise FactoredMatrixShapeError(
                f"Left matrix must match on inner dimension, shapes were self: {tuple(self.shape)}, "
                f"other: {tuple(other.shape)} (need other.shape[-1] == ldim == {self.ldim})")
        if other.ndim < 2:
            return _mm(_mm(_unsqueeze(other, -2), A), B)[..., 0, :]
        if self.ldim > self.mdim:
            return FactoredMatrix(_mm(other, A), B)
        return FactoredMatrix(other, _mm(A, B))

    def __mul__(self, scalar: Any) -> "FactoredMatrix":
        """Scalar multiplication: ``(s * A) @ B``. ``scalar`` is a number or a one-element array."""
        if isinstance(scalar, FactoredMatrix):
            raise TypeError("FactoredMatrix * FactoredMatrix is not defined; use @ for matrix products")
        if isinstance(scalar, (bool, int, float, complex, np.number)):
            return FactoredMatrix(self.A * scalar, self.B)
        if not _is_array(scalar):
            return NotImplemented
        size = scalar.numel() if is_torch(scalar) else scalar.size
        if size != 1:
            raise FactoredMatrixShapeError(
                f"Tensor must be a scalar for use with * but was of shape {tuple(scalar.shape)}. "
                f"For matrix multiplication, use @ instead.")
        torch_mode = _torch_result(self, scalar)
        A = self._factors(torch_mode)[0]
        s = _as_kind(scalar, torch_mode, like=A)
        if not is_torch(s) and np.issubdtype(A.dtype, np.floating) and np.issubdtype(s.dtype, np.floating):
            s = s.astype(A.dtype)  # torch's rule: a one-element tensor does not widen the factor
        return FactoredMatrix(A * s, self.B)

    def __rmul__(self, scalar: Any) -> "FactoredMatrix":
        """``scalar * self`` (same as ``self * scalar``)."""
        return self.__mul__(scalar)

    def _factors(self, torch_mode: bool) -> Tuple[Array, Array]:
        """The factors as the array kind of a result (converted only when the kinds differ)."""
        if torch_mode == self._torch:
            return self.A, self.B
        return _as_kind(self.A, torch_mode), _as_kind(self.B, torch_mode)

    # -- dense forms -----------------------------------------------------------------------------
    @property
    def AB(self) -> Array:
        """The product ``A @ B``, ``[..., ldim, rdim]``: dense, and as large as that shape says."""
        return _mm(self.A, self.B)

    @property
    def BA(self) -> Array:
        """The reverse product ``B @ A``, ``[..., mdim, mdim]``. Needs ``ldim == rdim``."""
        if self.rdim != self.ldim:
            raise FactoredMatrixShapeError(
                f"Can only take ba if ldim==rdim, shapes were self: {tuple(self.shape)}")
        return _mm(self.B, self.A)

    @property
    def T(self) -> "FactoredMatrix":
        """The transpose, ``B^T @ A^T`` (views of the factors)."""
        return FactoredMatrix(_t(self.B), _t(self.A))

    # -- spectral ------------------------------------------------------------------------------
    @cached_property
    def _svd_cached(self) -> Tuple[Array, Array, Array]:
        # A = Qa Ra and B^H = Qb Rb (reduced QR), so A @ B = Qa (Ra Rb^H) Qb^H: only the small
        # core Ra Rb^H ([min(ldim, mdim), min(rdim, mdim)]) needs an SVD; U and V come back
        # through the orthonormal Qa, Qb. The [ldim, rdim] product is never formed.
        A, B = _same_dtype(_for_linalg(self.A), _for_linalg(self.B))
        Qa, Ra = _qr(A)
        Qb, Rb = _qr(_h(B))
        Um, S, Vhm = _svd(_mm(Ra, _h(Rb)))
        return _mm(Qa, Um), S, _mm(Qb, _h(Vhm))

    def svd(self) -> Tuple[Array, Array, Array]:
        """Compact singular value decomposition ``(U, S, V)`` with ``M == U @ diag(S) @ V^T``.

        ``U`` ``[..., ldim, k]``, ``S`` ``[..., k]`` (descending), ``V`` ``[..., rdim, k]``,
        ``k = min(ldim, mdim, rdim)`` — usually ``mdim``. Note ``V``, not ``V^T``, as in
        TransformerLens. Computed from the factors (QR then an SVD of a ``k x k`` core) and
        cached on the object. Singular vectors are defined up to sign (and rotation within
        repeated singular values), so they may differ from TransformerLens's by such a factor."""
        return self._svd_cached

    @property
    def U(self) -> Array:
        """Left singular vectors, ``[..., ldim, k]``."""
        return self.svd()[0]

    @property
    def S(self) -> Array:
        """Singular values, ``[..., k]``, descending."""
        return self.svd()[1]

    @property
    def V(self) -> Array:
        """Right singular vectors, ``[..., rdim, k]``: ``M == U @ diag(S) @ V^T``."""
        return self.svd()[2]

    @property
    def Vh(self) -> Array:
        """Deprecated alias of :attr:`V` (TransformerLens's name; it returns V, not V^T)."""
        warnings.warn(
            "FactoredMatrix.Vh returns V (the right singular vectors), not Vh; use .V, or "
            ".V.transpose(-2, -1) for the conjugate transpose. The .Vh alias will be removed.",
            DeprecationWarning, stacklevel=2)
        return self.svd()[2]

    @property
    def eigenvalues(self) -> Array:
        """Eigenvalues of the square ``M``, ``[..., mdim]``, complex and unordered.

        ``AB`` and ``BA`` share their non-zero eigenvalues (``BAv = kv`` gives ``AB(Av) = k(Av)``),
        so this is ``eig(B @ A)``: ``mdim`` values; the other ``ldim - mdim`` are 0."""
        return _eigvals(_for_linalg(self.BA))

    def norm(self) -> Array:
        """Frobenius norm, ``[...]``: ``sqrt(sum S^2)``."""
        return _sqrt((self.S ** 2).sum(-1))

    def make_even(self) -> "FactoredMatrix":
        """The same matrix factored evenly: ``(U sqrt(S), sqrt(S) V^T)``: both factors carry half
        of the singular values and have orthogonal columns / rows."""
        U, S, V = self.svd()
        root = _sqrt(S)
        return FactoredMatrix(U * root[..., None, :], root[..., :, None] * _h(V))

    def collapse_l(self) -> Array:
        """``S V^T``, ``[..., k, rdim]``: the matrix with its left orthogonal factor ``U`` removed
        (``M == U @ collapse_l()``)."""
        return self.S[..., :, None] * _h(self.V)

    def collapse_r(self) -> Array:
        """``U S``, ``[..., ldim, k]``: the matrix with its right orthogonal factor removed
        (``M == collapse_r() @ V^T``)."""
        return self.U * self.S[..., None, :]

    # -- shape -----------------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def pair(self) -> Tuple[Array, Array]:
        """``(A, B)``."""
        return (self.A, self.B)

    def unsqueeze(self, k: int) -> "FactoredMatrix":
        """Insert a size-1 dimension at ``k`` into both factors (``k`` counts as for the
        factors, so use a non-negative index into the leading dimensions)."""
        return FactoredMatrix(_unsqueeze(self.A, k), _unsqueeze(self.B, k))

    def get_corner(self, k: int = 3) -> Array:
        """The dense top-left ``k x ... x k`` corner of ``M`` (only that corner is computed)."""
        corner = _mm(self.A[..., :k, :], self.B[..., :, :k])
        return corner[tuple(slice(k) for _ in range(corner.ndim))]

    @staticmethod
    def _int_to_slice(idx: Tuple[Any, ...], pos: int) -> Tuple[Any, ...]:
        """Replace a plain int at ``idx[pos]`` by the one-element slice, keeping that dimension
        (so ``fm[h, i]`` is a ``1 x rdim`` FactoredMatrix, not a vector)."""
        items: List[Any] = list(idx)
        value = items[pos]
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            value = int(value)
            items[pos] = slice(value, value + 1 if value != -1 else None)
        return tuple(items)

    def __getitem__(self, idx: Index) -> "FactoredMatrix":
        """Index the leading dimensions (``fm[layer, head]``). One more index slices the rows
        (of ``A``), two more the rows and columns (of ``B``); an int there keeps its dimension
        as a length-1 slice. Always returns a FactoredMatrix."""
        if not isinstance(idx, tuple):
            idx = (idx,)
        if not self._torch:
            idx = tuple(to_numpy(i) if is_torch(i) else i for i in idx)
        length = len([i for i in idx if i is not None])
        lead = len(self.shape) - 2
        if length <= lead:
            return FactoredMatrix(self.A[idx], self.B[idx])
        if length == lead + 1:
            idx = self._int_to_slice(idx, -1)
            return FactoredMatrix(self.A[idx], self.B[idx[:-1]])
        if length == lead + 2:
            idx = self._int_to_slice(self._int_to_slice(idx, -1), -2)
            return FactoredMatrix(self.A[idx[:-1]], self.B[idx[:-2] + (slice(None), idx[-1])])
        raise FactoredMatrixShapeError(
            f"{idx} is too long an index for a FactoredMatrix with shape {tuple(self.shape)}")

    def __repr__(self) -> str:
        return f"FactoredMatrix: Shape({self.shape}), Hidden Dim({self.mdim})"
