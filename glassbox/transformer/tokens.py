"""Tokenizer helpers of :class:`~glassbox.HookedTransformer` (``to_tokens``, ``to_str_tokens`` ...)."""
from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

import numpy as np

from glassbox.arrays import is_torch, to_numpy, wants_torch, wrap
from glassbox.tokenization import Tokenizer
from glassbox.utils import USE_DEFAULT_VALUE, LocallyOverridenDefaults


def tokenizer_from_name(name: str) -> Tokenizer:
    """The tokenizer of ``name``: a local folder / ``tokenizer.json`` path, or a Hub repo id (TL
    alias names too) resolved through the local huggingface_hub cache (the network is tried only
    when it is not cached and ``HF_HUB_OFFLINE`` is not set). Only tokenizer files are fetched."""
    import os

    if os.path.exists(name):
        return Tokenizer.wrap(name)
    from glassbox.loading.hub import MODEL_ALIASES, TOKENIZER_FILE_NAMES, _cache_dir, hub_offline

    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a runtime dependency
        raise ImportError("loading a tokenizer by name needs huggingface_hub") from exc
    repos = MODEL_ALIASES.get(name.lower(), (name, (name,)))[1]
    errors = []
    for local_only in (True, False):
        if not local_only and hub_offline():
            break
        for repo in repos if local_only else repos[:1]:
            try:
                folder = snapshot_download(repo, cache_dir=_cache_dir(None), local_files_only=local_only,
                                           allow_patterns=list(TOKENIZER_FILE_NAMES))
            except Exception as exc:  # not cached / not on the Hub
                errors.append(f"{repo}: {type(exc).__name__}")
                continue
            if os.path.exists(os.path.join(folder, "tokenizer.json")):
                return Tokenizer.from_dir(folder, name_or_path=name)
            errors.append(f"{repo}: no tokenizer.json")
    raise OSError(f"cannot load the tokenizer {name!r}: it is not a local path and no tokenizer.json for it is in "
                  f"the local Hugging Face cache ({'; '.join(errors)}"
                  f"{'; HF_HUB_OFFLINE is set' if hub_offline() else ''})")


