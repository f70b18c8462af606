"""Checked access to the raw tensors of a checkpoint, for the architecture adapters."""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Tuple

import numpy as np

from .safetensors_io import SafeTensor

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

    def _convert(self, name: str, t: SafeTensor, shape: Tuple[int, ...]) -> np.ndarray:
        shape = tuple(int(s) for s in shape)
        if t.shape != shape:
            where = t.file or self.origin
            raise ValueError(
                f"{where}: tensor {name!r} has shape {t.shape} in the checkpoint but config.json "
                f"implies {shape}: the config and the weights disagree")
        if t.dtype not in ("F32", "F16", "BF16", "F64"):
            raise ValueError(f"{t.file or self.origin}: tensor {name!r} has dtype {t.dtype}; "
                             f"a floating-point weight was expected")
        return t.numpy(np.float32)
