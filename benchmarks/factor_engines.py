"""Time of one factor step: curvlab's hook engine vs the BackPACK engine, same run.

A factor step is one closure call (forward + the user's backward) inside
``engine.capture(...)``; the baseline is the same closure without capture.
Engines and the plain closure take turns within every round (so background
load hits all alike); the table reports the median over rounds of the mean
per call, in milliseconds, and the ratio to the plain closure.

Models (random data of the right shape; the timing does not depend on it):

* ``digits-mlp``: 64-128-64-10 ReLU MLP, batch 128, CrossEntropyLoss;
* ``ae-784``: 784-1000-500-250-30 mirrored ReLU auto-encoder, batch 1000,
  BCEWithLogitsLoss (the MNIST auto-encoder shape of Martens 2010); ``mc``
  only (``exact`` needs 784 output columns per sample).

Usage::

    python benchmarks/factor_engines.py                 # both models, mc and exact
    python benchmarks/factor_engines.py --models ae-784 --fisher mc --rounds 5 --calls 5

``--threads`` (default 1) sets ``torch.set_num_threads``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from curvlab.curvature.backpack_engine import BackpackEngine
from curvlab.curvature.hook_engine import HookEngine
from curvlab.harness.problems.digits import mirrored_autoencoder


def build(name: str) -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    if name == "digits-mlp":
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
        return model, nn.CrossEntropyLoss(), torch.randn(128, 64), torch.randint(0, 10, (128,))
    if name == "ae-784":
        model = mirrored_autoencoder([784, 1000, 500, 250, 30])
        x = torch.rand(1000, 784)
        return model, nn.BCEWithLogitsLoss(), x, x
    raise ValueError(f"unknown model {name!r}")


def make_closure(model, loss_fn, x, y):
    def closure():
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()

    return closure


def timed(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits-mlp", "ae-784"])
    parser.add_argument("--fisher", nargs="+", default=["mc", "exact"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.rounds} rounds × "
          f"{args.calls} calls\n")
    print("| model | fisher | plain closure ms | hooks ms (×) | BackPACK ms (×) | hooks / BackPACK |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        model, loss_fn, x, y = build(name)

        closure = make_closure(model, loss_fn, x, y)
        engines = {"hooks": HookEngine(model, loss_fn, seed=0), "backpack": BackpackEngine(model, loss_fn, seed=0)}
        for fisher in args.fisher:
            if fisher == "exact" and name == "ae-784":
                # KFLR's square root here is 784 × 1000 × 784 floats (2.5 GB); hooks: 784 backwards
                print(f"| {name} | exact | skipped: 784 output columns per sample | | | |")
                continue
            calls = args.calls

            def captured(engine, fisher=fisher, closure=closure):
                with engine.capture(fisher_type=fisher):
                    closure()

            results: dict[str, list[float]] = {"plain": [], "hooks": [], "backpack": []}
            closure()
            for engine in engines.values():
                captured(engine)  # warm-up
            for _ in range(args.rounds):
                results["plain"].append(timed(closure, args.calls))
                for key, engine in engines.items():
                    results[key].append(timed(lambda e=engine: captured(e), calls))
            med = {k: statistics.median(v) for k, v in results.items()}
            print(
                f"| {name} | {fisher} | {med['plain']:.2f} | {med['hooks']:.2f} "
                f"({med['hooks'] / med['plain']:.2f}×) | {med['backpack']:.2f} "
                f"({med['backpack'] / med['plain']:.2f}×) | {med['hooks'] / med['backpack']:.2f} |"
            )


if __name__ == "__main__":
    main()
