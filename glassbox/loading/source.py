"""Checked access to the raw tensors of a checkpoint, for the architecture adapters."""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Tuple

import numpy as np

from .safetensors_io import SafeTensor, float32_to_bf16
from .stored import StoredMatrix

__all__ = ["TensorSource"]


class TensorSource:
    """Tensors of one checkpoint (all shards), fetched by name with a shape check.

    Every fetch returns float32 (F32 stays a zero-copy view; F16/BF16/F64 are converted). A
    missing tensor or a shape that disagrees with ``config.json`` raises ``ValueError`` naming
    the tensor, the file and both shapes.
    """

    def __init__(self, tensors: Mapping[str, SafeTensor], origin: str, architecture: str = ""):
        self.tensors = tensors
        self.origin = origin
        self.architecture = architecture

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def keys(self) -> Iterable[str]:
        return self.tensors.keys()

    def shape(self, name: str) -> Tuple[int, ...]:
        return self.tensors[name].shape

    def get(self, name: str, shape: Tuple[int, ...]) -> np.ndarray:
        """The tensor ``name`` as float32, checked to have ``shape`` (from the config)."""
        t = self.tensors.get(name)
        if t is None:
            arch = f" ({self.architecture} needs it)" if self.architecture else ""
            raise ValueError(f"{self.origin}: tensor {name!r} is missing from the checkpoint{arch}")
        return self._convert(name, t, shape)

    def optional(self, name: str, shape: Tuple[int, ...]) -> Optional[np.ndarray]:
        """Like :meth:`get`, but None when the checkpoint has no such tensor."""
        t = self.tensors.get(name)
        return None if t is None else self._convert(name, t, shape)

    def stored(self, name: str, shape: Tuple[int, int], kind: str, n_heads: int = 0,
               keep: str = "auto") -> StoredMatrix:
        """The 2-D tensor ``name`` (HF layout ``shape`` = [rows, cols]) as a :class:`StoredMatrix`.

        ``keep``: ``"auto"`` keeps F32/BF16/F16 tensors in their stored dtype (zero-copy views of
        the memory-mapped file; F64 becomes F32); ``"BF16"`` or ``"F16"`` keeps tensors already in
        that dtype and rounds the others to it (a new in-memory array).
        """
        t = self.tensors.get(name)
        if t is None:
            arch = f" ({self.architecture} needs it)" if self.architecture else ""
            raise ValueError(f"{self.origin}: tensor {name!r} is missing from the checkpoint{arch}")
        self._check(name, t, shape)
        rows, cols = (int(x) for x in shape)
        want = t.dtype if keep == "auto" and t.dtype in ("F32", "BF16", "F16") else keep
        if want == "auto":
            want = "F32"
        if t.dtype == want:
            data = t.data
            if not data.flags.c_contiguous:
                data = np.ascontiguousarray(data)
        elif want == "BF16":
            data = float32_to_bf16(t.numpy(np.float32))
        elif want == "F16":
            data = np.ascontiguousarray(t.numpy(np.float32).astype(np.float16))
        elif want == "F32":
            data = np.ascontiguousarray(t.numpy(np.float32))
        else:
            raise ValueError(f"cannot keep weights as {keep!r} (supported: auto, BF16, F16)")
        return StoredMatrix(data, want, rows, cols, kind, n_heads, name=f"{t.file or self.origin}: {name}")

    def _check(self, name: str, t: SafeTensor, shape: Tuple[int, ...]) -> None:
        shape = tuple(int(s) for s in shape)
        if t.shape != shape:
            where = t.file or self.origin
            raise ValueError(
                f"{where}: tensor {name!r} has shape {t.shape} in the checkpoint but config.json "
                f"implies {shape}: the config and the weights disagree")
        if t.dtype not in ("F32", "F16", "BF16", "F64"):
            raise ValueError(f"{t.file or self.origin}: tensor {name!r} has dtype {t.dtype}; "
                             f"a floating-point weight was expected")

    def _convert(self, name: str, t: SafeTensor, shape: Tuple[int, ...]) -> np.ndarray:
        self._check(name, t, shape)
        return t.numpy(np.float32)
