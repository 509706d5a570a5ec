"""Step time of each optimizer relative to SGD, measured in the same run.

For every problem, the optimizers take turns: each round, every optimizer
runs a block of ``--block`` steps (long enough to amortise periodic work
such as K-FAC's inverses or GroupedNewton's tensors) on the problem's own
seeded batches, and the block's wall time per step is recorded. Rounds are
interleaved so that background load hits every optimizer alike; the report
uses the median over rounds. Ratios are per-step time / SGD's per-step time.

Usage::

    python benchmarks/step_time.py                              # defaults below
    python benchmarks/step_time.py --problems digits-mlp --optimizers kfac foof \
        --block 100 --rounds 5 --hparams kfac:factor_every=5,inverse_every=50
    python benchmarks/step_time.py --optimizers all --csv docs/results/step_time.csv

Prints a markdown table. Targets from the issues (amortised, 2 CPU cores):
K-FAC <= 1.5x and FOOF <= 1.3x on digits MLP/CNN; K-BFGS <= 2.2x on the digits
auto-encoder; GroupedNewton <= 3x on digits MLP at period 10.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time

import torch

import curvlab
from curvlab.harness.problems import BatchStream, load_problem

DEFAULT_PROBLEMS = ["digits-mlp", "digits-cnn", "digits-autoencoder"]
DEFAULT_OPTIMIZERS = ["sgd", "adam", "kfac", "foof", "kbfgs", "kbfgsl", "groupednewton"]


def parse_hparams(items: list[str]) -> dict[str, dict[str, float]]:
    """``name:key=value,key=value`` → {name: {key: value}} (numbers parsed, else strings)."""
    out: dict[str, dict[str, object]] = {}
    for item in items:
        name, _, rest = item.partition(":")
        for pair in filter(None, rest.split(",")):
            key, _, value = pair.partition("=")
            try:
                parsed: object = int(value) if value.isdigit() else float(value)
            except ValueError:
                parsed = {"true": True, "false": False}.get(value.lower(), value)
            out.setdefault(curvlab.normalize(name), {})[key] = parsed
    return out


class Contestant:
    """One optimizer on one problem, with its own model copy and batch stream."""

    def __init__(self, name, problem, data, hparams, seed=0):
        self.name = name
        self.model = problem.init_model(seed)
        self.loss_fn = problem.loss_fn()
        self.stream = BatchStream(data.x_train, data.y_train, problem.batch_size, seed)
        self.fresh = BatchStream(data.x_train, data.y_train, problem.batch_size, seed + 1)
        self.opt = curvlab.create(name, self.model, self.loss_fn, **hparams)

    def run(self, steps: int) -> float:
        """Seconds per step over ``steps`` steps."""
        start = time.perf_counter()
        for _ in range(steps):
            x, y = next(self.stream)
            self.opt.step(curvlab.closure(self.model, self.loss_fn, x, y, batches=self.fresh))
        return (time.perf_counter() - start) / steps


def bench_problem(problem_name, optimizers, hparams, block, rounds, warmup):
    """Median seconds per step for every optimizer that supports the problem."""
    problem = load_problem(problem_name)
    data = problem.load_data()
    contestants, skipped = {}, {}
    for name in optimizers:
        try:
            contestants[name] = Contestant(name, problem, data, hparams.get(name, {}))
        except ValueError as err:  # unsupported layer / loss
            skipped[name] = str(err).split(";")[0]
    for c in contestants.values():
        c.run(warmup)
    times = {name: [] for name in contestants}
    for _ in range(rounds):
        for name, c in contestants.items():
            times[name].append(c.run(block))
    return {name: statistics.median(t) for name, t in times.items()}, skipped


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", nargs="+", default=DEFAULT_PROBLEMS)
    parser.add_argument("--optimizers", nargs="+", default=DEFAULT_OPTIMIZERS)
    parser.add_argument("--hparams", nargs="*", default=[], help="name:key=value,...")
    parser.add_argument("--block", type=int, default=100,
                        help="steps per timed block (100 amortises FOOF's T=100, K-FAC's 50)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--csv", default=None,
                        help="also write the rows to this CSV file (docs/results/step_time.csv "
                             "is the one the docs read)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [curvlab.normalize(n) for n in args.optimizers]
    if names == ["all"]:
        names = curvlab.available()
    if "sgd" not in names:
        names.insert(0, "sgd")
    hparams = parse_hparams(args.hparams)
    print(f"torch {torch.__version__}, {args.threads} thread(s), block {args.block}, "
          f"{args.rounds} rounds (median)\n")
    print("| problem | optimizer | ms/step | × SGD |")
    print("|---|---|---:|---:|")
    rows = []
    for problem_name in args.problems:
        med, skipped = bench_problem(problem_name, names, hparams, args.block, args.rounds,
                                     args.warmup)
        for name, sec in med.items():
            print(f"| {problem_name} | {name} | {1e3 * sec:.2f} | {sec / med['sgd']:.2f} |")
            rows.append({"problem": problem_name, "optimizer": name,
                         "ms_per_step": f"{1e3 * sec:.4g}", "ratio_vs_sgd": f"{sec / med['sgd']:.4g}",
                         "unsupported": ""})
        for name, why in skipped.items():
            print(f"| {problem_name} | {name} | unsupported: {why} | |")
            rows.append({"problem": problem_name, "optimizer": name, "ms_per_step": "",
                         "ratio_vs_sgd": "", "unsupported": why})
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
