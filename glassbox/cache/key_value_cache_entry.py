"""TransformerLens 3.x module path: ``TransformerLensKeyValueCacheEntry`` (see
:mod:`glassbox.past_key_value_caching`)."""
from glassbox.past_key_value_caching import TransformerLensKeyValueCacheEntry

__all__ = ["TransformerLensKeyValueCacheEntry"]
