"""``transformer_lens.config`` path (TransformerLens 3.x)."""
from glassbox.config.hooked_transformer_config import HookedTransformerConfig, SUPPORTED_ACTIVATIONS

__all__ = ["HookedTransformerConfig", "SUPPORTED_ACTIVATIONS"]
