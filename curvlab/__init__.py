"""curvlab: second-order (curvature) optimizers for PyTorch behind one interface.

Pick an optimizer by name, train with the ``step(closure)`` contract:

>>> import torch, curvlab
>>> model, loss_fn = torch.nn.Linear(4, 1), torch.nn.MSELoss()
>>> opt = curvlab.create("adam", model, loss_fn, lr=1e-2)
>>> x, y = torch.randn(16, 4), torch.randn(16, 1)
>>> loss = opt.step(curvlab.closure(model, loss_fn, x, y))
"""

from curvlab.api import (
    OptimizerInfo,
    available,
    create,
    info,
    refresh,
    register,
    unavailable,
    unregister,
)
from curvlab.closure import Closure, LossClosure, closure
from curvlab.hparams import HParam, Schema
from curvlab.optimizer import (
    CurvatureOptimizer,
    DivergedWarning,
    Evaluation,
    NonFiniteStepWarning,
    OptimizerMeta,
    Skip,
    Step,
)
from curvlab.registry import PluginWarning, normalize

__version__ = "0.1.0"

__all__ = [
    "Closure",
    "CurvatureOptimizer",
    "DivergedWarning",
    "Evaluation",
    "HParam",
    "LossClosure",
    "NonFiniteStepWarning",
    "OptimizerInfo",
    "OptimizerMeta",
    "PluginWarning",
    "Schema",
    "Skip",
    "Step",
    "available",
    "closure",
    "create",
    "info",
    "normalize",
    "refresh",
    "register",
    "unavailable",
    "unregister",
]
