"""First-order baselines: :class:`SGD` (momentum, Nesterov) and :class:`Adam`."""

from curvlab_plugins.baselines.adam import Adam
from curvlab_plugins.baselines.sgd import SGD

__all__ = ["SGD", "Adam"]
