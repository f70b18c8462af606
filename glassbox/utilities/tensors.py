"""Array helpers with TransformerLens's names (``transformer_lens.utilities.tensors`` and
``attribute_utils``), for NumPy arrays and torch tensors alike (answering in the kind given)."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

from glassbox.arrays import is_torch, to_numpy

__all__ = [
    "is_square",
    "is_lower_triangular",
    "check_structure",
    "repeat_along_head_dimension",
    "filter_dict_by_prefix",
    "get_nested_attr",
    "set_nested_attr",
]


def is_square(x: Any) -> bool:
    """True for a 2-d array with as many rows as columns."""
    return getattr(x, "ndim", None) == 2 and x.shape[0] == x.shape[1]


def is_lower_triangular(x: Any) -> bool:
    """True for a square array whose entries above the diagonal are all zero."""
    if not is_square(x):
        return False
    a = np.asarray(to_numpy(x))
    return bool(np.array_equal(a, np.tril(a)))


def check_structure(t1: Any, t2: Any, *, verbose: bool = False) -> None:
    """Print whether two square arrays order their neighbouring rows and columns the same way
    (``t[i] >= t[i+1]`` elementwise, for rows then columns): "PASSED", or the first kind of
    mismatch with the indices where it happens. A debugging aid, as in TransformerLens."""
    a, b = np.asarray(to_numpy(t1)), np.asarray(to_numpy(t2))
    assert a.ndim == 2, f"check_structure needs 2-d arrays, got shape {a.shape}"
    assert a.shape == b.shape, f"shapes differ: {a.shape} and {b.shape}"

    def mismatches(x: np.ndarray, y: np.ndarray, label: str) -> list:
        bad = []
        if verbose:
            print(f"Checking {label}s")
        for i in range(x.shape[0] - 1):
            rx, ry = x[i] >= x[i + 1], y[i] >= y[i + 1]
            if (rx != ry).any():
                bad.append(i)
                if verbose:
                    print(f"\trows {i}:{i + 1}")
                    print(f"\tt1: {rx.tolist()}")
                    print(f"\tt2: {ry.tolist()}")
        return bad

    rows = mismatches(a, b, "row")
    cols = mismatches(a.T, b.T, "column")
    if not rows and not cols:
        print("PASSED")
    elif rows:
        print(f"row mismatch: {rows}")
    else:
        print(f"column mismatch: {cols}")


def repeat_along_head_dimension(tensor: Any, n_heads: int, clone_tensor: bool = True) -> Any:
    """[batch, pos, d_model] -> [batch, pos, n_heads, d_model] (each head a copy when
    ``clone_tensor``, else a broadcast view)."""
    if getattr(tensor, "ndim", None) != 3:
        raise ValueError(f"expected [batch, pos, d_model], got shape {tuple(getattr(tensor, 'shape', ()))}")
    if is_torch(tensor):
        out = tensor.unsqueeze(2).expand(-1, -1, n_heads, -1)
        return out.clone() if clone_tensor else out
    out = np.broadcast_to(np.asarray(tensor)[:, :, None, :], (*tensor.shape[:2], n_heads, tensor.shape[2]))
    return out.copy() if clone_tensor else out


def filter_dict_by_prefix(dictionary: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    """Entries whose key starts with ``prefix`` (a trailing "." is implied), prefix removed:
    ``filter_dict_by_prefix({"blocks.0.attn.W_Q": w}, "blocks.0")`` -> ``{"attn.W_Q": w}``."""
    if not prefix.endswith("."):
        prefix = prefix + "."
    return {k[len(prefix):]: v for k, v in dictionary.items() if k.startswith(prefix)}


def get_nested_attr(obj: Any, attr_str: str) -> Any:
    """``get_nested_attr(model, "blocks.0.attn")`` is ``model.blocks[0].attn`` (numeric parts
    index sequences)."""
    for part in attr_str.split("."):
        obj = obj[int(part)] if part.isdigit() and not hasattr(obj, part) else getattr(obj, part)
    return obj


def set_nested_attr(obj: Any, attr_str: str, value: Any) -> None:
    """``set_nested_attr(model, "blocks.0.attn.W_Q", w)`` assigns ``model.blocks[0].attn.W_Q``."""
    parts = attr_str.split(".")
    parent = get_nested_attr(obj, ".".join(parts[:-1])) if len(parts) > 1 else obj
    setattr(parent, parts[-1], value)
