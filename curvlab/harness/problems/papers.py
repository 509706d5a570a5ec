r"""Problems of the seed papers' figures that the other problems do not cover (Fashion-MNIST, MNIST).

- :class:`FashionLogReg` (``fashion-logreg``): Benzing (ICML 2022), Fig. 2:
  logistic regression (one ``Linear(784, 10, bias=False)`` layer, so that
  K-FAC's block-diagonal Fisher is the full Fisher) on the first 1000
  Fashion-MNIST training images, trained full batch.
- :class:`FashionTanhMLP` (``fashion-tanh-mlp``) and :class:`MNISTTanhMLP`
  (``mnist-tanh-mlp``): the GroupedNewton paper's perceptron (Wolinski,
  arXiv 2312.03885, ``run_mlp_mnist.sh``): 784-1024-200-100-10, tanh,
  weights :math:`\mathcal N(0, 1/\text{fan-in})`, biases 0, batch 100,
  tensors on separate batches of 1000. The paper trains on MNIST (given
  with ``--data-dir``); the Fashion-MNIST variant is the offline stand-in.

Inputs are standardised with the training set's mean and standard
deviation, as in the other MNIST-format problems (the GroupedNewton paper
normalises MNIST with its constants 0.1307, 0.3081: the same map up to the
rounding of those constants).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from curvlab.harness.problems.base import Dataset
from curvlab.harness.problems.mnist import IDXImageProblem, standardise

__all__ = ["FashionLogReg", "FashionTanhMLP", "MNISTTanhMLP", "tanh_perceptron"]

#: Training images of :class:`FashionLogReg` (Benzing, Fig. 2: "1000 images").
LOGREG_TRAIN = 1000


def tanh_perceptron(widths: list[int]) -> nn.Sequential:
    """``Linear`` layers ``w0 → … → wk`` with tanh between, weights N(0, 1/fan-in), biases 0.

    Example:
        >>> m = tanh_perceptron([4, 3, 2])
        >>> [type(l).__name__ for l in m], float(m[0].bias.abs().sum())
        (['Linear', 'Tanh', 'Linear'], 0.0)
    """
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.normal_(0.0, 1.0 / math.sqrt(a))
            lin.bias.zero_()
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class FashionLogReg(IDXImageProblem):
    """Logistic regression on 1000 Fashion-MNIST images, full batch (Benzing 2022, Fig. 2).

    The first 1000 training images are the training set; the validation
    set is the next 1000 (so that every run sees all 1000 in one batch);
    the test set is Fashion-MNIST's (``small``: its first 500 images).

    Example:
        >>> FashionLogReg().batch_size, sum(p.numel() for p in FashionLogReg().init_model(0).parameters())
        (1000, 7840)
    """

    name = "fashionlogreg"
    dataset = "fashion-mnist"
    summary = ("Fashion-MNIST, 1000 training images, logistic regression 784-10 without bias "
               "(Benzing Fig. 2), standardised, cross-entropy, full batch")
    task = "classification"
    batch_size = LOGREG_TRAIN
    target_loss = 0.6
    default_eval_every = 10
    default_eval_size = LOGREG_TRAIN

    def load_data(self) -> Dataset:
        """The first 1000 training images, the next 1000 as validation, the test set."""
        from curvlab.harness.problems.mnist import SMALL_TEST, load_image_set

        s = load_image_set(self.dataset, self.data_dir)
        n = LOGREG_TRAIN
        xte, yte = (s.x_test[:SMALL_TEST], s.y_test[:SMALL_TEST]) if self.small else (s.x_test,
                                                                                     s.y_test)

        def images(a):  # noqa: ANN001, ANN202 - uint8 (read-only, cached) -> new float32
            return torch.from_numpy(a.reshape(len(a), 784).astype("float32")).div_(255.0)

        def labels(a):  # noqa: ANN001, ANN202
            return torch.from_numpy(a.astype("int64"))

        data = Dataset(images(s.x_train[:n]), labels(s.y_train[:n]), images(xte), labels(yte),
                       images(s.x_train[n:2 * n]), labels(s.y_train[n:2 * n]), sources=s.files,
                       meta={"location": str(s.location.folder), "origin": s.location.origin})
        return standardise(data)

    def build_model(self) -> nn.Module:
        """``Linear(784, 10, bias=False)``, PyTorch's default initialisation."""
        return nn.Sequential(nn.Linear(784, 10, bias=False))

    def loss_fn(self) -> nn.Module:
        """Mean cross-entropy."""
        return nn.CrossEntropyLoss()


class MNISTTanhMLP(IDXImageProblem):
    """MNIST, the GroupedNewton paper's perceptron 784-1024-200-100-10 tanh (batch 100).

    Example:
        >>> MNISTTanhMLP().batch_size, MNISTTanhMLP().fresh_batch_size
        (100, 100)
    """

    name = "mnisttanhmlp"
    dataset = "mnist"
    summary = ("MNIST, MLP 784-1024-200-100-10 tanh, N(0,1/fan-in) weights, zero biases "
               "(GroupedNewton paper), standardised, cross-entropy")
    task = "classification"
    batch_size = 100
    target_loss = 0.1
    default_eval_every = 100

    def build_model(self) -> nn.Module:
        """784-1024-200-100-10 (small: 784-64-32-16-10), tanh."""
        return tanh_perceptron([784, 64, 32, 16, 10] if self.small
                               else [784, 1024, 200, 100, 10])

    def loss_fn(self) -> nn.Module:
        """Mean cross-entropy (the paper's log_softmax + NLL)."""
        return nn.CrossEntropyLoss()


class FashionTanhMLP(MNISTTanhMLP):
    """Fashion-MNIST with the GroupedNewton paper's perceptron (the offline stand-in for MNIST).

    Example:
        >>> FashionTanhMLP().dataset
        'fashion-mnist'
    """

    name = "fashiontanhmlp"
    dataset = "fashion-mnist"
    summary = ("Fashion-MNIST, MLP 784-1024-200-100-10 tanh, N(0,1/fan-in) weights, zero biases "
               "(GroupedNewton paper's model), standardised, cross-entropy")
    target_loss = 0.35
