"""glassbox: TransformerLens's ``HookedTransformer`` workflow on a C compute core.

Swap ``import transformer_lens`` for ``import glassbox`` (or
``from glassbox import HookedTransformer``): class and method names, hook-point names
and shapes, and cache keys are TransformerLens's. Arrays are NumPy at the core and
torch tensors (sharing memory) when the caller works in torch; see
:mod:`glassbox.arrays` and :func:`set_array_backend`.

The C extension (``glassbox._C``) is imported lazily, on the first forward pass, so
the pure-Python parts (configs, utils, hook bookkeeping, tokenization) work without it.
"""
from glassbox import utils
from glassbox.arrays import get_array_backend, set_array_backend
from glassbox.ActivationCache import ActivationCache
from glassbox.config.hooked_transformer_config import HookedTransformerConfig
from glassbox.hook_points import HookedRootModule, HookPoint, LensHandle
from glassbox.HookedTransformer import HookedTransformer, Output
from glassbox.tokenization import Tokenizer
from glassbox.past_key_value_caching import (  # TL 2.x names and TL 3.x names
    HookedTransformerKeyValueCache,
    HookedTransformerKeyValueCacheEntry,
    TransformerLensKeyValueCache,
    TransformerLensKeyValueCacheEntry,
)

from glassbox import hook_points, utilities, components, config  # noqa: E402,F401
from glassbox import lens, visualization  # noqa: E402,F401
from glassbox import patching  # noqa: E402,F401

from glassbox.FactoredMatrix import FactoredMatrix  # noqa: E402
from glassbox.threads import get_num_threads, set_num_threads  # noqa: E402
from glassbox.numerics import (  # noqa: E402
    get_int8_activations,
    int8_activations,
    set_int8_activations,
)

__version__ = "0.1.0"

__all__ = [
    "HookedTransformer",
    "HookedTransformerConfig",
    "FactoredMatrix",
    "ActivationCache",
    "HookedRootModule",
    "HookPoint",
    "LensHandle",
    "Output",
    "Tokenizer",
    "HookedTransformerKeyValueCache",
    "HookedTransformerKeyValueCacheEntry",
    "TransformerLensKeyValueCache",
    "TransformerLensKeyValueCacheEntry",
    "utils",
    "utilities",
    "hook_points",
    "components",
    "config",
    "patching",
    "set_array_backend",
    "get_array_backend",
    "lens",
    "visualization",
    "set_num_threads",
    "get_num_threads",
    "set_int8_activations",
    "get_int8_activations",
    "int8_activations",
]
