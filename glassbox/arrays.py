"""NumPy / torch interoperability for glassbox.

glassbox computes on NumPy arrays; torch is optional and only imported when a
caller actually works in torch. The rule every public entry point follows:

* **Inputs decide.** If the model input is a ``torch.Tensor`` then outputs
  (logits, loss, residuals), ``ActivationCache`` entries and the activations
  handed to hook functions are torch tensors. They are created with
  ``torch.from_numpy`` and therefore share memory with glassbox's NumPy buffers:
  an in-place edit inside a hook is seen by the engine, exactly as with
  TransformerLens. If the input is a NumPy array, everything is NumPy.
* **Text counts as torch when torch is importable.** ``str`` / ``list[str]``
  inputs (and ``to_tokens``) produce torch tensors when torch can be imported,
  NumPy arrays otherwise, so an unchanged TransformerLens script keeps getting
  tensors. Weight accessors (``model.W_Q``, ``model.blocks[0].attn.W_Q``) and
  ``state_dict()`` follow the same rule.
* **Override.** ``glassbox.set_array_backend("numpy" | "torch" | "auto")``
  forces one array type for every output ("auto" is the rule above).
* A loss is a 0-d array / tensor, so ``.item()`` works either way.

Only float32 is produced; torch tensors passed in (any dtype, on CPU) are
converted to NumPy with ``detach().cpu()``; bfloat16 is widened to float32.
"""
from __future__ import annotations

import importlib.util
import sys
from typing import Any, Optional

import numpy as np

_BACKENDS = ("auto", "numpy", "torch")
_backend = "auto"
_torch_available: Optional[bool] = None


def set_array_backend(name: str) -> None:
    """Choose the array type of glassbox outputs: "numpy", "torch" or "auto"."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"array backend must be one of {_BACKENDS}, got {name!r}")
    if name == "torch" and not torch_available():
        raise ImportError("set_array_backend('torch') needs torch, which cannot be imported")
    _backend = name


def get_array_backend() -> str:
    """The current backend setting ("auto", "numpy" or "torch")."""
    return _backend


def torch_available() -> bool:
    """True if torch can be imported (checked without importing it)."""
    global _torch_available
    if _torch_available is None:
        _torch_available = "torch" in sys.modules or importlib.util.find_spec("torch") is not None
    return _torch_available


def get_torch():
    """Import and return torch (raises ImportError if absent)."""
    import torch  # noqa: WPS433 (lazy on purpose)

    return torch


def is_torch(x: Any) -> bool:
    """True if ``x`` is a torch.Tensor (never imports torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def wants_torch(x: Any = None) -> bool:
    """Whether outputs derived from input ``x`` should be torch tensors."""
    if _backend == "numpy":
        return False
    if _backend == "torch":
        return True
    if is_torch(x):
        return True
    if isinstance(x, np.ndarray):
        return False
    # str, list[str], python ints, None: torch if it is importable
    return torch_available()


def to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """Any array-like (torch tensor, ndarray, list, scalar) → ndarray.

    torch tensors are detached and moved to CPU; bfloat16 becomes float32. The
    result shares memory with a CPU tensor when no conversion is needed.
    """
    if is_torch(x):
        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        torch = sys.modules["torch"]
        if t.dtype in (torch.bfloat16,):
            t = t.float()
        arr = t.numpy()
    else:
        arr = np.asarray(x)
    if dtype is not None and arr.dtype != dtype:
        arr = arr.astype(dtype)
    return arr


def wrap(arr: Any, torch_mode: bool) -> Any:
    """Return ``arr`` (an ndarray, or None) as a torch tensor sharing memory if
    ``torch_mode``; otherwise unchanged."""
    if arr is None or not torch_mode:
        return arr
    if is_torch(arr):
        return arr
    torch = get_torch()
    arr = np.asarray(arr)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr)


def like(arr: np.ndarray, reference: Any) -> Any:
    """Return ``arr`` as the same kind of array as ``reference`` (torch or NumPy)."""
    return wrap(arr, is_torch(reference))


def asarray_f32(x: Any) -> np.ndarray:
    """float32, C-contiguous NumPy array from any array-like (copy only if needed)."""
    return np.ascontiguousarray(to_numpy(x), dtype=np.float32)
