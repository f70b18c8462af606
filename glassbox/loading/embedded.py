"""Models shipped inside the glassbox package, loadable by name with no network.

``HookedTransformer.from_pretrained("glassbox/tiny-gpt2-ioi")`` (and
``from_pretrained_no_processing``) resolve these names to folders under
``glassbox/models/`` — standard Hugging Face folders (``config.json``, ``model.safetensors``,
``tokenizer.json``, ``tokenizer_config.json``, a ``README.md`` model card), so transformers
loads them too (``GPT2LMHeadModel.from_pretrained(embedded_model_path(name))``).

They are tiny models trained by ``scripts/train_embedded_models.py`` on synthetic data with
known mechanisms (induction on repeated random tokens; indirect object identification); the
matching datasets are in :mod:`glassbox.models.tasks`. Each folder's ``README.md`` states the
architecture, the training run and the measured accuracy, logit differences and induction
losses.
"""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

__all__ = ["EMBEDDED_MODELS", "embedded_models", "embedded_model_path", "is_embedded_name"]

#: embedded name -> (folder under ``glassbox/models/``, one-line description).
EMBEDDED_MODELS: Dict[str, Tuple[str, str]] = {
    "glassbox/tiny-gpt2-ioi": (
        "tiny-gpt2-ioi",
        "GPT2LMHeadModel, 3 layers, d_model 64, 4 heads (LayerNorm, learned positions, GELU, "
        "untied unembedding); trained on IOI prompts and repeated random tokens (induction "
        "heads L1H0 and L1H1)",
    ),
    "glassbox/tiny-llama-ioi": (
        "tiny-llama-ioi",
        "LlamaForCausalLM, 3 layers, d_model 64, 4 query / 2 key-value heads (RMSNorm, RoPE, "
        "SwiGLU, GQA); trained on IOI prompts and repeated random tokens",
    ),
}


def _models_dir() -> str:
    import glassbox.models as pkg

    return os.path.dirname(os.path.abspath(pkg.__file__))


def embedded_models() -> List[str]:
    """Names of the models shipped with glassbox (``"glassbox/tiny-gpt2-ioi"``, ...), sorted.

    Each loads offline with ``HookedTransformer.from_pretrained(name)``; see
    :data:`EMBEDDED_MODELS` for one-line descriptions and :func:`embedded_model_path` for the
    folder.
    """
    return sorted(EMBEDDED_MODELS)


def is_embedded_name(name: object) -> bool:
    """True if ``name`` is one of :func:`embedded_models` (case-insensitive)."""
    return isinstance(name, str) and name.strip().lower() in EMBEDDED_MODELS


def embedded_model_path(name: str) -> str:
    """The folder of an embedded model (``ValueError`` listing the embedded names otherwise;
    ``FileNotFoundError`` if the installed package lacks its files)."""
    if not is_embedded_name(name):
        raise ValueError(f"{name!r} is not an embedded glassbox model; embedded models: "
                         f"{', '.join(embedded_models())}")
    folder = os.path.join(_models_dir(), EMBEDDED_MODELS[name.strip().lower()][0])
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"embedded model {name!r}: {folder} is missing config.json (an "
                                f"incomplete glassbox install? reinstall the package)")
    return folder
