"""Memory-mapped weight files, and the check that they have not changed since they were loaded.

Weights kept in their stored dtype (bf16/f16 safetensors, GGUF blocks) are read by the engine
straight from a copy-on-write memory mapping of the checkpoint file. That is what lets a 7B bf16
model fit in its file size, but it ties the model to the file: if the file is **truncated**
after loading, touching a page past the new end kills the process with ``SIGBUS``; if it is
**overwritten in place** (``save_pretrained`` / ``torch.save`` / ``cp`` onto the same path all
truncate and rewrite the same inode), pages not yet read come from the new contents and the
logits silently change.

Every mapping made by the readers (:mod:`.safetensors_io`, :mod:`.gguf_header`) is a
:class:`MappedFile`, which records the mapped file's identity and state at load time
(device, inode, size, ``mtime_ns``, from ``fstat`` of the open file) and keeps the file open. :meth:`MappedFile.check` compares them again (one ``fstat``: a few microseconds) and
raises :class:`WeightFileChangedError` naming the file and what changed. Arrays remember their
mapping through NumPy's ``.base`` chain, so :func:`mapped_files` finds the files behind any set
of arrays (or :class:`~glassbox.loading.stored.StoredMatrix` objects) without a registry.

The check is made on the *open file*, not on the path: replacing the path with a new file
(``os.replace``, an atomic save, deleting the file) does not affect a loaded model -- the
operating system keeps the old inode alive while it is mapped, so the model keeps computing
with exactly the weights it loaded, and no error is raised.

``HookedTransformer`` calls :func:`loaded_files_unchanged` before every run. To make a model
independent of its files, load it with ``copy_weights=True`` (:func:`copy_to_memory`): the
mapped weights are copied into RAM at load and the mappings released.

What remains: a file truncated *during* a run (between the check and the engine reading a page)
still raises ``SIGBUS``; the window is one forward pass. A rewrite that keeps the size and puts
the old modification time back exactly (``os.utime``), or one made within the file system's
timestamp granularity of the previous write, is not seen. ``copy_weights=True`` closes all of
these. (The inode change time is deliberately not compared: renaming, hard-linking or deleting
the file changes it without touching the bytes the model reads.)
"""
from __future__ import annotations

import mmap
import os
import weakref
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np

__all__ = [
    "WeightFileChangedError",
    "MappedFile",
    "map_file",
    "mapped_file_of",
    "mapped_files",
    "check_files_unchanged",
    "loaded_files_unchanged",
    "copy_to_memory",
]


class WeightFileChangedError(RuntimeError):
    """A file that loaded weights are memory-mapped from changed after loading.

    Running the model would read the new bytes (wrong results) or crash the process (a file
    truncated below the mapping raises SIGBUS), so the run is refused. Reload the model, or load
    it with ``copy_weights=True`` to keep its weights in RAM.
    """


_Fingerprint = Tuple[int, int, int, int]  # dev, ino, size, mtime_ns


def _fingerprint(st: os.stat_result) -> _Fingerprint:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class MappedFile(mmap.mmap):
    """A copy-on-write mapping of a whole file that can tell whether the file changed since.

    Create one with :func:`map_file`. Attributes: ``path`` (as given), ``fingerprint``
    ``(dev, inode, size, mtime_ns)`` at mapping time. The file stays open (one file
    descriptor) for as long as the mapping lives, so :meth:`check` inspects the mapped inode
    itself, whatever happens to the path.
    """

    path: str
    fingerprint: _Fingerprint
    _fd: int

    def changes(self) -> Optional[str]:
        """None if the file is as it was when mapped, else a description of what changed."""
        try:
            now = _fingerprint(os.fstat(self._fd))
        except OSError as exc:  # pragma: no cover - the descriptor is ours and stays open
            return f"it can no longer be inspected ({exc})"
        if now == self.fingerprint:
            return None
        _, _, size0, mtime0 = self.fingerprint
        _, _, size1, mtime1 = now
        parts = []
        if size1 != size0:
            parts.append(f"its size went from {size0} to {size1} bytes"
                         + (" (truncated: reading the mapped weights would crash the process "
                            "with SIGBUS)" if size1 < size0 else ""))
        if mtime1 != mtime0:
            parts.append("it was modified (mtime changed)")
        return "; ".join(parts) or "its status changed"

    def check(self) -> None:
        """Raise :class:`WeightFileChangedError` if the file changed since it was mapped."""
        what = self.changes()
        if what is not None:
            raise WeightFileChangedError(
                f"{self.path}: the weights file changed after the model was loaded from it "
                f"({what}). The model reads these weights from the file (memory-mapped), so it "
                f"would compute with the new bytes or crash. Reload the model, or load it with "
                f"copy_weights=True to keep its weights in RAM, independent of the file.")

    def __repr__(self) -> str:
        return f"MappedFile({self.path!r}, {len(self)} bytes)"


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:  # pragma: no cover
        pass


