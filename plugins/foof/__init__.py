"""FOOF backend (gradient descent on neurons), registered as ``foof``."""

from curvlab_plugins.foof.optimizer import FOOF

__all__ = ["FOOF"]
