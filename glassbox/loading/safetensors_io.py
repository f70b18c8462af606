"""A small, dependency-free reader/writer for the safetensors format.

File layout (all integers little-endian)::

    [8 bytes]  N = length of the JSON header (u64)
    [N bytes]  JSON: {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
                      "__metadata__": {str: str}}            (metadata is optional)
    [rest]     the data buffer; offsets are relative to its start

Tensors are returned as *views* of a copy-on-write memory mapping of the file
(:func:`glassbox.loading.mapped.map_file`): nothing is read until it is touched, and writing into
an array never modifies the file (the written pages become private to this process). The mapping
remembers the file's state, so a model can refuse to run once the file has changed
(:mod:`glassbox.loading.mapped`). bfloat16 has no NumPy dtype, so BF16 tensors are exposed as ``uint16``
bit patterns inside a :class:`SafeTensor` whose ``dtype`` says ``"BF16"``; :meth:`SafeTensor.numpy`
widens them exactly to float32 when a float array is wanted. That keeps bf16 weights bf16 for an
engine that can consume them directly.

Every malformed file raises :class:`SafetensorsError` (a ``ValueError``) whose message names the
file, the tensor and what is wrong, at open time and before any allocation beyond the header:
repeated JSON keys, unknown dtypes, negative dimensions, element counts that overflow int64,
byte sizes that disagree with ``data_offsets``, offsets out of order or past the end of the file,
and tensors that overlap, leave gaps or leave trailing bytes (the format requires the tensors to
tile the data buffer exactly). A missing file raises ``FileNotFoundError`` (an ``OSError``).
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np

__all__ = [
    "SafetensorsError",
    "SafeTensor",
    "SafetensorsFile",
    "DTYPES",
    "bf16_to_float32",
    "float32_to_bf16",
    "open_safetensors",
    "read_safetensors",
    "read_safetensors_sharded",
    "load_safetensors",
    "save_safetensors",
    "read_metadata",
]

PathLike = Union[str, "os.PathLike[str]"]

#: safetensors dtype string -> NumPy dtype used to view the bytes. BF16 is viewed as uint16.
DTYPES: Dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}

_NP_TO_ST: Dict[np.dtype, str] = {
    np.dtype("f8"): "F64",
    np.dtype("f4"): "F32",
    np.dtype("f2"): "F16",
    np.dtype("i8"): "I64",
    np.dtype("i4"): "I32",
    np.dtype("i2"): "I16",
    np.dtype("i1"): "I8",
    np.dtype("u8"): "U64",
    np.dtype("u4"): "U32",
    np.dtype("u2"): "U16",
    np.dtype("u1"): "U8",
    np.dtype("?"): "BOOL",
}

# Same limit as the reference implementation: a header above 100 MB is treated as corrupt.
_MAX_HEADER = 100_000_000


class SafetensorsError(ValueError):
    """A safetensors file (or shard index) is malformed; the message names the file."""


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bit patterns (``uint16``) to float32 exactly (a new array)."""
    bits = np.asarray(bits)
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def float32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 bit patterns (round-to-nearest-even), as ``uint16``."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((u >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)
    out = ((u + rounding) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    if nan.any():
        out[nan] = 0x7FC0
    return out


@dataclass(frozen=True)
class SafeTensor:
    """One tensor of a safetensors file.

    Attributes:
        data: the stored elements, a zero-copy view (``uint16`` bit patterns for BF16).
        dtype: the safetensors dtype string (``"F32"``, ``"F16"``, ``"BF16"``, ``"I64"``, ...).
        name: the tensor's name in the file.
        file: the file it came from (for error messages).
    """

    data: np.ndarray
    dtype: str
    name: str = ""
    file: str = ""

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def is_bf16(self) -> bool:
        return self.dtype == "BF16"

    def numpy(self, dtype: Optional[Union[str, np.dtype]] = None) -> np.ndarray:
        """Return the tensor as a NumPy array.

        With ``dtype=None`` the stored dtype is kept (BF16 is widened to float32, since NumPy has
        no bfloat16). Otherwise the array is converted (zero-copy when it already has that dtype).
        """
        arr = bf16_to_float32(self.data) if self.is_bf16 else self.data
        if dtype is None:
            return arr
        return np.asarray(arr, dtype=np.dtype(dtype))

    def __array__(self, dtype=None, copy=None):  # numpy protocol
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype)


