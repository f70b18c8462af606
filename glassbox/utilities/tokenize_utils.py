"""Dataset tokenisation helpers with TransformerLens's names
(``transformer_lens.utilities.tokenize_utils`` / ``hf_utils``)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

__all__ = ["tokenize_and_concatenate", "get_tokenizer_with_bos", "keep_single_column"]


def keep_single_column(dataset: Any, col_name: str) -> Any:
    """A Hugging Face ``datasets`` dataset with every column except ``col_name`` removed."""
    for key in list(dataset.features):
        if key != col_name:
            dataset = dataset.remove_columns(key)
    return dataset


def _encode_many(tokenizer: Any, texts: list) -> list:
    """Ids of each text without special tokens, for a glassbox or a transformers tokenizer."""
    from glassbox.tokenization import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        return [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _rows(docs: list, seq_len: int, eos_id: int, pad_id: int, bos_id: Optional[int]) -> np.ndarray:
    """Documents joined by EOS, cut into rows of ``seq_len`` (+ a BOS column when given)."""
    pieces = []
    for i, ids in enumerate(docs):
        pieces.append(np.asarray(ids, dtype=np.int64))
        if i < len(docs) - 1:
            pieces.append(np.array([eos_id], dtype=np.int64))
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
    if len(tokens) < seq_len:  # one short row, padded
        tokens = np.concatenate([tokens, np.full(seq_len - len(tokens), pad_id, dtype=np.int64)])
        n_rows = 1
    else:
        n_rows = len(tokens) // seq_len
        tokens = tokens[: n_rows * seq_len]
    rows = tokens.reshape(n_rows, seq_len)
    if bos_id is not None:
        rows = np.concatenate([np.full((n_rows, 1), bos_id, dtype=np.int64), rows], axis=1)
    return rows


def tokenize_and_concatenate(
    dataset: Any,
    tokenizer: Any,
    streaming: bool = False,
    max_length: int = 1024,
    column_name: str = "text",
    add_bos_token: bool = True,
    num_proc: Optional[int] = 10,
    set_format: bool = True,
) -> Any:
    """Tokenise every document of ``dataset``, join them with an EOS token between documents and
    cut the stream into rows of ``max_length`` tokens (the first one a BOS when
    ``add_bos_token``), as TransformerLens does; leftover tokens at the end of each mapped batch
    are dropped, and a batch shorter than one row is padded (with the pad id, or EOS when the
    tokenizer has none).

    ``dataset`` is a ``datasets.Dataset`` / ``IterableDataset`` (the result has one column,
    ``"tokens"``, in torch format when ``set_format``), or a plain list of strings (the result is
    then an int64 array [rows, max_length]). ``tokenizer`` is a glassbox :class:`Tokenizer` (e.g.
    ``model.tokenizer``) or a transformers tokenizer. ``num_proc`` is passed to
    ``Dataset.map`` (ignored when ``streaming``).
    """
    if max_length < 2 and add_bos_token:
        raise ValueError(f"max_length must be at least 2 with add_bos_token, got {max_length}")
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenize_and_concatenate needs a tokenizer with an EOS token")
    seq_len = max_length - 1 if add_bos_token else max_length
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bos_id = tokenizer.bos_token_id if add_bos_token else None
    if add_bos_token and bos_id is None:
        raise ValueError("add_bos_token=True needs a tokenizer with a BOS token")

    if isinstance(dataset, (list, tuple)):
        return _rows(_encode_many(tokenizer, list(dataset)), seq_len, tokenizer.eos_token_id, pad_id, bos_id)

    dataset = keep_single_column(dataset, column_name)

    def tokenize_function(examples: Any) -> dict:
        texts = examples[column_name]
        if not texts:
            return {"tokens": np.zeros((0, max_length), dtype=np.int64)}
        return {"tokens": _rows(_encode_many(tokenizer, list(texts)), seq_len, tokenizer.eos_token_id, pad_id, bos_id)}

    kwargs = {} if streaming else {"num_proc": num_proc}
    out = dataset.map(tokenize_function, batched=True, remove_columns=[column_name], **kwargs)
    if set_format:
        out.set_format(type="torch", columns=["tokens"])
    return out


def get_tokenizer_with_bos(tokenizer: Any) -> Any:
    """The tokenizer with BOS prepending switched on (TransformerLens re-creates tokenizers with
    ``add_bos_token=True``). glassbox tokenizers always have it on; a transformers tokenizer is
    wrapped into one. A tokenizer without a BOS token is returned unchanged."""
    from glassbox.tokenization import Tokenizer

    if getattr(tokenizer, "bos_token", None) is None:
        return tokenizer
    tok = Tokenizer.wrap(tokenizer)
    tok.add_bos_token = True
    if getattr(tokenizer, "padding_side", None):
        tok.padding_side = tokenizer.padding_side
    return tok
