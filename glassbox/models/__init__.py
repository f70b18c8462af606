"""Tiny models shipped with glassbox, and the synthetic tasks they were trained on.

The model folders (``tiny-gpt2-ioi/``, ``tiny-llama-ioi/``) are package data: load them by
name, offline, with ``HookedTransformer.from_pretrained("glassbox/tiny-gpt2-ioi")``; list them
with :func:`glassbox.loading.embedded_models`. :mod:`glassbox.models.tasks` generates their
datasets (IOI prompt pairs, repeated random tokens). Importing this package loads nothing.
"""
