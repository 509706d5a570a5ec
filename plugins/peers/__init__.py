"""Peer optimizers bridged from ``pytorch-optimizer`` (the ``curvlab[peers]`` extra).

``soap``, ``shampoo``, ``kron``, ``adahessian``, ``sophiah`` and ``muon``
are curvlab optimizers wrapping the ``pytorch_optimizer`` classes of the
same names (see :mod:`curvlab_plugins.peers.bridge`). Importing this package
never needs ``pytorch_optimizer``; building one of them does. While it is
not installed the registry lists these names as unavailable.
"""

from curvlab_plugins.peers.bridge import PeerOptimizer
from curvlab_plugins.peers.optimizers import SOAP, AdaHessian, Kron, Muon, Shampoo, SophiaH

__all__ = ["SOAP", "AdaHessian", "Kron", "Muon", "PeerOptimizer", "Shampoo", "SophiaH"]
