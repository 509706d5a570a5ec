"""Exact natural gradient on the mini-batch Fisher (true or MC), registered as ``natgrad``."""

from curvlab_plugins.natgrad.optimizer import NaturalGradient

__all__ = ["NaturalGradient"]
