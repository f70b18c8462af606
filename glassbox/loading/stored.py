"""Weights kept as stored in their files: bf16/f16 rows or GGUF quantised blocks.

A `StoredMatrix` is a weight matrix in the file's layout — HF ``nn.Linear``'s
``[out, in]`` rows, GGUF's rows of quantisation blocks — that the C engine reads
in place (widened or dequantised inside the GEMM's packing step, never
expanded in RAM). That is what lets a 7B bf16 model fit in ~13.5 GB instead of
27 GB. TransformerLens-layout views (``W_Q`` as ``[n_heads, d_model, d_head]``,
``W_in`` as ``[d_model, d_mlp]``, …) are materialised on demand by
:meth:`StoredMatrix.to_tl`, as float32 copies.

Layouts (``kind``), with the TL tensor they stand for:

====================  ===================  ============================
kind                  stored rows x cols   TL layout (``to_tl``)
====================  ===================  ============================
``"heads_in"``        [heads*d, D]         W_Q/W_K/W_V [heads, D, d]
``"heads_out"``       [D, heads*d]         W_O [heads, d, D]
``"transposed"``      [out, in]            W_in/W_gate [D, M], W_out [M, D], W_U [D, V]
``"table"``           [V, D]               W_E [V, D] (an embedding table)
====================  ===================  ============================
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

FLOAT_DTYPES = ("F32", "BF16", "F16")
BLOCK_DTYPES = ("Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K")
KINDS = ("heads_in", "heads_out", "transposed", "table")

# (elements per block, bytes per block), as GGUF stores them.
_BLOCKS = {"F32": (1, 4), "BF16": (1, 2), "F16": (1, 2), "Q8_0": (32, 34), "Q4_0": (32, 18),
           "Q4_1": (32, 20), "Q4_K": (256, 144), "Q6_K": (256, 210)}


def row_bytes(dtype: str, n_cols: int) -> int:
    """Bytes of one stored row of ``n_cols`` elements of ``dtype``."""
    elems, nbytes = _BLOCKS[dtype]
    if n_cols < 0 or n_cols % elems:
        raise ValueError(f"{dtype} rows need a multiple of {elems} elements, got {n_cols}")
    return n_cols // elems * nbytes


@dataclass
class StoredMatrix:
    """One weight matrix kept in its file storage (see the module docstring)."""

    storage: np.ndarray  # raw rows, C-contiguous (np.memmap is fine)
    dtype: str  # one of FLOAT_DTYPES + BLOCK_DTYPES
    n_rows: int
    n_cols: int
    kind: str  # one of KINDS
    n_heads: int = 0  # heads_in / heads_out only
    name: str = ""  # the tensor's name in its file (for messages)

    def __post_init__(self) -> None:
        what = f"{self.name}: " if self.name else ""
        if self.dtype not in _BLOCKS:
            raise ValueError(f"{what}unsupported weight dtype {self.dtype!r}; supported: {sorted(_BLOCKS)}")
        if self.kind not in KINDS:
            raise ValueError(f"{what}unknown StoredMatrix kind {self.kind!r}")
        if self.n_rows < 0 or self.n_cols < 0:
            raise ValueError(f"{what}{self.dtype} matrix [{self.n_rows}, {self.n_cols}] has a negative size")
        try:
            want = self.n_rows * row_bytes(self.dtype, self.n_cols)
        except ValueError as exc:
            raise ValueError(f"{what}matrix [{self.n_rows}, {self.n_cols}]: {exc}") from None
        if self.storage.nbytes != want or not self.storage.flags.c_contiguous:
            raise ValueError(
                f"{what}{self.dtype} matrix [{self.n_rows}, {self.n_cols}] needs {want} contiguous bytes, "
                f"storage has {self.storage.nbytes} (shape {self.storage.shape}, dtype {self.storage.dtype})")
        if self.kind in ("heads_in", "heads_out"):
            if self.n_heads <= 0:
                raise ValueError(f"{what}{self.kind} StoredMatrix needs n_heads")
            split = self.n_rows if self.kind == "heads_in" else self.n_cols
            if split % self.n_heads:
                raise ValueError(f"{what}{self.kind} matrix [{self.n_rows}, {self.n_cols}] cannot be "
                                 f"split into {self.n_heads} heads")

    @property
    def shape(self) -> Tuple[int, ...]:
        """The TransformerLens shape this matrix stands for."""
        r, c, h = self.n_rows, self.n_cols, self.n_heads
        if self.kind == "heads_in":
            return (h, c, r // h)
        if self.kind == "heads_out":
            return (h, c // h, r)
        if self.kind == "transposed":
            return (c, r)
        return (r, c)

    @property
    def nbytes(self) -> int:
        return int(self.storage.nbytes)

    def engine_spec(self) -> tuple:
        """What the C engine takes for this weight: ``("rows", storage, dtype, n_rows, n_cols)``."""
        return ("rows", self.storage, self.dtype, self.n_rows, self.n_cols)

    def dequantize(self) -> np.ndarray:
        """The stored ``[n_rows, n_cols]`` matrix as float32 (a new array).

        Raises :class:`~glassbox.loading.mapped.WeightFileChangedError` if the storage is a
        mapping of a file that changed since it was loaded (reading it could crash the process).
        """
        from .mapped import check_files_unchanged

        check_files_unchanged((self.storage,))
        if self.dtype == "F32":
            return np.array(self.storage, dtype=np.float32).reshape(self.n_rows, self.n_cols)
        if self.dtype == "F16":
            return np.asarray(self.storage).view(np.float16).reshape(self.n_rows, self.n_cols).astype(np.float32)
        if self.dtype == "BF16":
            bits = np.asarray(self.storage).view(np.uint16).reshape(self.n_rows, self.n_cols)
            return (bits.astype(np.uint32) << 16).view(np.float32)
        from glassbox import _C  # block types: the kernels' own dequantiser

        raw = np.asarray(self.storage).view(np.uint8).reshape(self.n_rows, -1)
        return _C.dequantize(raw, self.dtype)

    @property
    def size(self) -> int:
        """Number of elements of the TL tensor (as ``ndarray.size``)."""
        return int(self.n_rows) * int(self.n_cols)

    @classmethod
    def from_tl(cls, arr: np.ndarray, kind: str, n_heads: int = 0) -> "StoredMatrix":
        """An ``F32`` StoredMatrix holding a TL-layout float32 array in the file layout (a copy).

        The inverse of :meth:`to_tl` for ``dtype="F32"``; used when a float32 matrix must join
        matrices kept in their stored dtype (e.g. for virtual weight processing).
        """
        a = np.asarray(arr, dtype=np.float32)
        if kind == "heads_in":  # [h, D, d] -> [h*d, D]
            h, D, d = a.shape
            rows = a.transpose(0, 2, 1).reshape(h * d, D)
        elif kind == "heads_out":  # [h, d, D] -> [D, h*d]
            h, d, D = a.shape
            rows = a.transpose(2, 0, 1).reshape(D, h * d)
        elif kind == "transposed":
            rows = a.T
        elif kind == "table":
            rows = a
        else:
            raise ValueError(f"unknown StoredMatrix kind {kind!r}")
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        return cls(rows, "F32", rows.shape[0], rows.shape[1], kind, n_heads)

    def repeat_heads(self, reps: int) -> "StoredMatrix":
        """A ``heads_in`` matrix with each head's block of rows repeated ``reps`` times
        (TL's ``repeat_interleave`` of GQA K/V heads), still in the stored dtype (a copy)."""
        if self.kind != "heads_in":
            raise ValueError("repeat_heads needs a heads_in matrix")
        if reps == 1:
            return self
        raw = np.asarray(self.storage).view(np.uint8).reshape(self.n_heads, -1)
        rep = np.ascontiguousarray(np.repeat(raw, reps, axis=0)).reshape(-1)
        return StoredMatrix(rep, self.dtype, self.n_rows * reps, self.n_cols, self.kind, self.n_heads * reps,
                            self.name)

    def to_tl(self) -> np.ndarray:
        """A float32 copy in TransformerLens's layout (``self.shape``)."""
        m = self.dequantize()
        h = self.n_heads
        if self.kind == "heads_in":  # [h*d, D] -> [h, D, d]
            return np.ascontiguousarray(m.reshape(h, self.n_rows // h, self.n_cols).transpose(0, 2, 1))
        if self.kind == "heads_out":  # [D, h*d] -> [h, d, D]
            return np.ascontiguousarray(m.reshape(self.n_rows, h, self.n_cols // h).transpose(1, 2, 0))
        if self.kind == "transposed":
            return np.ascontiguousarray(m.T)
        return m
