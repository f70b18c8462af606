"""Malformed tokenizer files give ValueError naming the file (fuzzing findings, docs/fuzzing.md).

The ``tokenizers`` library raises plain ``Exception`` for a bad ``tokenizer.json`` and for a
failing encode; glassbox's loaders turn it into ``ValueError`` with the file and the reason.
"""
from __future__ import annotations

import json

import pytest

pytest.importorskip("tokenizers")

from glassbox.loading.gguf_tokenizer import build_tokenizer  # noqa: E402
from glassbox.tokenization import Tokenizer  # noqa: E402


def _wordpiece(vocab):
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
            "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None,
            "decoder": None,
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 100, "vocab": vocab}}


def test_bad_tokenizer_json_is_a_value_error(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"version":"1.0","model":{"type":"BPE","vocab":{"a":0},"merges":["a b"]}}')
    with pytest.raises(ValueError, match=r"tokenizer\.json: not a valid tokenizer\.json \(.*Token `b` out of vocabulary"):
        Tokenizer.from_file(str(path))
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(ValueError, match=r"tokenizer\.json: not a valid tokenizer\.json"):
        Tokenizer.from_file(str(path))
    with pytest.raises(FileNotFoundError, match="no such tokenizer.json"):
        Tokenizer.from_file(str(tmp_path / "missing.json"))


def test_encode_failure_is_a_value_error(tmp_path):
    """A WordPiece vocabulary without its unknown token loads, but cannot encode an unknown word."""
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(_wordpiece({"hello": 0, "world": 1})))
    tok = Tokenizer.from_file(str(path))
    assert tok.encode("hello world", add_special_tokens=False) == [0, 1]
    with pytest.raises(ValueError, match=r"tokenizer\.json: the tokenizer cannot encode 'hello there'.*Missing \[UNK\]"):
        tok.encode("hello there")
    assert tok.encode("hello world", add_special_tokens=False) == [0, 1]  # still usable


class _FakeGGUF(dict):
    path = "/models/fake.gguf"


@pytest.mark.parametrize("fields,match", [
    ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b"],
      "tokenizer.ggml.merges": ["a c"]}, r"Token `c` out of vocabulary"),
    ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": 7}, r"TypeError: 'int' object is not iterable"),
    ({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a", "b"],
      "tokenizer.ggml.scores": 1.5}, r"TypeError"),
    ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b"],
      "tokenizer.ggml.merges": [3]}, r"AttributeError: 'int' object has no attribute 'split'"),
])
def test_malformed_gguf_tokenizer_metadata_is_a_value_error(fields, match):
    with pytest.raises(ValueError, match=r"/models/fake\.gguf: malformed GGUF tokenizer metadata \(.*" + match):
        build_tokenizer(_FakeGGUF(fields))


def test_unsupported_gguf_tokenizer_model_message_kept():
    with pytest.raises(ValueError, match=r"tokenizer\.ggml\.model='bert' is not supported; supported: gpt2, llama"):
        build_tokenizer(_FakeGGUF({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]}))
