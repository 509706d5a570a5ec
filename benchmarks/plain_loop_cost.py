"""Cost of K-FAC's and FOOF's plain-loop mode against the closure, per factor step.

In the plain loop (``loss.backward(); opt.step()``) curvlab's hooks record
the user's own forward and backward (:mod:`curvlab.curvature.plain_loop`):
``fisher_type="empirical"`` needs no extra pass, ``"mc"``/``"exact"``
back-propagate the sampled targets (the loss Hessian's columns) when the
user's code calls ``loss_fn``. This script times one training step
(forward, backward, ``step``) with the statistics recorded at every step
(``factor_every=1``, ``stats_steps=None``; inverses every 50 steps, so the
inversion is amortised the same way in both loops) for

* each loop: ``plain`` (the user's loop) and ``closure`` (``curvlab.closure``),
* each configuration: ``kfac`` with ``empirical``/``mc``/``exact``, ``foof``,

on the harness's digits MLP and digits CNN, against SGD's plain step in the
same run. Contestants take turns in interleaved rounds; the table is the
median ms/step over rounds and the ratio to SGD.

Usage::

    python benchmarks/plain_loop_cost.py                        # both problems, 5 rounds of 30 steps
    python benchmarks/plain_loop_cost.py --problems digits-mlp --rounds 3 --block 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import curvlab
from curvlab.harness.problems import BatchStream, load_problem

CONFIGS = {
    "sgd": ("sgd", {"lr": 0.01}),
    "kfac-empirical": ("kfac", {"fisher_type": "empirical", "factor_every": 1, "inverse_every": 50}),
    "kfac-mc": ("kfac", {"fisher_type": "mc", "factor_every": 1, "inverse_every": 50}),
    "kfac-exact": ("kfac", {"fisher_type": "exact", "factor_every": 1, "inverse_every": 50}),
    "foof": ("foof", {"stats_steps": None, "inverse_every": 50}),
}


class Contestant:
    """One configuration in one loop, with its own model copy and batch stream."""

    def __init__(self, config, loop, problem, data, seed=0):
        name, hp = CONFIGS[config]
        self.loop = loop
        self.model = problem.init_model(seed)
        self.loss_fn = problem.loss_fn()
        self.stream = BatchStream(data.x_train, data.y_train, problem.batch_size, seed)
        self.opt = curvlab.create(name, self.model, self.loss_fn, **hp)

    def run(self, steps: int) -> float:
        """Seconds per step over ``steps`` steps."""
        start = time.perf_counter()
        for _ in range(steps):
            x, y = next(self.stream)
            if self.loop == "plain":
                self.opt.zero_grad()
                self.loss_fn(self.model(x), y).backward()
                self.opt.step()
            else:
                self.opt.step(curvlab.closure(self.model, self.loss_fn, x, y))
        return (time.perf_counter() - start) / steps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", nargs="+", default=["digits-mlp", "digits-cnn"])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--block", type=int, default=30, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    configs = ["sgd"] + [c for c in args.configs if c != "sgd"]
    print(f"torch {torch.__version__}, {args.threads} thread(s), block {args.block}, "
          f"{args.rounds} rounds (median); statistics at every step\n")
    print("| problem | configuration | plain ms/step | × SGD | closure ms/step | × SGD |")
    print("|---|---|---:|---:|---:|---:|")
    for problem_name in args.problems:
        problem = load_problem(problem_name)
        data = problem.load_data()
        runs = {(c, loop): Contestant(c, loop, problem, data)
                for c in configs for loop in ("plain", "closure")}
        for run in runs.values():
            run.run(args.warmup)
        times = {key: [] for key in runs}
        for _ in range(args.rounds):
            for key, run in runs.items():
                times[key].append(run.run(args.block))
        med = {key: statistics.median(t) for key, t in times.items()}
        sgd = med[("sgd", "plain")]
        for c in configs:
            plain, closure = med[(c, "plain")], med[(c, "closure")]
            print(f"| {problem_name} | {c} | {1e3 * plain:.2f} | {plain / sgd:.2f} | "
                  f"{1e3 * closure:.2f} | {closure / sgd:.2f} |")


if __name__ == "__main__":
    main()
