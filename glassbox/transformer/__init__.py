"""The parts :class:`glassbox.HookedTransformer` is assembled from, one concern per module.

- :mod:`~glassbox.transformer.pretrained`: ``from_pretrained`` (names, folders, files → a model)
- :mod:`~glassbox.transformer.weights`: state dicts, weight processing, stacked weight properties
- :mod:`~glassbox.transformer.tokens`: tokenizer helpers (``to_tokens``, ``to_str_tokens`` ...)
- :mod:`~glassbox.transformer.engine`: building the C engine from the config and weights
- :mod:`~glassbox.transformer.run`: ``forward``, the per-run hook plan, ``run_with_cache``

Each module holds one mixin class; users only ever see ``HookedTransformer``.
"""
