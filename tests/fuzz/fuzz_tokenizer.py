"""Fuzz harness: the tokenizer loaders (``glassbox.tokenization.Tokenizer.from_file`` for a
``tokenizer.json``; ``gguf_tokenizer.build_tokenizer`` / ``load_gguf_tokenizer`` for a GGUF).

An input starting with ``b"GGUF"`` is a GGUF file whose tokenizer metadata is turned into a
tokenizer; any other input is a ``tokenizer.json``. Each tokenizer that loads encodes and
decodes a fixed text (with BOS, batch padding on both sides).

Allowed: success, ``ValueError`` naming the file. Run:
``python tests/fuzz/fuzz_tokenizer.py --atheris -max_total_time=360 tests/fuzz/corpus/tokenizer``
"""
from __future__ import annotations

from _common import instrumented, main, write_input

with instrumented():
    from glassbox.loading import gguf_tokenizer
    from glassbox.tokenization import Tokenizer

NAME = "tokenizer"
_TEXT = ["Hello world, the  wor\u00efld <|endoftext|> \u2581x 123", "a"]


def _exercise(tok: Tokenizer) -> None:
    ids = tok.encode(_TEXT[0])
    tok.decode(ids)
    tok.encode_batch(_TEXT, prepend_bos=True, padding_side="left")
    tok.encode_batch(_TEXT, prepend_bos=False, max_length=3)
    tok(_TEXT, return_tensors="np")
    tok.batch_decode([ids[:2], ids[-2:]])
    repr(tok)


def one_input(data: bytes) -> None:
    if data.startswith(b"GGUF"):
        path = write_input("tok.gguf", data)
        tok = gguf_tokenizer.load_gguf_tokenizer(path)
    else:
        path = write_input("tokenizer.json", data)
        tok = Tokenizer.from_file(path)
    _exercise(tok)


if __name__ == "__main__":
    main(NAME, one_input)
