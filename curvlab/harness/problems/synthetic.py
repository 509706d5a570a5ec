"""Sanity problems with a known optimum: :class:`Quadratic` and :class:`TeacherStudent`."""

from __future__ import annotations

import torch
from torch import nn

from curvlab.harness.problems.base import Dataset, Problem

__all__ = ["Quadratic", "TeacherStudent"]


class Quadratic(Problem):
    r"""Ill-conditioned linear least squares, ``L(w) = mean_i (x_iᵀw + b − y_i)²``.

    Inputs ``x ~ N(0, diag(s²))`` with scales ``s`` log-spaced from 1 to
    ``10⁻¹·⁵`` (Hessian condition number ≈ 10³), ``y = xᵀw* + 0.1 ε``. The
    optimum is known in closed form (least squares on the training split,
    i.e. without the 205 validation rows):
    :attr:`optimum` is filled in by :meth:`load_data`. A Newton-type method
    reaches it in a few steps; plain gradient descent crawls along the
    small-scale directions.

    Example:
        >>> p = Quadratic()
        >>> d = p.load_data()
        >>> d.x_train.shape, 0.0 < p.optimum < 0.02
        (torch.Size([1843, 20]), True)
    """

    name = "quadratic"
    dataset = "synthetic"
    summary = "linear least squares, condition number ~1e3, closed-form optimum"
    task = "regression"
    batch_size = 256
    target_loss = 0.02
    dim = 20

    def load_data(self) -> Dataset:
        """Seeded data (generator seed 0); sets ``self.optimum`` to the least-squares loss.

        2048 train / 512 test rows; the validation split then takes 205 of the
        training rows, and the optimum is that of the remaining 1843.
        """
        g = torch.Generator().manual_seed(0)
        scales = torch.logspace(0, -1.5, self.dim, dtype=torch.float64)
        w = torch.randn(self.dim, 1, generator=g, dtype=torch.float64)
        x = torch.randn(2560, self.dim, generator=g, dtype=torch.float64) * scales
        y = x @ w + 0.1 * torch.randn(2560, 1, generator=g, dtype=torch.float64)
        data = self.with_validation(Dataset(x[:2048], y[:2048], x[2048:], y[2048:]))
        xtr, ytr = data.x_train, data.y_train
        a = torch.cat([xtr, torch.ones(xtr.shape[0], 1, dtype=torch.float64)], 1)
        sol = torch.linalg.lstsq(a, ytr).solution
        self.optimum = float(((a @ sol - ytr) ** 2).mean())
        return data.to("cpu", torch.float32)

    def build_model(self) -> nn.Sequential:
        """One Linear layer (weights and bias)."""
        return nn.Sequential(nn.Linear(self.dim, 1))

    def loss_fn(self) -> nn.Module:
        """Mean squared error."""
        return nn.MSELoss()


class TeacherStudent(Problem):
    """Regression on the outputs of a random teacher MLP 16-32-32-1 (tanh); optimum 0.

    The student has the teacher's architecture (so the loss can reach 0) and
    its own seeded initialisation; the teacher is fixed (seed 1234).

    Example:
        >>> p = TeacherStudent()
        >>> d = p.load_data()
        >>> p.init_model(0)(d.x_test).shape, p.optimum
        (torch.Size([512, 1]), 0.0)
    """

    name = "teacherstudent"
    dataset = "synthetic"
    summary = "regress a random tanh teacher MLP 16-32-32-1 with the same architecture; optimum 0"
    task = "regression"
    batch_size = 128
    target_loss = 6e-3  # validation loss (Adam and K-FAC reach 5e-3 to 6e-3 in 500 steps)
    optimum = 0.0

    def load_data(self) -> Dataset:
        """2048 train / 512 test Gaussian inputs labelled by the teacher (validation: 205 of the 2048)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)
            teacher = self.build_model()
            for p in teacher.parameters():
                p.data.mul_(1.5)
            x = torch.randn(2560, 16)
        with torch.no_grad():
            y = teacher(x)
        return self.with_validation(Dataset(x[:2048], y[:2048], x[2048:], y[2048:]))

    def build_model(self) -> nn.Sequential:
        """16-32-32-1 tanh MLP."""
        return nn.Sequential(
            nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
        )

    def loss_fn(self) -> nn.Module:
        """Mean squared error."""
        return nn.MSELoss()
