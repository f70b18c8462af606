"""A lean reader of GGUF headers: metadata and tensor directory, tensors memory-mapped.

Why our own: ``gguf.GGUFReader`` builds a NumPy view per metadata item, which costs ~8 s for the
~100k strings of a modern tokenizer vocabulary (SmolLM2); this parses the same header with
``struct`` in well under a second. Tensor type names and block sizes still come from the
``gguf`` package's tables (facts about the format, not parsing).

Layout (little-endian, GGUF v2/v3): ``b"GGUF"``, u32 version, u64 tensor count, u64 metadata
count; metadata entries (string key, u32 value type, value); tensor infos (string name, u32
n_dims, u64 ne[n_dims] innermost first, u32 ggml type, u64 offset into the data section); the
data section starts at the next multiple of ``general.alignment`` (default 32).
Every malformed or truncated header is a ``ValueError`` naming the file.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import numpy as np

# GGUF metadata value types: id -> struct format (scalars); 8 string, 9 array.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFTensorInfo:
    """One tensor of the directory; ``data`` is a uint8 view of its bytes in the mapped file."""

    name: str
    ne: Tuple[int, ...]  # dimensions, innermost first (as the file stores them)
    type_id: int
    type_name: str
    data_offset: int  # absolute, in bytes
    n_bytes: int
    n_elements: int
    data: np.ndarray


class _Cursor:
    def __init__(self, buf: memoryview, path: str):
        self.buf, self.pos, self.path = buf, 0, path

    def fail(self, what: str) -> ValueError:
        return ValueError(f"{self.path}: corrupt or truncated GGUF file ({what} at byte {self.pos})")

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise self.fail("unexpected end of header")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > len(self.buf) - self.pos:
            raise self.fail(f"string length {n} past the end of the file")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, n = self.unpack("<I"), self.unpack("<Q")
            if n > len(self.buf) - self.pos:  # every element takes at least one byte
                raise self.fail(f"array of {n} items past the end of the file")
            if etype in _SCALARS and etype != 7:
                fmt = _SCALARS[etype]
                size = struct.calcsize(fmt)
                if self.pos + n * size > len(self.buf):
                    raise self.fail("array past the end of the file")
                arr = np.frombuffer(self.buf, dtype=np.dtype(fmt), count=n, offset=self.pos)
                self.pos += n * size
                return arr.tolist()
            return [self.value(etype) for _ in range(n)]
        raise self.fail(f"unknown metadata value type {vtype}")


def _type_tables() -> Tuple[Dict[int, str], Dict[int, Tuple[int, int]]]:
    import gguf

    names = {int(t.value): t.name for t in gguf.GGMLQuantizationType}
    sizes = {int(t.value): tuple(gguf.GGML_QUANT_SIZES[t]) for t in gguf.GGMLQuantizationType
             if t in gguf.GGML_QUANT_SIZES}
    return names, sizes


def read_gguf(path: str) -> Tuple[Dict[str, Any], List[GGUFTensorInfo], int]:
    """``(metadata, tensors, data_start)`` of the GGUF file at ``path`` (``data_start``: byte
    offset of the tensor data section, i.e. the end of the header).

    The file is mapped copy-on-write: writes to tensor views never reach the file.
    """
    size = os.path.getsize(path)
    if size < 24:
        raise ValueError(f"{path}: corrupt or truncated GGUF file ({size} bytes)")
    # plain ndarray views of the mapping (slices of an np.memmap would stay np.memmap,
    # and copies made from them by fancy indexing would not own their data)
    mapped = np.memmap(path, dtype=np.uint8, mode="c").view(np.ndarray)
    cur = _Cursor(memoryview(mapped), path)
    if bytes(cur.buf[:4]) != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file (magic {bytes(cur.buf[:4])!r}, expected b'GGUF')")
    cur.pos = 4
    version = cur.unpack("<I")
    if version not in (2, 3):
        if version & 0x00FFFFFF == 0 and version >> 24 in (2, 3):
            raise ValueError(f"{path}: big-endian GGUF files are not supported")
        raise ValueError(f"{path}: unsupported GGUF version {version} (expected 2 or 3)")
    n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
    if n_tensors > size or n_kv > size:
        raise cur.fail(f"implausible counts ({n_tensors} tensors, {n_kv} metadata entries)")
    metadata: Dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.unpack("<I"))
    names, sizes = _type_tables()
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("<I")
        if n_dims > 8:
            raise cur.fail(f"tensor {name!r} has {n_dims} dimensions")
        ne = tuple(cur.unpack("<Q") for _ in range(n_dims))
        infos.append((name, ne, cur.unpack("<I"), cur.unpack("<Q")))
    align = metadata.get("general.alignment", 32)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise cur.fail(f"general.alignment {align!r} is not a power of two")
    data_start = (cur.pos + align - 1) // align * align
    tensors = []
    for name, ne, type_id, offset in infos:
        type_name = names.get(type_id, f"unknown type {type_id}")
        n_el = int(np.prod(ne, dtype=np.int64)) if ne else 1
        block, nbytes = sizes.get(type_id, (1, 0))
        n_bytes = n_el // block * nbytes if block else 0
        start = data_start + offset
        if start > size or start + n_bytes > size:
            data = mapped[0:0]
        else:
            data = mapped[start:start + n_bytes]
        tensors.append(GGUFTensorInfo(name, ne, type_id, type_name, start, n_bytes, n_el, data))
    return metadata, tensors, data_start
