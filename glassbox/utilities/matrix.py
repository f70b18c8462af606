"""``transformer_lens.utilities.matrix``: helpers for :class:`~glassbox.FactoredMatrix` circuits.

:func:`composition_scores` (also ``glassbox.utils.composition_scores``) and
:func:`get_matrix_corner`.
"""
from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from glassbox.arrays import get_torch, is_torch, wrap
from glassbox.FactoredMatrix import FactoredMatrix, FactoredMatrixShapeError
from glassbox.utils import get_matrix_corner

__all__ = ["composition_scores", "get_matrix_corner"]

#: bytes of one block of pair products held at a time by :func:`composition_scores`
_CHUNK_BYTES = 64 << 20


def _factored(x: Any) -> bool:
    """A glassbox FactoredMatrix, or one that behaves like it (e.g. TransformerLens's)."""
    return isinstance(x, FactoredMatrix) or all(hasattr(x, a) for a in ("ldim", "rdim", "collapse_l", "collapse_r"))


def _dims(x: Any) -> Tuple[int, int]:
    return (x.ldim, x.rdim) if _factored(x) else tuple(int(s) for s in x.shape[-2:])


def _sq_fro(x: Any) -> Any:
    """Squared Frobenius norm over the last two dimensions."""
    if is_torch(x):
        return (x.abs() ** 2).sum((-2, -1)) if x.is_complex() else (x * x).sum((-2, -1))
    return (np.abs(x) ** 2).sum((-2, -1)) if np.iscomplexobj(x) else np.einsum("...ij,...ij->...", x, x)


def _same_kind(a: Any, b: Any) -> Tuple[Any, Any]:
    """One torch and one NumPy operand: both torch (the answer is torch); common dtype."""
    if is_torch(a) != is_torch(b):
        a = a if is_torch(a) else wrap(np.ascontiguousarray(a), True).to(b.device)
        b = b if is_torch(b) else wrap(np.ascontiguousarray(b), True).to(a.device)
    if is_torch(a) and a.dtype != b.dtype:
        common = get_torch().promote_types(a.dtype, b.dtype)
        a, b = a.to(common), b.to(common)
    return a, b


def _crossed_product_norms(X: Any, Y: Any, kl: int, kr: int) -> Any:
    """``|X_i @ Y_j|_F^2`` for every pair: X ``[nL * kl, m]`` stacks nL blocks of ``kl`` rows, Y
    ``[m, nR * kr]`` nR blocks of ``kr`` columns. One matrix product per chunk of X's blocks
    (a few tens of MB at a time) instead of nL * nR small products; returns ``[nL, nR]``."""
    nL, nR = X.shape[0] // kl, Y.shape[1] // kr
    itemsize = X.element_size() if is_torch(X) else X.itemsize
    per_block = max(1, _CHUNK_BYTES // max(1, kl * Y.shape[1] * itemsize))
    out = []
    for start in range(0, nL, per_block):
        stop = min(nL, start + per_block)
        P = X[start * kl:stop * kl] @ Y  # [(stop-start) * kl, nR * kr]
        out.append(_sq_fro(P.reshape(stop - start, kl, nR, kr).swapaxes(1, 2)))
    if is_torch(X):
        return get_torch().cat(out, 0)
    return np.concatenate(out, 0)


def composition_scores(left: Any, right: Any, broadcast_dims: bool = True) -> Any:
    """Composition score ``|L R|_F / (|L|_F |R|_F)`` of two circuits (A Mathematical Framework).

    Args:
        left: ``[..., l, m]`` circuit written first, e.g. ``model.OV`` — a
            :class:`~glassbox.FactoredMatrix` or a dense array.
        right: ``[..., m, r]`` circuit reading it, e.g. ``model.QK`` (Q-composition),
            ``model.QK.T`` (K-composition) or ``model.OV`` (V-composition).
        broadcast_dims: True (default): the leading dimensions are crossed, ``[*L]`` and ``[*R]``
            give ``[*L, *R]`` (``model.OV`` and ``model.QK`` give ``[n_layers, n_heads, n_layers,
            n_heads]``). False: they broadcast against each other.

    Returns:
        The scores, torch if either input is, else NumPy (a 0-d array for two single matrices).

    A FactoredMatrix enters through ``left.collapse_l()`` (``S V^T``) and ``right.collapse_r()``
    (``U S``), which have the norms and product norm of the full matrices but only rank-many
    rows / columns, so no ``[d_model, d_model]`` matrix is formed; with ``broadcast_dims`` all
    pairs come from one blocked matrix product (a few tens of MB at a time). The values are
    TransformerLens's ``utils.composition_scores``.

    Raises:
        ValueError: ``left``'s columns differ from ``right``'s rows (also an AssertionError, as
            TransformerLens asserts this); TypeError for a non-matrix argument.
    """
    for name, x in (("left", left), ("right", right)):
        if not _factored(x) and not (hasattr(x, "shape") and len(x.shape) >= 2):
            raise TypeError(f"composition_scores: {name} must be a FactoredMatrix or an array with at "
                            f"least 2 dimensions, got {type(x).__name__}")
    if _dims(left)[1] != _dims(right)[0]:
        raise FactoredMatrixShapeError(
            f"Composition scores require left.rdim==right.ldim, shapes were left: {tuple(left.shape)}, "
            f"right: {tuple(right.shape)}")
    new_left = left.collapse_l() if _factored(left) else left  # [..., kl, m]
    new_right = right.collapse_r() if _factored(right) else right  # [..., m, kr]
    new_left, new_right = _same_kind(new_left, new_right)
    l_norms, r_norms = _sq_fro(new_left) ** 0.5, _sq_fro(new_right) ** 0.5
    if broadcast_dims:
        lead_l, lead_r = tuple(new_left.shape[:-2]), tuple(new_right.shape[:-2])
        kl, m = (int(s) for s in new_left.shape[-2:])
        kr = int(new_right.shape[-1])
        X = new_left.reshape(-1, m)
        Y = new_right.swapaxes(-1, -2).reshape(-1, m).swapaxes(0, 1)  # [m, nR * kr]
        comp = _crossed_product_norms(X, Y, kl, kr) ** 0.5  # [nL, nR]
        comp = comp.reshape(lead_l + lead_r)
        l_norms = l_norms.reshape(lead_l + (1,) * len(lead_r))
    else:
        comp = _sq_fro(new_left @ new_right) ** 0.5
    scores = comp / r_norms / l_norms
    return scores if is_torch(scores) else np.asarray(scores)
