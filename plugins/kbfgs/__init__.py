"""K-BFGS and K-BFGS(L) backends (Goldfarb, Ren & Bahamou, NeurIPS 2020)."""

from curvlab_plugins.kbfgs.optimizer import KBFGS, KBFGSL

__all__ = ["KBFGS", "KBFGSL"]
