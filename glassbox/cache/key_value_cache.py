"""TransformerLens 3.x module path: ``TransformerLensKeyValueCache`` (see
:mod:`glassbox.past_key_value_caching`)."""
from glassbox.past_key_value_caching import TransformerLensKeyValueCache, TransformerLensKeyValueCacheEntry

__all__ = ["TransformerLensKeyValueCache", "TransformerLensKeyValueCacheEntry"]
