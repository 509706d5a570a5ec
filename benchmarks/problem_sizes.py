"""Size and cost of each benchmark problem: parameters, splits, data loading, SGD step, evaluation.

For every problem: the number of parameters, the train/val/test/eval sizes,
the time to load its data (first call in the process, then a second call
that hits the IDX cache), the median wall time of a plain SGD step on its
seeded mini-batches, and the time of one evaluation pass over the training
evaluation subset plus the validation set (what the harness does every
``eval_every`` steps).

Usage::

    python benchmarks/problem_sizes.py                       # the real-data problems, 1 thread
    python benchmarks/problem_sizes.py --problems fashion-mlp --steps 20 --threads 2

Problems whose data are missing are listed with the one-line reason. Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import curvlab
from curvlab.harness.data import DataNotFoundError
from curvlab.harness.problems import BatchStream, load_problem

DEFAULT = ["fashion-mlp", "fashion-autoencoder", "fashion-cnn", "text-transformer",
           "mnist-mlp", "digits-mlp"]


def measure(name: str, steps: int, small: bool) -> list[str]:
    """One table row for problem ``name``."""
    problem = load_problem(name, small=small)
    t0 = time.perf_counter()
    data = problem.data()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    problem.data()
    again = time.perf_counter() - t0
    model, loss_fn = problem.init_model(0), problem.loss_fn()
    opt = curvlab.create("sgd", model, loss_fn, lr=0.01)
    stream = BatchStream(data.x_train, data.y_train, problem.batch_size, 0)
    times = []
    for i in range(steps + 2):
        x, y = next(stream)
        t0 = time.perf_counter()
        opt.step(curvlab.closure(model, loss_fn, x, y))
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - t0)
    xe, ye = problem.evaluation_subset(data)
    t0 = time.perf_counter()
    problem.evaluate(model, xe, ye)
    problem.evaluate(model, data.x_val, data.y_val)
    evaluation = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    step = statistics.median(times)
    return [name, f"{n_params:,}", f"{data.n_train}/{data.n_val}/{data.n_test}",
            str(problem.resolved_eval_size(data.n_train)), str(problem.batch_size),
            f"{first:.2f} / {again:.2f}", f"{1000 * step:.1f}", f"{evaluation:.2f}",
            f"{evaluation / step:.0f}"]


def main() -> None:
    """Parse the arguments and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=DEFAULT)
    parser.add_argument("--steps", type=int, default=10, help="timed SGD steps (median)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--small", action="store_true", help="the --small variants")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    head = ["problem", "parameters", "train/val/test", "eval rows", "batch", "load s (first / cached)",
            "SGD step ms", "eval s", "eval / step"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name in args.problems:
        try:
            row = measure(name, args.steps, args.small)
        except DataNotFoundError as err:
            row = [name, f"skipped: {err}"] + [""] * (len(head) - 2)
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
