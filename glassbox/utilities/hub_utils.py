"""Hugging Face Hub / library helpers with TransformerLens's names (``hf_utils``,
``library_utils``). Everything goes through ``huggingface_hub``'s cache, so it works offline for
files already cached and fails with the hub client's own error otherwise."""
from __future__ import annotations

import importlib.util
import json
import shutil
from typing import Any, Optional

__all__ = ["download_file_from_hf", "clear_huggingface_cache", "get_dataset", "is_library_available"]

#: TransformerLens's short names for its convenience datasets -> Hub dataset ids
DATASET_IDS = {
    "openwebtext": "stas/openwebtext-10k",
    "owt": "stas/openwebtext-10k",
    "pile": "NeelNanda/pile-10k",
    "c4": "NeelNanda/c4-10k",
    "code": "NeelNanda/code-10k",
    "python": "NeelNanda/code-10k",
    "c4_code": "NeelNanda/c4-code-20k",
    "c4-code": "NeelNanda/c4-code-20k",
    "wiki": "NeelNanda/wiki-10k",
}


def is_library_available(name: str) -> bool:
    """True if the module ``name`` can be imported (checked without importing it)."""
    return importlib.util.find_spec(name) is not None


def _cache_dir() -> Optional[str]:
    from glassbox.loading.hub import _cache_dir as cache

    return cache(None)


def download_file_from_hf(repo_name: str, file_name: str, subfolder: str = ".", cache_dir: Optional[str] = None,
                          force_is_torch: bool = False, **kwargs: Any) -> Any:
    """Fetch ``subfolder/file_name`` of Hub repo ``repo_name`` through the local cache and return
    its content: parsed JSON for ``.json``; for ``.pth`` (or ``force_is_torch``) the object
    ``torch.load`` reads (needs torch); otherwise the local path."""
    from huggingface_hub import hf_hub_download

    allowed = {"revision", "repo_type", "token", "local_files_only", "force_download"}
    path = hf_hub_download(repo_id=repo_name, filename=file_name,
                           subfolder=None if subfolder in (".", "", None) else subfolder,
                           cache_dir=cache_dir or _cache_dir(), **{k: v for k, v in kwargs.items() if k in allowed})
    if path.endswith(".pth") or force_is_torch:
        import torch

        return torch.load(path, map_location="cpu", weights_only=False)
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    print("File type not supported:", path.split(".")[-1])
    return path


def clear_huggingface_cache() -> None:
    """Delete the Hugging Face hub cache directory (``HF_HUB_CACHE``) and everything in it."""
    from huggingface_hub import constants

    where = _cache_dir() or constants.HF_HUB_CACHE
    print("Deleting Hugging Face cache directory and all its contents.")
    shutil.rmtree(where, ignore_errors=True)


def get_dataset(dataset_name: str, **kwargs: Any) -> Any:
    """One of TransformerLens's small convenience datasets (``"openwebtext"``, ``"pile"``,
    ``"c4"``, ``"code"``, ``"c4_code"``, ``"wiki"``), the ``train`` split, via ``datasets``
    (which needs it cached, or network access). Other names raise ``ValueError``."""
    key = dataset_name.lower()
    if key not in DATASET_IDS:
        raise ValueError(f"Dataset {dataset_name} not supported; choose one of {sorted(DATASET_IDS)}")
    from datasets import load_dataset

    return load_dataset(DATASET_IDS[key], split="train", **kwargs)


