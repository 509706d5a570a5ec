"""Benchmark problems, discovered through the ``curvlab.problems`` entry-point group.

Built in: ``digits-mlp``, ``digits-cnn``, ``digits-autoencoder``,
``curves-autoencoder``, ``teacher-student``, ``quadratic`` (built-in data);
``fashion-mlp``, ``fashion-autoencoder``, ``fashion-cnn``, ``fashion-logreg``,
``fashion-tanh-mlp`` (Fashion-MNIST,
``apt-get install dataset-fashion-mnist``); ``mnist-mlp``,
``mnist-autoencoder``, ``mnist-cnn``, ``mnist-tanh-mlp`` (MNIST from ``--data-dir``);
``text-transformer`` (the Python standard library's source, or a text
file). :mod:`curvlab.harness.data` tells where each dataset is found. A
third-party package adds a problem with::

    [project.entry-points."curvlab.problems"]
    myproblem = "mypackage.problems:MyProblem"   # a Problem subclass
"""

from __future__ import annotations

import inspect
from typing import Any

from curvlab.harness.problems.base import BatchStream, Dataset, Evaluation, Problem
from curvlab.harness.problems.curves import CurvesAutoencoder
from curvlab.harness.problems.digits import DigitsAutoencoder, DigitsCNN, DigitsMLP
from curvlab.harness.problems.mnist import (
    MNISTCNN,
    MNISTMLP,
    FashionAutoencoder,
    FashionCNN,
    FashionMLP,
    MNISTAutoencoder,
)
from curvlab.harness.problems.papers import FashionLogReg, FashionTanhMLP, MNISTTanhMLP
from curvlab.harness.problems.synthetic import Quadratic, TeacherStudent
from curvlab.harness.problems.text import TextTransformer
from curvlab.registry import Registry

__all__ = [
    "PROBLEMS",
    "MNISTCNN",
    "MNISTMLP",
    "BatchStream",
    "CurvesAutoencoder",
    "Dataset",
    "DigitsAutoencoder",
    "DigitsCNN",
    "DigitsMLP",
    "Evaluation",
    "FashionAutoencoder",
    "FashionCNN",
    "FashionLogReg",
    "FashionTanhMLP",
    "FashionMLP",
    "MNISTAutoencoder",
    "MNISTTanhMLP",
    "Problem",
    "Quadratic",
    "TeacherStudent",
    "TextTransformer",
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
    """Instantiate the problem registered as ``name`` with ``options``.

    Options (see :class:`Problem`): ``small``, ``data_dir``, ``batch_size``,
    ``fresh_batch_size``, ``split_seed``, ``eval_size``;
    ``load_problem(name, **p.options())`` rebuilds ``p``.

    Raises:
        ValueError: unknown name (lists the available ones and a close match),
            or an option out of range.

    Example:
        >>> load_problem("Digits-MLP").name
        'digitsmlp'
    """
    return PROBLEMS.load(name)(**options)
