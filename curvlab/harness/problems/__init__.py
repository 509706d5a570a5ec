"""Benchmark problems, discovered through the ``curvlab.problems`` entry-point group.

Built in: ``digits-mlp``, ``digits-cnn``, ``digits-autoencoder``,
``curves-autoencoder``, ``teacher-student``, ``quadratic``, ``mnist-mlp``,
``mnist-autoencoder``. A third-party package adds one with::

    [project.entry-points."curvlab.problems"]
    myproblem = "mypackage.problems:MyProblem"   # a Problem subclass
"""

from __future__ import annotations

import inspect
from typing import Any

from curvlab.harness.problems.base import BatchStream, Dataset, Problem
from curvlab.harness.problems.curves import CurvesAutoencoder
from curvlab.harness.problems.digits import DigitsAutoencoder, DigitsCNN, DigitsMLP
from curvlab.harness.problems.mnist import MNISTMLP, MNISTAutoencoder
from curvlab.harness.problems.synthetic import Quadratic, TeacherStudent
from curvlab.registry import Registry

__all__ = [
    "PROBLEMS",
    "MNISTMLP",
    "BatchStream",
    "CurvesAutoencoder",
    "Dataset",
    "DigitsAutoencoder",
    "DigitsCNN",
    "DigitsMLP",
    "MNISTAutoencoder",
    "Problem",
    "Quadratic",
    "TeacherStudent",
    "available_problems",
    "load_problem",
]


def _check_problem(name: str, obj: Any) -> None:
    if not (inspect.isclass(obj) and issubclass(obj, Problem)):
        raise ValueError(f"problem plugin {name!r} must be a Problem subclass, got {obj!r}")


PROBLEMS = Registry("curvlab.problems", kind="problem", validate=_check_problem)


def available_problems() -> list[str]:
    """Registered problem names (normalised), sorted.

    Example:
        >>> {"digitsmlp", "quadratic"} <= set(available_problems())
        True
    """
    return PROBLEMS.names()


def load_problem(name: str, **options: Any) -> Problem:
    """Instantiate the problem registered as ``name`` with ``options`` (``small``, ``data_dir``).

    Raises:
        ValueError: unknown name (lists the available ones and a close match).

    Example:
        >>> load_problem("Digits-MLP").name
        'digitsmlp'
    """
    return PROBLEMS.load(name)(**options)
