"""``transformer_lens.utilities`` path (TransformerLens 3.x); same contents as :mod:`glassbox.utils`.

Topic modules, as in TransformerLens: :mod:`~glassbox.utilities.devices`,
:mod:`~glassbox.utilities.tensors`, :mod:`~glassbox.utilities.tokenize_utils`,
:mod:`~glassbox.utilities.hub_utils`, :mod:`~glassbox.utilities.initialization`.
Names are looked up in :mod:`glassbox.utils` on access (that module imports these topic modules,
so nothing is copied here at import time).
"""
import glassbox.utils as _utils


def __getattr__(name: str):
    if name == "__all__":
        return list(_utils.__all__)
    try:
        return getattr(_utils, name)
    except AttributeError:
        raise AttributeError(f"module 'glassbox.utilities' has no attribute {name!r}") from None


def __dir__():
    return sorted(set(globals()) | set(_utils.__all__))
