"""Resolve ``name_or_path`` (as given to ``HookedTransformer.from_pretrained``) to files on disk.

Accepted forms, tried in this order:

0. the name of a model shipped inside glassbox (``"glassbox/tiny-gpt2-ioi"``,
   ``"glassbox/tiny-llama-ioi"``; see :func:`glassbox.loading.embedded.embedded_models`): its
   package folder, no network and no cache involved;
1. a local folder holding ``config.json`` and ``*.safetensors`` weights (single file, several
   shards with ``model.safetensors.index.json``, or several unindexed files) and, optionally,
   tokenizer files (``tokenizer.json``, ``tokenizer_config.json``, ...);
2. a path to one ``.safetensors`` file (or to ``model.safetensors.index.json``) with
   ``config.json`` next to it;
3. a Hugging Face Hub repo id (``"org/name"``) or one of TransformerLens's GPT-2 aliases
   (``"gpt2"``, ``"gpt2-small"``, ``"gpt2-medium"``, ``"gpt2-large"``, ``"gpt2-xl"``,
   ``"distilgpt2"``; case-insensitive), resolved through ``huggingface_hub``'s local cache.
   The cache is consulted first; the network is tried only when the model is not cached and
   neither ``HF_HUB_OFFLINE`` nor ``TRANSFORMERS_OFFLINE`` is set.

The alias table only translates names; it is not an allow-list: any folder or repo whose
``config.json`` names a supported architecture can be loaded.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .embedded import embedded_model_path, embedded_models, is_embedded_name

__all__ = [
    "MODEL_ALIASES",
    "ModelFiles",
    "resolve_model_files",
    "hub_offline",
    "official_model_name",
    "TOKENIZER_FILE_NAMES",
    "ALLOW_PATTERNS",
]

#: alias (lower case) -> (TransformerLens official name, Hub repo ids to look for, in order).
MODEL_ALIASES: Dict[str, Tuple[str, Tuple[str, ...]]] = {}


def _alias(official: str, repos: Tuple[str, ...], *aliases: str) -> None:
    for a in (official,) + aliases + repos:
        MODEL_ALIASES[a.lower()] = (official, repos)


_alias("gpt2", ("openai-community/gpt2", "gpt2"), "gpt2-small")
_alias("gpt2-medium", ("openai-community/gpt2-medium", "gpt2-medium"))
_alias("gpt2-large", ("openai-community/gpt2-large", "gpt2-large"))
_alias("gpt2-xl", ("openai-community/gpt2-xl", "gpt2-xl"))
_alias("distilgpt2", ("distilbert/distilgpt2", "distilgpt2"),
       "distillgpt2", "distill-gpt2", "distil-gpt2", "gpt2-xs")

#: tokenizer-related files copied into :attr:`ModelFiles.tokenizer_files` when present.
TOKENIZER_FILE_NAMES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
)

#: what ``snapshot_download`` fetches: config, weights, tokenizer files (never *.bin/*.pt).
ALLOW_PATTERNS = ["*.json", "*.safetensors", "merges.txt", "tokenizer.model"]

_INDEX_NAME = "model.safetensors.index.json"


@dataclass
class ModelFiles:
    """The files making up one checkpoint.

    Attributes:
        folder: the folder holding ``config.json``.
        config_path: path of ``config.json``.
        weight_files: the ``.safetensors`` files to read (shards in index order).
        index_path: ``model.safetensors.index.json`` when the checkpoint is sharded, else None.
        tokenizer_files: ``{file name: path}`` of the tokenizer files present.
        source: the resolved location (folder or file) the weights come from.
        official_name: TL-style model name (alias resolved; the folder name for local paths).
        repo_id: the Hub repo id when resolved through the cache, else None.
    """

    folder: str
    config_path: str
    weight_files: List[str]
    index_path: Optional[str] = None
    tokenizer_files: Dict[str, str] = field(default_factory=dict)
    source: str = ""
    official_name: str = ""
    repo_id: Optional[str] = None


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to a true value."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    return False


def official_model_name(name: str) -> str:
    """TransformerLens's official name for an alias (``"gpt2-small"`` -> ``"gpt2"``), else ``name``."""
    entry = MODEL_ALIASES.get(name.lower())
    return entry[0] if entry else name


def _cache_dir(cache_dir: Optional[str]) -> Optional[str]:
    # Read the environment at call time: huggingface_hub snapshots it at import.
    if cache_dir:
        return os.fspath(cache_dir)
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.environ[var]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _tokenizer_files(folder: str) -> Dict[str, str]:
    out = {}
    for name in TOKENIZER_FILE_NAMES:
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            out[name] = p
    return out


def _weights_in_folder(folder: str) -> Tuple[List[str], Optional[str]]:
    index = os.path.join(folder, _INDEX_NAME)
    if os.path.isfile(index):
        import json

        try:
            with open(index, "r", encoding="utf-8") as fh:
                weight_map = json.load(fh).get("weight_map", {})
            shards = list(dict.fromkeys(weight_map.values()))
        except (ValueError, AttributeError):
            shards = []  # the reader reports the malformed index precisely
        return [os.path.join(folder, s) for s in shards], index
    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(single):
        return [single], None
    return sorted(glob.glob(os.path.join(folder, "*.safetensors"))), None


