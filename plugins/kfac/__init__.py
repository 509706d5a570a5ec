"""K-FAC backend (factors from BackPACK), registered as ``kfac``."""

from curvlab_plugins.kfac.optimizer import KFAC

__all__ = ["KFAC"]
