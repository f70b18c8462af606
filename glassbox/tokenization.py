"""Tokenizer wrapper giving TransformerLens's tokenization behaviour without transformers.

:class:`Tokenizer` wraps a ``tokenizers.Tokenizer`` (from ``tokenizer.json``) plus the
special tokens named in ``tokenizer_config.json`` / ``special_tokens_map.json``, and
exposes the subset of the Hugging Face tokenizer API that TransformerLens code uses
(``encode``, ``decode``, ``batch_decode``, ``__call__``, ``bos_token_id``,
``pad_token_id``, ``padding_side``, ``vocab`` …). A Hugging Face tokenizer object can
be wrapped too (:meth:`Tokenizer.from_hf`).

BOS rules (as TransformerLens): ``tokenizer_prepends_bos`` records whether the
underlying tokenizer adds a BOS itself. With ``prepend_bos=True`` a tokenizer that does
not add one gets the BOS id prepended; with ``prepend_bos=False`` a tokenizer that does
add one has it removed. Missing BOS / PAD fall back to EOS (GPT-2: all three are
``<|endoftext|>``). Lists are padded with the pad id on ``padding_side`` ("right" unless
the tokenizer config says otherwise) and truncated to ``n_ctx``. Decoding keeps special
tokens and does no clean-up of spaces.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

_SPECIAL_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def _token_content(value: Any) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get("content")
    return str(value)


class Tokenizer:
    """TransformerLens-flavoured tokenizer (see module docstring)."""

    def __init__(
        self,
        encode_fn: Callable[[str], List[int]],
        decode_fn: Callable[[Sequence[int]], str],
        vocab: Dict[str, int],
        *,
        bos_token: Optional[str] = None,
        eos_token: Optional[str] = None,
        pad_token: Optional[str] = None,
        unk_token: Optional[str] = None,
        padding_side: Optional[str] = None,
        name_or_path: str = "",
        backend: Any = None,
    ):
        self._encode_fn = encode_fn
        self._decode_fn = decode_fn
        self._vocab = dict(vocab)
        self._id_to_token = {i: t for t, i in self._vocab.items()}
        self.backend_tokenizer = backend
        self.name_or_path = name_or_path
        self.unk_token = unk_token
        if eos_token is None:
            eos_token = "<|endoftext|>"
        self.eos_token = eos_token
        self.bos_token = bos_token if bos_token is not None else eos_token
        self.pad_token = pad_token if pad_token is not None else eos_token
        self.padding_side = padding_side or "right"
        # does the underlying tokenizer add a BOS by itself?
        raw = list(self._encode_fn(""))
        self._raw_adds_bos = len(raw) > 0 and raw[0] == self.bos_token_id
        #: TransformerLens re-creates every tokenizer with ``add_bos_token=True``; so do we.
        self.add_bos_token = True

    @property
    def tokenizer_prepends_bos(self) -> bool:
        """Whether ``encode`` puts a BOS first (TransformerLens's ``cfg.tokenizer_prepends_bos``)."""
        return self._raw_adds_bos or (self.add_bos_token and self.bos_token_id is not None)

    def _ids(self, text: str, add_special_tokens: bool = True) -> List[int]:
        ids = list(self._encode_fn(text))
        if self._raw_adds_bos and ids and ids[0] == self.bos_token_id:
            ids = ids[1:]
        if add_special_tokens and self.tokenizer_prepends_bos:
            ids = [self.bos_token_id] + ids
        return ids

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_file(cls, tokenizer_json: str, config_dir: Optional[str] = None, **overrides: Any) -> "Tokenizer":
        """Load ``tokenizer.json``; special tokens come from the json files next to it
        (or in ``config_dir``).

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not a tokenizer.json the ``tokenizers`` library can load
                (the message names the file and the library's reason).
        """
        from tokenizers import Tokenizer as _HFTok

        json_path = str(tokenizer_json)
        if not os.path.isfile(json_path):
            raise FileNotFoundError(f"{json_path}: no such tokenizer.json")
        try:
            backend = _HFTok.from_file(json_path)
        except Exception as exc:  # the tokenizers library raises plain Exception on bad files
            raise ValueError(f"{json_path}: not a valid tokenizer.json ({exc})") from None
        backend.no_padding()
        backend.no_truncation()
        folder = config_dir or os.path.dirname(str(tokenizer_json))
        special: Dict[str, Any] = {}
        for fname in reversed(_SPECIAL_FILES):  # tokenizer_config.json wins
            path = os.path.join(folder, fname)
            if os.path.exists(path):
                try:
                    with open(path, encoding="utf-8") as fh:
                        special.update(json.load(fh))
                except (OSError, ValueError):
                    pass
        kw = {
            k: _token_content(special.get(k))
            for k in ("bos_token", "eos_token", "pad_token", "unk_token")
        }
        kw["padding_side"] = special.get("padding_side")
        name_or_path = overrides.pop("name_or_path", folder)
        kw.update(overrides)
        enc, dec = _backend_codec(backend, json_path)
        return cls(
            enc,
            dec,
            backend.get_vocab(with_added_tokens=True),
            name_or_path=name_or_path,
            backend=backend,
            **kw,
        )

    @classmethod
    def from_dir(cls, folder: str, **overrides: Any) -> "Tokenizer":
        path = os.path.join(folder, "tokenizer.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no tokenizer.json in {folder}")
        return cls.from_file(path, folder, **overrides)

    @classmethod
    def from_hf(cls, hf_tokenizer: Any) -> "Tokenizer":
        """Wrap a transformers tokenizer (uses its encode/decode)."""
        return cls(
            lambda text: list(hf_tokenizer.encode(text, add_special_tokens=True)),
            lambda ids: hf_tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False),
            hf_tokenizer.get_vocab(),
            bos_token=hf_tokenizer.bos_token,
            eos_token=hf_tokenizer.eos_token,
            pad_token=hf_tokenizer.pad_token,
            unk_token=getattr(hf_tokenizer, "unk_token", None),
            padding_side=getattr(hf_tokenizer, "padding_side", None),
            name_or_path=getattr(hf_tokenizer, "name_or_path", ""),
            backend=hf_tokenizer,
        )

    @classmethod
    def wrap(cls, tokenizer: Any) -> "Tokenizer":
        """Accept a :class:`Tokenizer`, a ``tokenizers.Tokenizer``, a transformers
        tokenizer, or a path to a folder / tokenizer.json."""
        if isinstance(tokenizer, Tokenizer):
            return tokenizer
        if isinstance(tokenizer, (str, os.PathLike)):
            p = str(tokenizer)
            return cls.from_dir(p) if os.path.isdir(p) else cls.from_file(p)
        try:
            from tokenizers import Tokenizer as _HFTok
        except ImportError:  # pragma: no cover
            _HFTok = ()
        if _HFTok and isinstance(tokenizer, _HFTok):
            enc, dec = _backend_codec(tokenizer, "tokenizers.Tokenizer")
            return cls(
                enc,
                dec,
                tokenizer.get_vocab(with_added_tokens=True),
                backend=tokenizer,
            )
        if hasattr(tokenizer, "encode") and hasattr(tokenizer, "decode"):
            return cls.from_hf(tokenizer)
        raise TypeError(f"unsupported tokenizer type {type(tokenizer).__name__}")

    # -- ids ------------------------------------------------------------------------------
    def convert_tokens_to_ids(self, tokens: Union[str, Sequence[str]]) -> Any:
        if isinstance(tokens, str):
            return self._vocab.get(tokens)
        return [self._vocab.get(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: Union[int, Sequence[int]]) -> Any:
        if isinstance(ids, (int, np.integer)):
            return self._id_to_token.get(int(ids))
        return [self._id_to_token.get(int(i)) for i in ids]

    @property
    def bos_token_id(self) -> Optional[int]:
        return self._vocab.get(self.bos_token) if self.bos_token is not None else None

    @property
    def eos_token_id(self) -> Optional[int]:
        return self._vocab.get(self.eos_token) if self.eos_token is not None else None

    @property
    def pad_token_id(self) -> Optional[int]:
        return self._vocab.get(self.pad_token) if self.pad_token is not None else None

    @property
    def vocab(self) -> Dict[str, int]:
        return self._vocab

    def get_vocab(self) -> Dict[str, int]:
        return dict(self._vocab)

    @property
    def vocab_size(self) -> int:
        return max(self._vocab.values()) + 1 if self._vocab else 0

    def __len__(self) -> int:
        return len(self._vocab)

    # -- encoding -------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        """Token ids, with a leading BOS when ``add_special_tokens`` (as TransformerLens's
        tokenizer, created with ``add_bos_token=True``)."""
        return self._ids(text, add_special_tokens)

    def tokenize(self, text: str) -> List[str]:
        return self.convert_ids_to_tokens(self.encode(text, add_special_tokens=False))

    def encode_batch(
        self,
        texts: Union[str, Sequence[str]],
        prepend_bos: bool,
        padding_side: Optional[str] = None,
        max_length: Optional[int] = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """TransformerLens ``to_tokens`` core: ids [B, P] int64 and mask [B, P].

        BOS is added or removed to honour ``prepend_bos``; rows are truncated to
        ``max_length`` (from the right) and padded on ``padding_side`` with the pad id.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise TypeError("expected a str or a list of str")
        if len(texts) == 0:
            raise ValueError("cannot tokenize an empty list of strings")
        rows: List[List[int]] = []
        for text in texts:
            # as TransformerLens: tokenize with BOS, truncate, then drop the BOS if unwanted
            ids = self._ids(text, add_special_tokens=True)
            if max_length is not None:
                ids = ids[:max_length]
            if not prepend_bos and self.tokenizer_prepends_bos and ids:
                ids = ids[1:]
            rows.append(ids)
        width = max(len(r) for r in rows)
        pad = self.pad_token_id if self.pad_token_id is not None else 0
        side = padding_side or self.padding_side
        tokens = np.full((len(rows), width), pad, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            n = len(r)
            if n == 0:
                continue
            if side == "left":
                tokens[i, width - n:] = r
                mask[i, width - n:] = 1
            else:
                tokens[i, :n] = r
                mask[i, :n] = 1
        return tokens, mask

    def __call__(
        self,
        text: Union[str, Sequence[str]],
        padding: bool = True,
        truncation: bool = False,
        max_length: Optional[int] = None,
        return_tensors: Optional[str] = None,
        add_special_tokens: bool = True,
        **_: Any,
    ) -> Dict[str, Any]:
        """HF-style call: ``{"input_ids", "attention_mask"}`` (lists, or arrays/tensors
        with ``return_tensors="np"`` / ``"pt"``)."""
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        rows = [self.encode(t, add_special_tokens=add_special_tokens) for t in texts]
        if truncation and max_length is not None:
            rows = [r[:max_length] for r in rows]
        if return_tensors is None and not padding:
            ids = rows[0] if single else rows
            m = [[1] * len(r) for r in rows]
            return {"input_ids": ids, "attention_mask": m[0] if single else m}
        width = max((len(r) for r in rows), default=0)
        pad = self.pad_token_id if self.pad_token_id is not None else 0
        tokens = np.full((len(rows), width), pad, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            if not r:
                continue
            if self.padding_side == "left":
                tokens[i, width - len(r):], mask[i, width - len(r):] = r, 1
            else:
                tokens[i, : len(r)], mask[i, : len(r)] = r, 1
        if return_tensors == "pt":
            import torch

            return {"input_ids": torch.from_numpy(tokens), "attention_mask": torch.from_numpy(mask)}
        if return_tensors == "np":
            return {"input_ids": tokens, "attention_mask": mask}
        if single:
            return {"input_ids": tokens[0].tolist(), "attention_mask": mask[0].tolist()}
        return {"input_ids": tokens.tolist(), "attention_mask": mask.tolist()}

    # -- decoding -------------------------------------------------------------------------
    def decode(self, ids: Any, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool = False, **_: Any) -> str:
        """Ids → text, keeping special tokens, no clean-up of spaces."""
        ids = _as_id_list(ids)
        if skip_special_tokens:
            specials = {self.bos_token_id, self.eos_token_id, self.pad_token_id}
            ids = [i for i in ids if i not in specials]
        return self._decode_fn(ids)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool = False, **kw: Any) -> List[str]:
        """A list of texts, one per sequence of ``sequences`` ([batch, pos] array / tensor or
        a list of id lists). A single flat sequence of ids (1-d array, list of ints) gives a
        one-element list, as transformers 5 does."""
        from glassbox.arrays import is_torch, to_numpy

        if is_torch(sequences) or isinstance(sequences, np.ndarray):
            arr = np.asarray(to_numpy(sequences))
            if arr.ndim <= 1:
                return [self.decode(arr, skip_special_tokens=skip_special_tokens)]
            return [self.decode(row, skip_special_tokens=skip_special_tokens) for row in arr]
        seqs = list(sequences)
        if seqs and all(isinstance(s, (int, np.integer)) for s in seqs):
            return [self.decode(seqs, skip_special_tokens=skip_special_tokens)]
        return [self.decode(s, skip_special_tokens=skip_special_tokens) for s in seqs]

    def __repr__(self) -> str:
        return (
            f"Tokenizer(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
            f"bos={self.bos_token!r}, eos={self.eos_token!r}, pad={self.pad_token!r}, "
            f"padding_side={self.padding_side!r})"
        )


def _backend_codec(backend: Any, where: str):
    """``(encode, decode)`` over a ``tokenizers.Tokenizer`` whose failures -- the library raises
    plain ``Exception``, e.g. a WordPiece vocabulary without its unknown token -- become
    ``ValueError`` naming the tokenizer file and the text or ids."""

    def encode(text: str) -> List[int]:
        try:
            return backend.encode(text, add_special_tokens=True).ids
        except Exception as exc:
            if type(exc) is not Exception:
                raise
            raise ValueError(f"{where}: the tokenizer cannot encode {text[:60]!r}: {exc}") from None

    def decode(ids: Sequence[int]) -> str:
        ids = list(ids)
        try:
            return backend.decode(ids, skip_special_tokens=False)
        except Exception as exc:
            if type(exc) is not Exception:
                raise
            raise ValueError(f"{where}: the tokenizer cannot decode {ids[:20]}: {exc}") from None

    return encode, decode


def _as_id_list(ids: Any) -> List[int]:
    from glassbox.arrays import to_numpy

    if isinstance(ids, (int, np.integer)):
        return [int(ids)]
    arr = to_numpy(ids)
    return [int(i) for i in np.asarray(arr).reshape(-1)]


__all__ = ["Tokenizer"]
