"""The paper's experimental configuration, as curvlab hyper-parameter values.

Source: the public code of Wolinski, "Adapting Newton's Method to Neural
Networks through a Summary of Higher-Order Derivatives" (arXiv 2312.03885),
github.com/p-wol/GroupedNewton at commit ``e5a6cf8`` (the MLP/MNIST run,
``run_mlp_mnist.sh``; line numbers below refer to that file unless another
file is named). Each value is mapped to its curvlab name; the table in
``docs/backends/groupednewton.rst`` gives the same mapping with the reasons
for what curvlab adds.

:data:`PAPER_MLP_MNIST` are the optimizer's hyper-parameters. They are the
paper's algorithm exactly (``safeguard=False``, ``recompute_growth=None``):
curvlab's two safeguards are switched off. :data:`PAPER_MLP_MNIST_SAFE` is
the same with curvlab's defaults for the safeguards (what a comparison that
wants the paper's configuration *and* stability uses).

:data:`PAPER_MLP_MNIST_SETUP` describes the training setup around the
optimizer (model, data, batch sizes) for a harness preset to build.

Example:
    >>> PAPER_MLP_MNIST["lambda_int"], PAPER_MLP_MNIST["plateau_patience"]
    (1.0, 0)
    >>> PAPER_MLP_MNIST_SAFE["safeguard"], PAPER_MLP_MNIST_SAFE["recompute_growth"]
    (True, 2.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["PAPER_MLP_MNIST", "PAPER_MLP_MNIST_SAFE", "PAPER_MLP_MNIST_SETUP", "PAPER_SOURCES"]

#: Where each value comes from (file:line at commit e5a6cf8 of p-wol/GroupedNewton).
PAPER_SOURCES: Mapping[str, str] = MappingProxyType({
    "lr": "run_mlp_mnist.sh:29 optimizer.hg.damping=.1 (λ₁)",
    "lambda_int": "run_mlp_mnist.sh:36 optimizer.hg.nesterov.damping_int=1. (λ_int; the README's "
                  "minimal example, README.md:27, uses 10, curvlab's default)",
    "period": "run_mlp_mnist.sh:34 optimizer.hg.period_hg=10",
    "eta_ema": "run_mlp_mnist.sh:33 optimizer.hg.mom_lrs=.5",
    "clip_negative": "run_mlp_mnist.sh:37 optimizer.hg.remove_negative=True",
    "ema_before_clip": "configs/config_hydra.yaml:89 maintain_true_lrs: True; "
                       "src/grnewt/newton_summary.py:152-157 (EMA of the raw η, then relu)",
    "direction": "training_hydra.py:271 SGDUpdate(lr=1, momentum, dampening): u = the momentum "
                 "buffer",
    "momentum": "run_mlp_mnist.sh:31 optimizer.hg.momentum=.9",
    "dampening": "run_mlp_mnist.sh:32 optimizer.hg.momentum_damp=.9",
    "partition": "run_mlp_mnist.sh:28 optimizer.hg.partition='canonical' (one subset per tensor)",
    "order": "run_mlp_mnist.sh:35 optimizer.hg.nesterov.use=True (cubic regularisation)",
    "plateau_patience": "run_mlp_mnist.sh:42 optimizer.hg.dmp_auto.patience=0 (the later "
                        "hydra scripts use 2)",
    "plateau_factor": "run_mlp_mnist.sh:44 optimizer.hg.dmp_auto.factor=.5",
    "plateau_threshold": "run_mlp_mnist.sh:43 optimizer.hg.dmp_auto.threshold=.0001 (relative; "
                         "curvlab's fixed PLATEAU_THRESHOLD)",
    "plateau_window": "training_hydra.py:556 scheduler.step(epoch mean training loss): one "
                      "epoch = 54,000 / 100 = 540 steps (run_mlp_mnist.sh:16-17)",
    "fresh_batch_size": "run_mlp_mnist.sh:26 optimizer.hg.batch_size=1000; training_hydra.py:216 "
                        "DataLoader(trainset, 1000): sequential, not shuffled",
    "model": "run_mlp_mnist.sh:8-13 Perceptron 1024-200-100-10, tanh, sigma_w=1, sigma_b=0; "
             "src/grnewt/models/perceptron.py:31-40 (W ~ N(0, 1/fan_in), b = 0), :54 log_softmax",
    "batch_size": "run_mlp_mnist.sh:17 dataset.batch_size=100",
    "epochs": "run_mlp_mnist.sh:21 optimizer.epochs=100",
})

#: The paper's optimizer configuration (its algorithm exactly: no curvlab safeguard).
PAPER_MLP_MNIST: Mapping[str, Any] = MappingProxyType({
    "lr": 0.1,
    "lambda_int": 1.0,
    "order": 3,
    "period": 10,
    "eta_ema": 0.5,
    "clip_negative": True,
    "ema_before_clip": True,
    "direction": "sgd-momentum",
    "momentum": 0.9,
    "dampening": 0.9,
    "partition": "tensor",
    "plateau_patience": 0,
    "plateau_window": 540,
    "plateau_factor": 0.5,
    "safeguard": False,
    "recompute_growth": None,
})

#: The paper's configuration with curvlab's safeguards at their defaults.
PAPER_MLP_MNIST_SAFE: Mapping[str, Any] = MappingProxyType(
    {**PAPER_MLP_MNIST, "safeguard": True, "recompute_growth": 2.0})

#: The setup around the optimizer in the paper's MLP/MNIST run.
PAPER_MLP_MNIST_SETUP: Mapping[str, Any] = MappingProxyType({
    "model": "MLP 784-1024-200-100-10, tanh, log_softmax + NLL (= cross-entropy on logits); "
             "weights N(0, 1/fan_in), biases 0",
    "data": "MNIST, 54,000 training / 6,000 validation images, normalised (0.1307, 0.3081)",
    "batch_size": 100,
    "fresh_batch_size": 1000,
    "epochs": 100,
    "dtype": "float32",
})
