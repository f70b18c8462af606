"""Fuzz harness: the safetensors reader (``glassbox.loading.safetensors_io``).

Each input is used twice: as a whole ``.safetensors`` file, and as the JSON header of a file
whose 8-byte length prefix is made right and whose data buffer is 256 bytes (so mutations of
the JSON reach the header validation without first breaking the length). Every tensor read is
touched (its bytes summed, BF16 widened) and the file is also read through ``load_safetensors``
and as a one-shard ``model.safetensors.index.json``.

Allowed: success, ``ValueError`` (``SafetensorsError`` names the file). Run:
``python tests/fuzz/fuzz_safetensors.py --atheris -max_total_time=360 tests/fuzz/corpus/safetensors``
"""
from __future__ import annotations

import json
import struct

import numpy as np

from _common import instrumented, main, write_input

with instrumented():
    from glassbox.loading import safetensors_io as st

NAME = "safetensors"


def _read_all(path: str) -> None:
    f = st.open_safetensors(path)
    for name in f:
        t = f[name]
        assert t.shape == f.shape_of(name)
        a = t.numpy()
        if a.size:
            # touch every byte of the mapping (a bad offset would SIGBUS / SIGSEGV here)
            np.asarray(t.data).view(np.uint8).sum() if t.data.dtype != np.bool_ else t.data.any()
            float(np.asarray(a, dtype=np.float64).sum())
    st.read_metadata(path)
    st.load_safetensors(path, dtype="float32")


def one_input(data: bytes) -> None:
    path = write_input("model.safetensors", data)
    try:
        _read_all(path)
    except ValueError:
        pass
    # the same bytes as the JSON header of a well-framed file
    hdr = data[:200_000]
    framed = struct.pack("<Q", len(hdr)) + hdr + bytes(range(256))
    path = write_input("framed.safetensors", framed)
    try:
        _read_all(path)
    except ValueError:
        pass
    # ... and through a one-shard index
    index = write_input("model.safetensors.index.json",
                        json.dumps({"weight_map": {"a": "framed.safetensors",
                                                   "b": "framed.safetensors"}}).encode())
    try:
        st.read_safetensors_sharded(index)
    except ValueError:
        pass


if __name__ == "__main__":
    main(NAME, one_input)
