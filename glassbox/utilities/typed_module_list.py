"""``transformer_lens.utilities.typed_module_list`` path: :class:`TypedModuleList`, the class of
``HookedTransformer.blocks`` (defined in :mod:`glassbox.hook_points`)."""
from glassbox.hook_points import TypedModuleList

__all__ = ["TypedModuleList"]