class TokensMixin:
    """Part of :class:`glassbox.HookedTransformer` (see its docstring)."""

    def set_tokenizer(self, tokenizer: Any, default_padding_side: Optional[str] = None) -> None:
        """Use ``tokenizer`` (a glassbox Tokenizer, a ``tokenizers.Tokenizer``, a transformers
        tokenizer or a folder path); sets ``cfg.tokenizer_prepends_bos`` and, if unset,
        ``cfg.d_vocab``."""
        if default_padding_side not in ("right", "left", None):
            raise AssertionError(f"padding_side must be 'right', 'left' or 'None', got {default_padding_side}")
        tok = Tokenizer.wrap(tokenizer)
        if default_padding_side is not None:
            tok.padding_side = default_padding_side
        if tok.padding_side is None:
            tok.padding_side = "right"
        self.tokenizer = tok
        self.cfg.tokenizer_prepends_bos = tok.tokenizer_prepends_bos
        if self.cfg.d_vocab == -1:
            self.cfg.d_vocab = tok.vocab_size
        if self.cfg.d_vocab_out == -1:
            self.cfg.d_vocab_out = self.cfg.d_vocab

    def _require_tokenizer(self, what: str) -> Tokenizer:
        if self.tokenizer is None:
            raise AssertionError(f"Cannot use {what} without a tokenizer")
        return self.tokenizer

    def to_tokens(
        self,
        input: Union[str, List[str]],
        prepend_bos: Optional[bool] = USE_DEFAULT_VALUE,
        padding_side: Optional[str] = USE_DEFAULT_VALUE,
        move_to_device: bool = True,
        truncate: bool = True,
    ) -> Any:
        """Text (or a list of texts, padded) → tokens [batch, pos] int64. torch tensor when
        torch is importable (see glassbox.arrays), NumPy otherwise."""
        tokens, _ = self._tokenize(input, prepend_bos, padding_side, truncate)
        return wrap(tokens, wants_torch(input))

    def _tokenize(
        self,
        input: Union[str, List[str]],
        prepend_bos: Optional[bool],
        padding_side: Optional[str],
        truncate: bool = True,
    ) -> Tuple[np.ndarray, np.ndarray]:
        tok = self._require_tokenizer("to_tokens")
        with LocallyOverridenDefaults(self, prepend_bos=prepend_bos, padding_side=padding_side):
            return tok.encode_batch(
                input,
                prepend_bos=self.cfg.default_prepend_bos,
                padding_side=tok.padding_side,
                max_length=self.cfg.n_ctx if truncate else None,
            )

    def to_string(self, tokens: Any) -> Union[str, List[str]]:
        """Tokens → text: a string for a scalar / [pos] input, a list for [batch, pos]."""
        tok = self._require_tokenizer("to_string")
        arr = np.asarray(to_numpy(tokens))
        if arr.ndim == 2:
            return tok.batch_decode(arr, clean_up_tokenization_spaces=False)
        if arr.ndim <= 1:
            return tok.decode(arr, clean_up_tokenization_spaces=False)
        raise ValueError(f"Invalid shape passed in: {arr.shape}")

    def to_str_tokens(
        self,
        input: Any,
        prepend_bos: Optional[bool] = USE_DEFAULT_VALUE,
        padding_side: Optional[str] = USE_DEFAULT_VALUE,
    ) -> Union[List[str], List[List[str]]]:
        """Text or tokens ([pos] / [1, pos]) → list of token strings (a list per item for
        a list input)."""
        tok = self._require_tokenizer("to_str_tokens")
        if isinstance(input, list) and input and all(isinstance(t, (int, np.integer)) and not isinstance(t, bool)
                                                     for t in input):
            input = np.asarray(input, dtype=np.int64)  # a list of token ids is one sequence (TL refuses it)
        if isinstance(input, list):
            return [self.to_str_tokens(item, prepend_bos, padding_side) for item in input]
        if isinstance(input, str):
            tokens, _ = self._tokenize(input, prepend_bos, padding_side)
            ids = tokens[0]
        elif is_torch(input) or isinstance(input, np.ndarray):
            ids = np.asarray(to_numpy(input)).squeeze()
            if ids.ndim == 0:
                ids = ids[None]
            if ids.ndim != 1:
                raise AssertionError(f"Invalid tokens input to to_str_tokens, has shape: {tuple(ids.shape)}")
        elif isinstance(input, (int, np.integer)):
            ids = np.asarray([int(input)])
        else:
            raise ValueError(f"Invalid input type to to_str_tokens: {type(input)}")
        return tok.batch_decode([[int(t)] for t in ids], clean_up_tokenization_spaces=False)

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token (AssertionError otherwise)."""
        tokens, _ = self._tokenize(string, False, None)
        ids = tokens.squeeze()
        if ids.shape != ():
            raise AssertionError(f"Input string: {string} is not a single token!")
        return int(ids)

    def to_single_str_token(self, int_token: int) -> str:
        if not isinstance(int_token, (int, np.integer)):
            raise AssertionError("int_token must be an int")
        out = self.to_str_tokens(np.asarray([int(int_token)]))
        return out[0]

    def get_token_position(
        self,
        single_token: Union[str, int],
        input: Any,
        mode: str = "first",
        prepend_bos: Optional[bool] = USE_DEFAULT_VALUE,
        padding_side: Optional[str] = USE_DEFAULT_VALUE,
    ) -> int:
        """Position of ``single_token`` in ``input`` (text or [pos] / [1, pos] tokens)."""
        if isinstance(input, str):
            tokens, _ = self._tokenize(input, prepend_bos, padding_side)
        else:
            tokens = np.asarray(to_numpy(input))
        if tokens.ndim == 2:
            if tokens.shape[0] != 1:
                raise AssertionError(f"If tokens are rank two, they must have shape [1, seq_len], not {tokens.shape}")
            tokens = tokens[0]
        if isinstance(single_token, str):
            single_token = self.to_single_token(single_token)
        elif is_torch(single_token) or isinstance(single_token, np.ndarray):
            single_token = int(to_numpy(single_token).reshape(-1)[0])
        idx = np.nonzero(tokens == single_token)[0]
        if len(idx) == 0:
            raise AssertionError("The token does not occur in the prompt")
        if mode == "first":
            return int(idx[0])
        if mode == "last":
            return int(idx[-1])
        raise ValueError(f"mode must be 'first' or 'last', not {mode}")

    def tokens_to_residual_directions(self, tokens: Any) -> Any:
        """Unembedding directions ``W_U[:, tokens]``: [d_model], [pos, d_model] or
        [batch, pos, d_model]."""
        W_U = self.unembed.param_np("W_U")
        torch_mode = wants_torch(tokens)
        if (is_torch(tokens) or isinstance(tokens, np.ndarray)) and np.asarray(to_numpy(tokens)).size > 1:
            ids = np.asarray(to_numpy(tokens)).astype(np.int64)
            return wrap(np.ascontiguousarray(np.moveaxis(W_U[:, ids], 0, -1)), torch_mode)
        if isinstance(tokens, str):
            token = self.to_single_token(tokens)
        elif isinstance(tokens, (int, np.integer)):
            token = int(tokens)
        elif is_torch(tokens) or isinstance(tokens, np.ndarray):
            token = int(np.asarray(to_numpy(tokens)).reshape(-1)[0])
        else:
            raise ValueError(f"Invalid token type: {type(tokens)}")
        return wrap(np.ascontiguousarray(W_U[:, token]), torch_mode)
