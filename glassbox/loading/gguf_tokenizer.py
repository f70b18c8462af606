"""Build a ``tokenizers.Tokenizer`` from a GGUF file's tokenizer metadata.

A GGUF has no ``tokenizer.json``; llama.cpp stores the vocabulary under ``tokenizer.ggml.*``:

* ``tokenizer.ggml.model == "gpt2"``: byte-level BPE (GPT-2, Llama-3, SmolLM, Qwen ...):
  ``tokens`` (byte-level spelling), ``merges`` (``"a b"`` strings), ``token_type``, and
  ``tokenizer.ggml.pre`` naming the pre-tokenizer's split regex.
* ``tokenizer.ggml.model == "llama"``: SentencePiece-style BPE (Llama-1/2, Mistral ...):
  ``tokens`` (``"▁"`` for spaces, ``<0xNN>`` byte tokens) and ``scores``; the merges are implied
  by the scores (a token that splits into two tokens is a merge, ranked by its score).

Special ids come from ``tokenizer.ggml.{bos,eos,unknown,padding}_token_id`` and
``tokenizer.ggml.add_bos_token`` / ``add_eos_token`` say whether encoding adds them. Tokens of
type CONTROL (3) are matched whole as special tokens, USER_DEFINED (4) as plain added tokens.

The result is built to give the same ids as ``transformers.AutoTokenizer.from_pretrained(dir,
gguf_file=...)`` (transformers 5.x). Public functions: :func:`has_tokenizer`,
:func:`build_tokenizer`, :func:`write_tokenizer_files`, :func:`load_gguf_tokenizer`.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

__all__ = ["has_tokenizer", "build_tokenizer", "write_tokenizer_files", "load_gguf_tokenizer",
           "byte_level_alphabet", "TOKENIZER_MODELS"]

#: ``tokenizer.ggml.model`` values we can build.
TOKENIZER_MODELS = ("gpt2", "llama")

_CONTROL, _USER_DEFINED = 3, 4

# Split regexes of llama.cpp pre-tokenizer names (``tokenizer.ggml.pre``) that differ from GPT-2's.
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {
    "llama3": _LLAMA3, "llama-v3": _LLAMA3, "llama-bpe": _LLAMA3, "smaug-bpe": _LLAMA3,
    "dbrx": _LLAMA3, "falcon3": _LLAMA3,
    "qwen2": _QWEN2, "deepseek-r1-qwen": _QWEN2,
}


def byte_level_alphabet() -> Dict[int, str]:
    """GPT-2's byte -> printable character map (printable Latin-1 bytes map to themselves,
    the others to ``chr(256 + n)`` in byte order)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out: Dict[int, str] = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + n)
            n += 1
    return out


def _open(f: Any):
    if isinstance(f, (str, os.PathLike)):
        from .gguf_io import open_gguf

        return open_gguf(os.fspath(f))
    return f


def has_tokenizer(f: Any) -> bool:
    """Whether the GGUF (path or opened file) carries tokenizer metadata."""
    f = _open(f)
    return "tokenizer.ggml.model" in f and "tokenizer.ggml.tokens" in f


def _derive_merges(tokens: Sequence[str], scores: Optional[Sequence[float]]) -> List[Tuple[str, str]]:
    """Merges implied by a vocabulary: every split of a token into two tokens, ranked by the
    merged token's score (higher first; without scores, by lower id), then by longer left and
    right parts, then vocabulary order."""
    vocab = {t: i for i, t in enumerate(tokens)}
    ranked = []  # (key, order, left, right)
    order = 0
    keyed = dict(zip(tokens, scores)) if scores is not None else dict(vocab)
    for tok, score in keyed.items():
        pairs = [(tok[:k], tok[k:]) for k in range(1, len(tok)) if tok[:k] in vocab and tok[k:] in vocab]
        pairs.sort(key=lambda p: (vocab[p[0]], vocab[p[1]]))
        for left, right in pairs:
            if scores is not None:  # best score first, longer pieces first on ties
                key = (-float(score), -len(left), -len(right))
            else:
                key = (float(score), len(left), len(right))
            ranked.append((key, order, left, right))
            order += 1
    ranked.sort(key=lambda r: (r[0], r[1]))
    return [(left, right) for _, _, left, right in ranked]


def _special_config(f: Any, tokens: Sequence[str]) -> Dict[str, Any]:
    conf: Dict[str, Any] = {}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        idx = f.get(f"tokenizer.ggml.{key}")
        conf[name] = tokens[int(idx)] if idx is not None and 0 <= int(idx) < len(tokens) else None
    model = f.get("tokenizer.ggml.model")
    add_bos = f.get("tokenizer.ggml.add_bos_token")
    # llama.cpp adds BOS for a SentencePiece vocabulary that does not say otherwise
    conf["add_bos_token"] = bool(add_bos) if add_bos is not None else model == "llama"
    conf["add_eos_token"] = bool(f.get("tokenizer.ggml.add_eos_token", False))
    if conf["add_bos_token"] and conf["bos_token"] is None:
        conf["add_bos_token"] = False
    if conf["add_eos_token"] and conf["eos_token"] is None:
        conf["add_eos_token"] = False
    template = f.get("tokenizer.chat_template")
    if template is not None:
        conf["chat_template"] = template
    return conf


