"""Fuzz harness: the GGUF reader (``gguf_header.read_gguf``, ``gguf_io.open_gguf`` /
``gguf_hf_config`` / ``load_gguf``) and the model built from a GGUF file.

Each input is written as a ``.gguf`` file and opened; its metadata is converted to an HF config;
it is loaded both with matrices kept as stored and dequantised (``keep_stored=False``, which
runs every dequantiser over the mapped bytes); when that succeeds and the model is small, a
``HookedTransformer`` is built from it and run on 3 tokens (the C engine over the mapped rows).

Allowed: success, ``ValueError`` naming the file. Run:
``python tests/fuzz/fuzz_gguf.py --atheris -max_total_time=360 tests/fuzz/corpus/gguf``
"""
from __future__ import annotations

import numpy as np

from _common import instrumented, main, write_input

with instrumented():
    from glassbox import HookedTransformer
    from glassbox.loading import gguf_header, gguf_io

NAME = "gguf"
_MAX_PARAMS = 2_000_000  # do not build/run models bigger than this (the fuzzer must stay fast)


def one_input(data: bytes) -> None:
    path = write_input("model.gguf", data)
    try:
        gguf_header.read_gguf(path)
    except ValueError:
        pass
    f = gguf_io.open_gguf(path)
    f.metadata()
    for name in list(f.tensors)[:64]:
        f.dims(name), f.tensor_type(name)
    gguf_io.gguf_hf_config(f)
    loaded = gguf_io.load_gguf(path, tokenizer=False, keep_stored=False)
    for v in loaded.state_dict.values():
        float(np.asarray(v, dtype=np.float64).sum())
    cfg = loaded.config
    n_params = cfg["d_vocab"] * cfg["d_model"] * 2 + cfg["n_layers"] * (
        4 * cfg["d_model"] ** 2 + 3 * cfg["d_model"] * cfg["d_mlp"])
    if n_params > _MAX_PARAMS or cfg["n_ctx"] > 4096:
        return
    model = HookedTransformer.from_pretrained(path)
    V = model.cfg.d_vocab
    logits = model(np.array([[0, (V - 1) // 2, V - 1]]))
    assert logits.shape == (1, 3, model.cfg.d_vocab_out)


if __name__ == "__main__":
    main(NAME, one_input)
