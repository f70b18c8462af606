"""``transformer_lens.utilities`` path (TransformerLens 3.x); same contents as :mod:`glassbox.utils`."""
from glassbox.utils import *  # noqa: F401,F403
from glassbox.utils import __all__  # noqa: F401