def _scan_folder(folder: str, *, weight_files: Optional[List[str]] = None,
                 index_path: Optional[str] = None, source: Optional[str] = None,
                 official_name: Optional[str] = None, repo_id: Optional[str] = None) -> ModelFiles:
    config = os.path.join(folder, "config.json")
    if not os.path.isfile(config):
        raise FileNotFoundError(f"{folder}: no config.json found (a model folder needs config.json "
                                f"and *.safetensors weights)")
    if weight_files is None:
        weight_files, index_path = _weights_in_folder(folder)
    if not weight_files:
        others = [os.path.basename(p) for p in glob.glob(os.path.join(folder, "*"))
                  if p.endswith((".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf"))]
        hint = (f" (found {', '.join(sorted(others))}; glassbox reads safetensors only: re-save "
                f"with save_pretrained(..., safe_serialization=True))") if others else ""
        raise FileNotFoundError(f"{folder}: no *.safetensors weights found{hint}")
    return ModelFiles(
        folder=folder,
        config_path=config,
        weight_files=weight_files,
        index_path=index_path,
        tokenizer_files=_tokenizer_files(folder),
        source=source or folder,
        official_name=official_name or os.path.basename(os.path.normpath(folder)),
        repo_id=repo_id,
    )


def _looks_like_path(name: str) -> bool:
    return (os.path.isabs(name) or name.startswith(("./", "../", "~", ".\\"))
            or name.count("/") > 1 or "\\" in name
            or name.endswith((".safetensors", ".json")))


def _from_local(p: Path) -> ModelFiles:
    p = p.resolve()
    if p.is_dir():
        return _scan_folder(str(p))
    folder = str(p.parent)
    if p.name.endswith(".index.json"):
        files, _ = _weights_in_folder(folder) if p.name == _INDEX_NAME else ([], None)
        if p.name != _INDEX_NAME:
            import json

            with open(p, "r", encoding="utf-8") as fh:
                files = [os.path.join(folder, s)
                         for s in dict.fromkeys(json.load(fh).get("weight_map", {}).values())]
        return _scan_folder(folder, weight_files=files, index_path=str(p), source=str(p))
    if p.suffix == ".safetensors":
        return _scan_folder(folder, weight_files=[str(p)], source=str(p),
                            official_name=p.stem if p.stem != "model" else None)
    if p.name == "config.json":
        return _scan_folder(folder)
    raise ValueError(f"{p}: not a model folder, .safetensors file or safetensors index")


def _complete(folder: str) -> bool:
    try:
        files = _scan_folder(folder)
    except (OSError, ValueError):
        return False
    return all(os.path.isfile(f) for f in files.weight_files)


def _from_hub(name: str, revision: Optional[str], cache_dir: Optional[str]) -> ModelFiles:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a runtime dependency
        raise ImportError("resolving Hub model ids needs huggingface_hub (pip install huggingface_hub)") from exc

    official, repos = MODEL_ALIASES.get(name.lower(), (name, (name,)))
    cache = _cache_dir(cache_dir)
    offline = hub_offline()

    def _try(repo: str, local_only: bool) -> Optional[str]:
        try:
            return snapshot_download(repo, revision=revision, cache_dir=cache,
                                     allow_patterns=ALLOW_PATTERNS, local_files_only=local_only)
        except Exception as exc:  # LocalEntryNotFoundError, RepositoryNotFoundError, HTTP errors...
            if not local_only:
                msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
                errors.append(f"{type(exc).__name__}: {msg}")
            return None

    errors: List[str] = []
    for repo in repos:
        folder = _try(repo, True)
        if folder and _complete(folder):
            return _scan_folder(folder, official_name=official, repo_id=repo)
    if not offline:
        folder = _try(repos[0], False)
        if folder and _complete(folder):
            return _scan_folder(folder, official_name=official, repo_id=repos[0])

    from huggingface_hub import constants

    where = cache or constants.HF_HUB_CACHE
    why = "HF_HUB_OFFLINE is set" if offline else "downloading it failed: " + "; ".join(errors)
    looked = ", ".join("models--" + r.replace("/", "--") for r in repos)
    repo = repos[0]
    raise OSError(
        f"model {name!r} (Hub repo {repo!r}) is not a local path and is not in the local Hugging Face "
        f"cache at {where} (looked for {looked}; {why}). Get it on a machine with network access, e.g. "
        f"`hf download {repo} --include config.json '*.safetensors' '*.json' merges.txt` "
        f"(or huggingface_hub.snapshot_download({repo!r})), then copy the cache folder "
        f"'models--{repo.replace('/', '--')}' into {where} (or set HF_HUB_CACHE), "
        f"or pass the path of a local folder holding config.json and *.safetensors. "
        f"Models shipped with glassbox (no network needed): {', '.join(embedded_models())}."
    )


def resolve_model_files(name_or_path: str, *, revision: Optional[str] = None,
                        cache_dir: Optional[str] = None) -> ModelFiles:
    """Find the config, weights and tokenizer files for ``name_or_path``.

    Args:
        name_or_path: an embedded model name (``"glassbox/tiny-gpt2-ioi"``), local folder,
            ``.safetensors`` file, shard index, Hub repo id or a TransformerLens GPT-2 alias.
        revision: Hub revision (branch, tag or commit) for repo ids; default ``"main"``.
        cache_dir: Hugging Face cache folder; default ``$HF_HUB_CACHE`` / ``$HF_HOME/hub`` /
            huggingface_hub's default.

    Raises:
        FileNotFoundError: a path that does not exist, or a folder without config/weights.
        OSError: a repo id that is neither cached nor downloadable (the message says how to get it).
    """
    name = os.fspath(name_or_path)
    if is_embedded_name(name):
        return _scan_folder(embedded_model_path(name), official_name=name.strip().lower())
    p = Path(name).expanduser()
    if p.exists():
        return _from_local(p)
    if _looks_like_path(name):
        raise FileNotFoundError(f"{name}: no such file or directory")
    return _from_hub(name, revision, cache_dir)
