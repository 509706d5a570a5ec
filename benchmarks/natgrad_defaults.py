"""The grid behind natgrad's default lr / damping / momentum (docs/backends/natgrad.rst).

Digits MLP 64-128-64-10 (the harness's ``digits-mlp`` model and data), batch
100 from the harness's seeded ``BatchStream``, ``--steps`` steps, then the
cross-entropy on the whole training split. One thread; every run starts from
the same initialisation (seed 0).

Usage::

    python benchmarks/natgrad_defaults.py --fisher true mc          # the natgrad grid
    python benchmarks/natgrad_defaults.py --baselines                # SGD-momentum and Adam
"""

from __future__ import annotations

import argparse
import itertools
import time
import warnings

import torch

import curvlab
from curvlab.harness.problems import BatchStream, load_problem


def run(name: str, steps: int, **hp) -> tuple[float, int, float]:
    """Final full training loss, skipped steps and seconds of one run."""
    problem = load_problem("digits-mlp")
    data = problem.data()
    model, loss_fn = problem.init_model(0), problem.loss_fn()
    stream = BatchStream(data.x_train, data.y_train, 100, 0)
    opt = curvlab.create(name, model, loss_fn, **hp)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            x, y = next(stream)
            opt.step(curvlab.closure(model, loss_fn, x, y))
    with torch.no_grad():
        loss = float(loss_fn(model(data.x_train), data.y_train))
    return loss, int(opt.stats["skipped_steps"]), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fisher", nargs="+", default=["true", "mc"])
    parser.add_argument("--lrs", nargs="+", type=float, default=[1.0, 0.3, 0.1])
    parser.add_argument("--dampings", nargs="+", type=float, default=[1.0, 0.1, 0.01])
    parser.add_argument("--momenta", nargs="+", type=float, default=[0.0, 0.9])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--baselines", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| optimizer | hparams | final loss | skipped | s |")
    print("|---|---|---:|---:|---:|")
    if args.baselines:
        configs = [("sgd", {"lr": lr, "momentum": 0.9}) for lr in (0.3, 0.1, 0.03)]
        configs += [("adam", {"lr": lr}) for lr in (3e-3, 1e-3)]
    else:
        configs = [("natgrad", {"fisher_type": f, "lr": lr, "damping": lam, "momentum": mom})
                   for f, mom, lr, lam in itertools.product(args.fisher, args.momenta, args.lrs,
                                                            args.dampings)]
    for name, hp in configs:
        loss, skipped, seconds = run(name, args.steps, **hp)
        text = ", ".join(f"{k}={v}" for k, v in hp.items())
        print(f"| {name} | {text} | {loss:.4f} | {skipped} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
