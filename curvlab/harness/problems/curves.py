"""Synthetic CURVES-like images: seeded quadratic Bézier curves, Gaussian blur, 28×28.

An image is the curve ``B(t) = (1-t)² P₀ + 2(1-t)t P₁ + t² P₂``, ``t ∈ [0,1]``,
with control points ``Pᵢ`` uniform in ``[2, 25]²``, rasterised at 64 values of
``t``, blurred with a Gaussian (σ = 1 pixel, :func:`scipy.ndimage.gaussian_filter`)
and scaled to a maximum of 1. The data are generated from a fixed seed, so
every run sees the same images. The model is the K-BFGS paper's CURVES
auto-encoder 784-400-200-100-50-25-6 (mirrored, ReLU, linear code).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from curvlab.harness.problems.base import Dataset, Problem
from curvlab.harness.problems.digits import mirrored_autoencoder

__all__ = ["CurvesAutoencoder", "make_curves"]


def make_curves(n: int, seed: int, size: int = 28, sigma: float = 1.0) -> np.ndarray:
    """Generate ``n`` blurred Bézier-curve images, flattened to ``n × size²`` float32.

    Example:
        >>> x = make_curves(3, seed=0)
        >>> x.shape, float(x.max()) == 1.0, bool((make_curves(3, seed=0) == x).all())
        ((3, 784), True, True)
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.RandomState(seed)
    pts = rng.uniform(2, size - 3, size=(n, 3, 2))
    t = np.linspace(0.0, 1.0, 64)[None, :, None]
    curve = (1 - t) ** 2 * pts[:, :1] + 2 * (1 - t) * t * pts[:, 1:2] + t**2 * pts[:, 2:]
    rc = np.clip(np.rint(curve).astype(int), 0, size - 1)
    img = np.zeros((n, size, size), dtype=np.float64)
    rows = np.repeat(np.arange(n), rc.shape[1])
    img[rows, rc[..., 0].ravel(), rc[..., 1].ravel()] = 1.0
    img = gaussian_filter(img, sigma=(0, sigma, sigma))
    img /= img.reshape(n, -1).max(axis=1)[:, None, None]
    return img.reshape(n, size * size).astype(np.float32)


class CurvesAutoencoder(Problem):
    """CURVES-like auto-encoder (784-400-200-100-50-25-6 mirrored); ``small``: 784-64-6, fewer images.

    Reported loss: sigmoid cross-entropy summed over the 784 pixels, mean over the batch.

    Example:
        >>> p = CurvesAutoencoder(small=True)
        >>> d = p.load_data()
        >>> d.n_train, p.init_model(0)(d.x_test[:2]).shape
        (461, torch.Size([2, 784]))
    """

    name = "curvesautoencoder"
    dataset = "synthetic"
    summary = "synthetic CURVES-like 28x28 Bezier images, AE 784-400-200-100-50-25-6 mirrored"
    task = "autoencoder"
    batch_size = 256
    target_loss = 120.0
    loss_scale = 784.0

    def load_data(self) -> Dataset:
        """10000 train / 2000 test images (small: 512 / 128), data seed 0 (test: seed 1).

        The validation split takes 10 % of the training images (1000; small: 51).
        """
        n_train, n_test = (512, 128) if self.small else (10000, 2000)
        xtr = torch.from_numpy(make_curves(n_train, seed=0))
        xte = torch.from_numpy(make_curves(n_test, seed=1))
        return self.with_validation(Dataset(xtr, xtr.clone(), xte, xte.clone()))

    def build_model(self) -> nn.Sequential:
        """The paper's mirrored AE (small: 784-64-6 mirrored)."""
        widths = [784, 64, 6] if self.small else [784, 400, 200, 100, 50, 25, 6]
        return mirrored_autoencoder(widths)

    def loss_fn(self) -> nn.Module:
        """Sigmoid cross-entropy, mean over pixels and batch (reported × 784)."""
        return nn.BCEWithLogitsLoss()
