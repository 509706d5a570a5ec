"""First-order baselines: :class:`SGD` (momentum, Nesterov), :class:`Adam` and :class:`RMSprop`."""

from curvlab_plugins.baselines.adam import Adam
from curvlab_plugins.baselines.rmsprop import RMSprop
from curvlab_plugins.baselines.sgd import SGD

__all__ = ["SGD", "Adam", "RMSprop"]
