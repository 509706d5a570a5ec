"""GroupedNewton backend: exact partition tensors ḡ, H̄, D and per-subset step sizes.

Modules: :mod:`.optimizer` (the optimizer), :mod:`.tensors` (nested
autodiff), :mod:`.cubic` (step-size solves), :mod:`.partition` (subsets),
:mod:`.direction` (first-order directions u).
"""

from curvlab_plugins.groupednewton.optimizer import (
    GroupedNewton,
    GroupedNewtonTensors,
    GroupedNewtonWarning,
)
from curvlab_plugins.groupednewton.partition import groups_by
from curvlab_plugins.groupednewton.tensors import PartitionTensors, partition_tensors

__all__ = ["GroupedNewton", "GroupedNewtonTensors", "GroupedNewtonWarning", "PartitionTensors",
           "groups_by", "partition_tensors"]
