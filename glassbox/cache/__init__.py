"""TransformerLens 3.x's ``transformer_lens.cache`` package path for the key/value cache classes
(defined in :mod:`glassbox.past_key_value_caching`)."""
