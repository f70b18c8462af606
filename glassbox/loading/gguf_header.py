"""A lean reader of GGUF headers: metadata and tensor directory, tensors memory-mapped.

Why our own: ``gguf.GGUFReader`` builds a NumPy view per metadata item, which costs ~8 s for the
~100k strings of a modern tokenizer vocabulary (SmolLM2); this parses the same header with
``struct`` in well under a second. Tensor type names and block sizes still come from the
``gguf`` package's tables (facts about the format, not parsing).

Layout (little-endian, GGUF v2/v3): ``b"GGUF"``, u32 version, u64 tensor count, u64 metadata
count; metadata entries (string key, u32 value type, value); tensor infos (string name, u32
n_dims, u64 ne[n_dims] innermost first, u32 ggml type, u64 offset into the data section); the
data section starts at the next multiple of ``general.alignment`` (default 32).
Every malformed or truncated header is a ``ValueError`` naming the file (see :func:`read_gguf`
for what is checked).
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


_INT64_MAX = 2**63 - 1
_MAX_DIMS = 4  # GGML_MAX_DIMS: llama.cpp refuses tensors with more dimensions
_MAX_NESTING = 8  # arrays of arrays (llama.cpp reads none; the gguf package a few levels)
# the fewest bytes one array element of each value type can take (a string: its u64 length;
# an array: u32 type + u64 count)
_MIN_ITEM = {8: 8, 9: 12}


class _Cursor:
    def __init__(self, buf: memoryview, path: str):
        self.buf, self.pos, self.path = buf, 0, path

    def fail(self, what: str) -> ValueError:
        return ValueError(f"{self.path}: corrupt or truncated GGUF file ({what} at byte {self.pos})")

    def left(self) -> int:
        return len(self.buf) - self.pos

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise self.fail("unexpected end of header")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self, what: str = "string") -> str:
        n = self.unpack("<Q")
        if n > self.left():
            raise self.fail(f"{what} length {n} runs past the end of the file ({self.left()} bytes left)")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, key: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string(f"metadata {key!r}: string")
        if vtype == _ARRAY:
            if depth >= _MAX_NESTING:
                raise self.fail(f"metadata {key!r}: arrays nested more than {_MAX_NESTING} deep")
            etype, n = self.unpack("<I"), self.unpack("<Q")
            if etype in _SCALARS:
                size = struct.calcsize(_SCALARS[etype])
            elif etype in _MIN_ITEM:
                size = _MIN_ITEM[etype]
            else:
                raise self.fail(f"metadata {key!r}: array of unknown value type {etype}")
            # checked before anything is allocated: a count the file cannot hold is corrupt
            if n > self.left() // size:
                raise self.fail(f"metadata {key!r}: array of {n} items of type {etype} needs at "
                                f"least {n * size} bytes, only {self.left()} are left in the file")
            if etype in _SCALARS and etype != 7:
                arr = np.frombuffer(self.buf, dtype=np.dtype(_SCALARS[etype]), count=n, offset=self.pos)
                self.pos += n * size
                return arr.tolist()
            return [self.value(etype, key, depth + 1) for _ in range(n)]
        raise self.fail(f"metadata {key!r} has unknown value type {vtype}")


def _type_tables() -> Tuple[Dict[int, str], Dict[int, Tuple[int, int]]]:
    import gguf

    names = {int(t.value): t.name for t in gguf.GGMLQuantizationType}
    sizes = {int(t.value): tuple(gguf.GGML_QUANT_SIZES[t]) for t in gguf.GGMLQuantizationType
             if t in gguf.GGML_QUANT_SIZES}
    return names, sizes


def read_gguf(path: str) -> Tuple[Dict[str, Any], List[GGUFTensorInfo], int]:
    """``(metadata, tensors, data_start)`` of the GGUF file at ``path`` (``data_start``: byte
    offset of the tensor data section, i.e. the end of the header).

    The file is mapped copy-on-write (:func:`glassbox.loading.mapped.map_file`): writes to
    tensor views never reach the file, and the mapping remembers the file's state so that a
    model can refuse to run once the file has changed.

    Validated before anything is allocated, as llama.cpp's reader requires (every failure is a
    ``ValueError`` naming the file, the key or tensor, and the problem): counts, string and
    array lengths that the file is too small to hold; repeated metadata keys and tensor names;
    more than 4 dimensions, dimensions or element counts beyond int64; unknown tensor types;
    rows (``ne[0]``) that are not a whole number of quantisation blocks; ``general.alignment``
    not a power of two; tensor offsets not aligned to it, running past the end of the file or
    overlapping another tensor.
    """
    from .mapped import map_file

    size = os.path.getsize(path)
    if size < 24:
        raise ValueError(f"{path}: corrupt or truncated GGUF file ({size} bytes)")
    mapped = map_file(path)
    size = mapped.size
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
    # a metadata entry takes >= 13 bytes (key length, type, one byte of value), a tensor info
    # >= 24 (name length, n_dims, type, offset)
    if n_kv > cur.left() // 13 or n_tensors > cur.left() // 24 or 13 * n_kv + 24 * n_tensors > cur.left():
        raise cur.fail(f"implausible counts ({n_tensors} tensors, {n_kv} metadata entries) for a "
                       f"file of {size} bytes")
    metadata: Dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string("metadata key")
        if key in metadata:
            raise cur.fail(f"metadata key {key!r} appears twice")
        metadata[key] = cur.value(cur.unpack("<I"), key)
    names, sizes = _type_tables()
    infos = []
    seen = set()
    for _ in range(n_tensors):
        name = cur.string("tensor name")
        if name in seen:
            raise cur.fail(f"tensor name {name!r} appears twice")
        seen.add(name)
        n_dims = cur.unpack("<I")
        if n_dims > _MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has {n_dims} dimensions (at most {_MAX_DIMS})")
        ne = tuple(cur.unpack("<Q") for _ in range(n_dims))
        infos.append((name, ne, cur.unpack("<I"), cur.unpack("<Q")))
    align = metadata.get("general.alignment", 32)
    if not isinstance(align, int) or isinstance(align, bool) or align <= 0 or align & (align - 1):
        raise cur.fail(f"general.alignment {align!r} is not a power of two")
    data_start = (cur.pos + align - 1) // align * align
    tensors = []
    spans = []
    for name, ne, type_id, offset in infos:
        where = f"{path}: corrupt GGUF file: tensor {name!r}"
        if type_id not in names or type_id not in sizes:
            raise ValueError(f"{where} has unknown ggml type {type_id}")
        type_name = names[type_id]
        n_el = 1
        for x in ne:
            n_el *= x
        if any(x > _INT64_MAX for x in ne) or n_el > _INT64_MAX:
            raise ValueError(f"{where} has dimensions {list(ne)} whose element count overflows int64")
        block, type_size = sizes[type_id]
        if ne and ne[0] % block:
            raise ValueError(f"{where} has type {type_name}, whose rows are blocks of {block} "
                             f"elements, but its rows (ne[0]) have {ne[0]} elements")
        n_bytes = n_el // block * type_size
        if offset % align:
            raise ValueError(f"{where} has data offset {offset}, not a multiple of "
                             f"general.alignment={align}")
        start = data_start + offset
        if start + n_bytes > size:
            raise ValueError(f"{where} ({type_name}, dimensions {list(ne)}: {n_bytes} bytes at "
                             f"byte {start}) runs past the end of the file ({size} bytes): the "
                             f"file is truncated or its header is corrupt")
        spans.append((start, start + n_bytes, name))
        data = mapped[start:start + n_bytes]
        tensors.append(GGUFTensorInfo(name, ne, type_id, type_name, start, n_bytes, n_el, data))
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ValueError(f"{path}: corrupt GGUF file: tensor {n1!r} (bytes [{b1}, {e1})) "
                             f"overlaps tensor {n0!r} (bytes [{b0}, {e0}))")
    return metadata, tensors, data_start