def _fail(path: PathLike, what: str) -> SafetensorsError:
    return SafetensorsError(f"{os.fspath(path)}: {what}")


_INT64_MAX = 2**63 - 1


class _JSONObject(dict):
    """A parsed JSON object that remembers keys it saw more than once (JSON allows repeated
    keys, the last value silently winning; a header that says two things about one tensor is
    corrupt)."""

    repeated: List[str]


def _object_pairs(pairs: List[Tuple[str, Any]]) -> _JSONObject:
    out = _JSONObject()
    out.repeated = []
    for key, value in pairs:
        if key in out and key not in out.repeated:
            out.repeated.append(key)
        out[key] = value
    return out


def _check_repeated(path: str, header: Any) -> None:
    if not isinstance(header, _JSONObject):
        return
    if header.repeated:
        what = "tensor name" if header.repeated[0] != "__metadata__" else "key"
        raise _fail(path, f"corrupt safetensors header: {what} {header.repeated[0]!r} appears more "
                          f"than once (JSON keys must be unique)")
    for name, info in header.items():
        if isinstance(info, _JSONObject) and info.repeated:
            where = "__metadata__" if name == "__metadata__" else f"tensor {name!r}"
            raise _fail(path, f"corrupt safetensors header: {where} gives {info.repeated[0]!r} "
                              f"more than once (JSON keys must be unique)")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parse_header(path: str, raw: bytes, data_size: int) -> Tuple[Dict[str, dict], Dict[str, str]]:
    """Parse and validate the JSON header against the data buffer (``data_size`` bytes).

    Checked, as the safetensors format requires: valid UTF-8 JSON object, no repeated keys, each
    entry with a known dtype, a shape of non-negative ints and ``data_offsets`` ``[begin, end]``
    with ``begin <= end <= data_size``; ``prod(shape) * itemsize == end - begin`` computed in
    exact integers (no int64 wrap-around); and the tensors, sorted by offset, tile the data
    buffer exactly: no overlap, no gap, no trailing bytes. Every violation is a
    :class:`SafetensorsError` naming the file, the tensor and the problem. Nothing here
    allocates more than the header itself.
    """
    try:
        text = raw.decode("utf-8")
        header = json.loads(text, object_pairs_hook=_object_pairs)
    except UnicodeDecodeError as exc:
        raise _fail(path, f"corrupt safetensors header: not valid UTF-8 ({exc})") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, huge integer literals, nesting
        raise _fail(path, f"corrupt safetensors header: not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _fail(path, f"corrupt safetensors header: expected a JSON object, got {type(header).__name__}")
    _check_repeated(path, header)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise _fail(path, "corrupt safetensors header: __metadata__ is not an object")
    spans: List[Tuple[int, int, str]] = []
    for name, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise _fail(path, f"corrupt safetensors header: entry {name!r} needs dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPES:
            raise _fail(
                path,
                f"tensor {name!r} has dtype {dtype!r}, which glassbox does not support "
                f"(supported: {', '.join(DTYPES)})",
            )
        if not isinstance(shape, list) or not all(_is_int(s) for s in shape):
            raise _fail(path, f"corrupt safetensors header: tensor {name!r} has invalid shape "
                              f"{shape!r} (expected a list of integers)")
        if any(s < 0 for s in shape):
            raise _fail(path, f"corrupt safetensors header: tensor {name!r} has a negative "
                              f"dimension in shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_int(o) and o >= 0 for o in offsets)):
            raise _fail(path, f"corrupt safetensors header: tensor {name!r} has invalid data_offsets "
                              f"{offsets!r} (expected [begin, end], non-negative integers)")
        begin, end = offsets
        if begin > end:
            raise _fail(path, f"corrupt safetensors header: tensor {name!r} has data_offsets "
                              f"[{begin}, {end}] out of order (begin > end)")
        if end > data_size:
            raise _fail(
                path,
                f"tensor {name!r} data_offsets [{begin}, {end}] run past the end of the data "
                f"buffer ({data_size} bytes): the file is truncated or its header is corrupt",
            )
        n_el = 1
        for s in shape:  # exact integers: a product that overflows int64 is reported, not wrapped
            n_el *= s
        if n_el > _INT64_MAX:
            raise _fail(path, f"corrupt safetensors header: tensor {name!r} has shape {tuple(shape)} "
                              f"whose element count {n_el} overflows int64")
        n_bytes = n_el * DTYPES[dtype].itemsize
        if n_bytes != end - begin:
            raise _fail(
                path,
                f"tensor {name!r}: shape {tuple(shape)} x {dtype} needs {n_bytes} bytes but "
                f"data_offsets [{begin}, {end}] span {end - begin}",
            )
        spans.append((begin, end, name))
    spans.sort()
    pos, prev = 0, None
    for begin, end, name in spans:
        if begin < pos:
            raise _fail(path, f"corrupt safetensors header: tensor {name!r} data_offsets "
                              f"[{begin}, {end}] overlap tensor {prev[2]!r} [{prev[0]}, {prev[1]}]")
        if begin > pos:
            after = f"after tensor {prev[2]!r}" if prev else "at the start of the data buffer"
            raise _fail(path, f"corrupt safetensors header: bytes [{pos}, {begin}) {after} belong "
                              f"to no tensor (tensor {name!r} starts at {begin}); tensors must "
                              f"tile the data buffer without gaps")
        pos, prev = end, (begin, end, name)
    if pos != data_size:
        raise _fail(path, f"corrupt safetensors header: the data buffer holds {data_size} bytes "
                          f"but the tensors cover only the first {pos}: {data_size - pos} "
                          f"trailing bytes belong to no tensor")
    return header, {str(k): str(v) for k, v in metadata.items()}


class SafetensorsFile(Mapping[str, SafeTensor]):
    """An opened safetensors file: a read-only mapping ``name -> SafeTensor`` (lazy, zero-copy).

    The header is parsed and fully validated on construction; the data is memory-mapped
    copy-on-write, so arrays are writeable but the file is never modified.
    """

    def __init__(self, path: PathLike):
        from .mapped import map_file

        self.path = os.fspath(path)
        p = Path(self.path)
        if not p.is_file():
            raise FileNotFoundError(f"{self.path}: no such safetensors file")
        size = p.stat().st_size
        if size < 8:
            raise _fail(self.path, f"truncated safetensors file: {size} bytes, the 8-byte header length is missing")
        # the whole file, mapped copy-on-write (nothing is read until touched); the header is
        # parsed from the mapping itself, so it describes exactly the bytes the tensors view
        self._mm = map_file(self.path)
        size = self._mm.size
        (n,) = struct.unpack("<Q", self._mm[:8].tobytes())
        if n > _MAX_HEADER:
            raise _fail(self.path, f"corrupt safetensors header: header length {n} is implausibly large")
        if 8 + n > size:
            raise _fail(
                self.path,
                f"truncated safetensors file: header claims {n} bytes but only {size - 8} follow",
            )
        raw = self._mm[8:8 + n].tobytes()
        self._data_start = 8 + n
        self._data_size = size - self._data_start
        self._header, self.metadata = _parse_header(self.path, raw, self._data_size)

    # -- mapping protocol ---------------------------------------------------------------
    def __getitem__(self, name: str) -> SafeTensor:
        info = self._header.get(name)
        if info is None:
            raise KeyError(f"{self.path}: no tensor named {name!r}")
        dt = DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end == begin:
            arr = np.zeros(shape, dtype=dt)
        else:
            # a view of the mapped bytes (its .base chain leads to the MappedFile, which lets
            # the model check that the file is unchanged before each run)
            start = self._data_start + begin
            arr = self._mm[start:self._data_start + end].view(dt).reshape(shape)
        return SafeTensor(arr, info["dtype"], name, self.path)

    def __iter__(self) -> Iterator[str]:
        return iter(self._header)

    def __len__(self) -> int:
        return len(self._header)

    def dtype_of(self, name: str) -> str:
        return self._header[name]["dtype"]

    def shape_of(self, name: str) -> Tuple[int, ...]:
        return tuple(self._header[name]["shape"])

    def __repr__(self) -> str:
        return f"SafetensorsFile({self.path!r}, {len(self)} tensors)"


def open_safetensors(path: PathLike) -> SafetensorsFile:
    """Open (and validate) one safetensors file. See :class:`SafetensorsFile`."""
    return SafetensorsFile(path)


def read_metadata(path: PathLike) -> Dict[str, str]:
    """The ``__metadata__`` dict of a safetensors file (empty if absent)."""
    return dict(SafetensorsFile(path).metadata)


def read_safetensors(path: PathLike) -> Dict[str, SafeTensor]:
    """Read every tensor of one file as :class:`SafeTensor` (zero-copy views, dtype preserved)."""
    f = SafetensorsFile(path)
    return {name: f[name] for name in f}


def read_safetensors_sharded(index_path: PathLike) -> Dict[str, SafeTensor]:
    """Read a sharded checkpoint described by ``model.safetensors.index.json``.

    The index's ``weight_map`` maps each tensor name to the shard file (relative to the index's
    folder) holding it. Raises ``FileNotFoundError`` for a missing shard and
    :class:`SafetensorsError` for a malformed index or a tensor missing from its shard.
    """
    index_path = os.fspath(index_path)
    if not os.path.isfile(index_path):
        raise FileNotFoundError(f"{index_path}: no such safetensors index file")
    try:
        with open(index_path, "r", encoding="utf-8") as fh:
            index = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(index_path, f"corrupt safetensors index: not valid JSON ({exc})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise _fail(index_path, "corrupt safetensors index: missing or invalid 'weight_map'")
    folder = os.path.dirname(index_path)
    shards: Dict[str, SafetensorsFile] = {}
    out: Dict[str, SafeTensor] = {}
    for name, shard in weight_map.items():
        if shard not in shards:
            shard_path = os.path.join(folder, shard)
            if not os.path.isfile(shard_path):
                raise FileNotFoundError(
                    f"{index_path}: shard {shard!r} (holding {name!r}) not found at {shard_path}")
            shards[shard] = SafetensorsFile(shard_path)
        f = shards[shard]
        if name not in f:
            raise _fail(index_path, f"tensor {name!r} is listed in shard {shard!r} but {f.path} does not contain it")
        out[name] = f[name]
    return out


def load_safetensors(path: PathLike, dtype: Optional[Union[str, np.dtype]] = None) -> Dict[str, np.ndarray]:
    """Read a file (or an ``*.index.json`` shard index) as plain NumPy arrays.

    F32/F16/integer tensors are zero-copy views; BF16 is widened to float32. With ``dtype`` set,
    floating-point tensors are converted to it (integer tensors are left alone).
    """
    path = os.fspath(path)
    tensors = read_safetensors_sharded(path) if path.endswith(".json") else read_safetensors(path)
    out = {}
    for name, t in tensors.items():
        arr = t.numpy()
        if dtype is not None and np.issubdtype(arr.dtype, np.floating):
            arr = np.asarray(arr, dtype=np.dtype(dtype))
        out[name] = arr
    return out


def save_safetensors(
    path: PathLike,
    tensors: Mapping[str, Union[np.ndarray, SafeTensor]],
    metadata: Optional[Mapping[str, str]] = None,
) -> None:
    """Write tensors to ``path`` in the safetensors format (for tests and tools).

    Values are NumPy arrays (any dtype in :data:`DTYPES` except bf16) or :class:`SafeTensor`
    (which is how a BF16 tensor is written: ``SafeTensor(uint16_bits, "BF16")``).
    """
    header: Dict[str, dict] = {}
    blobs: List[bytes] = []
    offset = 0
    for name in sorted(tensors):
        value = tensors[name]
        if isinstance(value, SafeTensor):
            st_dtype = value.dtype
            arr = np.ascontiguousarray(value.data, dtype=DTYPES[st_dtype])
        else:
            arr = np.asarray(value)
            st_dtype = _NP_TO_ST.get(arr.dtype.newbyteorder("=") if arr.dtype.byteorder == ">" else arr.dtype)
            if st_dtype is None:
                raise ValueError(f"save_safetensors: tensor {name!r} has unsupported dtype {arr.dtype}")
            arr = np.ascontiguousarray(arr, dtype=DTYPES[st_dtype])
        blob = arr.tobytes()
        header[name] = {"dtype": st_dtype, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # pad so the data buffer starts 8-byte aligned
    tmp = os.fspath(path) + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for blob in blobs:
            fh.write(blob)
    os.replace(tmp, os.fspath(path))