def map_file(path: str) -> np.ndarray:
    """The whole file at ``path`` as a ``uint8`` array over a copy-on-write :class:`MappedFile`.

    Writes into the array (or views of it) stay private to this process and never reach the
    file. The file must not be empty (an empty file cannot be mapped: ``ValueError``).
    """
    path = os.fspath(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if st.st_size == 0:
            raise ValueError(f"{path}: the file is empty")
        mf = MappedFile(fd, st.st_size, access=mmap.ACCESS_COPY)
    except BaseException:
        os.close(fd)
        raise
    mf.path = path
    mf.fingerprint = _fingerprint(st)
    mf._fd = fd
    weakref.finalize(mf, _close_fd, fd)
    return np.frombuffer(mf, dtype=np.uint8)


def mapped_file_of(obj: Any) -> Optional[MappedFile]:
    """The :class:`MappedFile` an array (or StoredMatrix, or SafeTensor) views, or None."""
    b = getattr(obj, "storage", None)  # StoredMatrix
    if b is None:
        b = getattr(obj, "data", obj) if not isinstance(obj, np.ndarray) else obj  # SafeTensor
    for _ in range(64):  # base chains are short; bounded against pathological objects
        if b is None:
            return None
        if isinstance(b, MappedFile):
            return b
        if isinstance(b, memoryview):
            b = b.obj
        elif isinstance(b, np.ndarray):
            b = b.base
        else:
            return None
    return None


def mapped_files(objs: Iterable[Any]) -> List[MappedFile]:
    """The distinct :class:`MappedFile` objects behind ``objs`` (arrays / StoredMatrix), in
    first-seen order."""
    seen: Dict[int, MappedFile] = {}
    for o in objs:
        mf = mapped_file_of(o)
        if mf is not None and id(mf) not in seen:
            seen[id(mf)] = mf
    return list(seen.values())


def check_files_unchanged(objs: Iterable[Any]) -> None:
    """Raise :class:`WeightFileChangedError` if a file behind ``objs`` changed since loading."""
    for mf in mapped_files(objs):
        mf.check()


def loaded_files_unchanged(model: Any) -> None:
    """Before a run of ``model`` (a ``HookedTransformer``): raise
    :class:`WeightFileChangedError` if a file its weights are memory-mapped from has changed
    since it was loaded. The model is left exactly as it was; the error says how to recover
    (reload, or ``copy_weights=True``).

    Cost: one ``fstat`` per mapped file. The files behind the weights are found once per engine
    (the engine is rebuilt whenever weights are replaced, and its identity keys the cache: the
    run path builds the engine and calls this right after, so a key is never reused stale).
    """
    engine = getattr(model, "_engine", None)
    cached = model.__dict__.get("_mapped_files")
    if cached is None or engine is None or cached[0] != id(engine):
        files = mapped_files(model._state_dict_np().values())
        model.__dict__["_mapped_files"] = cached = (id(engine) if engine is not None else None, files)
    for mf in cached[1]:
        mf.check()


def copy_to_memory(state_dict: Dict[str, Any]) -> Dict[str, Any]:
    """``state_dict`` with every memory-mapped array / StoredMatrix storage replaced by a copy in
    RAM (what ``from_pretrained(..., copy_weights=True)`` does), so that later changes to the
    checkpoint files cannot affect the model. Storage shared between entries (tied
    embeddings) stays shared. Entries not backed by a mapping are returned as they are.
    """
    from .stored import StoredMatrix

    copies: Dict[Tuple[int, int, str], np.ndarray] = {}

    def ram(arr: np.ndarray) -> np.ndarray:
        key = (arr.__array_interface__["data"][0], arr.nbytes, arr.dtype.str)
        out = copies.get(key)
        if out is None or out.shape != arr.shape:
            out = np.array(arr, order="C", copy=True)
            copies[key] = out
        return out

    result: Dict[str, Any] = {}
    for name, value in state_dict.items():
        if mapped_file_of(value) is None:
            result[name] = value
        elif isinstance(value, StoredMatrix):
            result[name] = StoredMatrix(ram(value.storage), value.dtype, value.n_rows, value.n_cols,
                                        value.kind, value.n_heads, value.name)
        else:
            result[name] = ram(np.asarray(value))
    return result