def _byte_level(f: Any, tokens: List[str]):
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    spell = byte_level_alphabet()
    alphabet = set(spell.values())
    spelled = [t if set(t) <= alphabet else "".join(spell[b] for b in t.encode("utf-8")) for t in tokens]
    vocab = {t: i for i, t in enumerate(spelled)}
    merges_raw = f.get("tokenizer.ggml.merges")
    if merges_raw is not None:
        merges = [tuple(m.split(" ", 1)) for m in merges_raw]
    else:
        merges = _derive_merges(spelled, None)
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    split = _SPLITS.get(str(f.get("tokenizer.ggml.pre", "")))
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tok.decoder = decoders.ByteLevel()
    # control tokens spelled outside the byte alphabet are llama.cpp mislabels: skip them
    return tok, (lambda t: set(t) <= alphabet)


def _sentencepiece(f: Any, tokens: List[str]):
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    scores = f.get("tokenizer.ggml.scores")
    vocab = {t: i for i, t in enumerate(tokens)}
    merges_raw = f.get("tokenizer.ggml.merges")
    if merges_raw is not None:
        merges = [tuple(m.split(" ", 1)) for m in merges_raw]
    else:
        merges = _derive_merges(tokens, scores if scores is not None else None)
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True))
    # llama.cpp's flag; transformers 5.x ignores it (always prefixes): we honour an explicit False
    prefix = f.get("tokenizer.ggml.add_space_prefix")
    prefix = True if prefix is None else bool(prefix)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if prefix else "never", split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(steps)
    return tok, (lambda t: True)


def build_tokenizer(f: Any) -> Tuple[Any, Dict[str, Any]]:
    """``(tokenizers.Tokenizer, tokenizer_config)`` for a GGUF (path or opened file).

    ``tokenizer_config`` holds ``bos_token``, ``eos_token``, ``unk_token``, ``pad_token``
    (strings or None), ``add_bos_token``, ``add_eos_token`` and ``chat_template`` when present;
    the tokenizer's post-processor adds BOS/EOS accordingly.

    Raises:
        ValueError: no tokenizer metadata, an unsupported ``tokenizer.ggml.model``, or malformed
            tokenizer metadata (values of the wrong type, merges naming unknown tokens, ...):
            the message names the file.
    """
    f = _open(f)
    if not has_tokenizer(f):
        raise ValueError(f"{f.path}: the GGUF file has no tokenizer metadata (tokenizer.ggml.*)")
    try:
        return _build_tokenizer(f)
    except (ValueError, MemoryError):
        raise
    except Exception as exc:  # metadata of the wrong type/shape; tokenizers raises plain Exception
        raise ValueError(f"{f.path}: malformed GGUF tokenizer metadata "
                         f"({type(exc).__name__}: {exc})") from None


def _build_tokenizer(f: Any) -> Tuple[Any, Dict[str, Any]]:
    from tokenizers import AddedToken, processors

    model = str(f.get("tokenizer.ggml.model"))
    tokens = [str(t) for t in f.get("tokenizer.ggml.tokens")]
    if model == "gpt2":
        tok, allowed = _byte_level(f, tokens)
    elif model == "llama":
        tok, allowed = _sentencepiece(f, tokens)
    else:
        raise ValueError(f"{f.path}: tokenizer.ggml.model={model!r} is not supported; supported: "
                         f"{', '.join(TOKENIZER_MODELS)}")
    conf = _special_config(f, tokens)
    types = f.get("tokenizer.ggml.token_type") or []
    vocab = tok.get_vocab()
    control = [t for t, ty in zip(tokens, types) if ty == _CONTROL and allowed(t)]
    named = [conf[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")
             if conf[k] is not None and conf[k] in vocab and conf[k] not in control]
    special = list(dict.fromkeys(control + named))
    if special:
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in special])
    user = [t for t, ty in zip(tokens, types) if ty == _USER_DEFINED and t in vocab]
    if user:
        tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])

    single = "$A:0"
    pieces = []
    if conf["add_bos_token"]:
        single = f"{conf['bos_token']}:0 " + single
        pieces.append((conf["bos_token"], tok.token_to_id(conf["bos_token"])))
    if conf["add_eos_token"]:
        single = single + f" {conf['eos_token']}:0"
        pieces.append((conf["eos_token"], tok.token_to_id(conf["eos_token"])))
    pair = single + " " + single.replace("$A", "$B").replace(":0", ":1")
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                       special_tokens=list(dict.fromkeys(pieces)))
    return tok, conf


def write_tokenizer_files(f: Any, folder: str) -> Dict[str, str]:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` for the GGUF into ``folder``;
    returns ``{file name: path}`` (the form of ``LoadedModel.tokenizer_files``)."""
    tok, conf = build_tokenizer(f)
    os.makedirs(folder, exist_ok=True)
    files = {"tokenizer.json": os.path.join(folder, "tokenizer.json"),
             "tokenizer_config.json": os.path.join(folder, "tokenizer_config.json")}
    tok.save(files["tokenizer.json"])
    with open(files["tokenizer_config.json"], "w", encoding="utf-8") as fh:
        json.dump(conf, fh, ensure_ascii=False, indent=1)
    return files


def load_gguf_tokenizer(path: Union[str, os.PathLike]):
    """A :class:`glassbox.tokenization.Tokenizer` (TransformerLens behaviour) for a GGUF file."""
    import tempfile

    from glassbox.tokenization import Tokenizer

    with tempfile.TemporaryDirectory(prefix="glassbox-gguf-tokenizer-") as folder:
        files = write_tokenizer_files(path, folder)
        return Tokenizer.from_file(files["tokenizer.json"], folder, name_or_path=os.fspath(path))
