"""``transformer_lens.HookedTransformerConfig`` module path (TransformerLens 2.x).

The implementation lives in :mod:`glassbox.config.hooked_transformer_config`.
"""
from glassbox.config.hooked_transformer_config import HookedTransformerConfig, SUPPORTED_ACTIVATIONS

__all__ = ["HookedTransformerConfig", "SUPPORTED_ACTIVATIONS"]
