"""Step time of the Kronecker backends against hidden width, and where inversion takes over.

Model: MLP ``784 → w → w → 10`` (ReLU, cross-entropy) on random inputs,
batch ``--batch``, for ``w`` in ``--widths``. Every optimizer runs through
the public API; the amortised step at the default schedule is assembled
from separately timed phases, so that a wide layer's rare inversion need
not be waited for ``inverse_every`` steps:

* ``plain``: a step with the periodic work switched off (K-FAC
  ``factor_every = inverse_every = 10⁹``; FOOF ``inverse_every = 10⁹,
  stats_steps = 1``) — the closure and the preconditioner product;
* ``stats``: a step that also computes the factors (K-FAC
  ``factor_every = 1``; FOOF ``stats_steps = None``);
* ``inverse``: the damped inverses of the run's factor shapes, timed with the
  library's own :func:`curvlab.curvature.inverse.damped_inverse` (Cholesky,
  as K-FAC and FOOF use it) on the factors the ``stats`` run produced.

Amortised step = plain + (stats − plain) · s + inverse / T_i, with the
defaults' factor share s (K-FAC 1/T_f, FOOF S/T) and T_i. K-BFGS and
K-BFGS(L) do the same work every step (no inversion after the first step)
and are timed as they are. The last columns give the share of the
amortised step spent in inversion and the ``inverse_every`` that keeps it
at 10 %. Medians of ``--rounds`` interleaved rounds of ``--steps`` steps.

Usage::

    python benchmarks/width_scaling.py --widths 256 512 1024 2048 4096 --batch 256
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

import torch
from torch import nn

import curvlab
from curvlab.curvature.inverse import damped_inverse

CONFIGS = {
    "sgd": {},
    "kfac-plain": {"factor_every": 10**9, "inverse_every": 10**9},
    "kfac-stats": {"factor_every": 1, "inverse_every": 10**9},
    "foof-plain": {"inverse_every": 10**9, "stats_steps": 1},
    "foof-stats": {"inverse_every": 10**9, "stats_steps": None},
    "kbfgs": {"lr": 0.1},
    "kbfgsl": {"lr": 0.1},
}


def mlp(width: int) -> nn.Sequential:
    """``784 → width → width → 10`` with ReLU."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 10))


def inverse_seconds(blocks: dict, keys: tuple[str, ...], repeats: int = 1) -> float:
    """Seconds of ``damped_inverse`` of every ``keys`` factor in ``blocks`` (best of ``repeats``)."""
    mats = [entry[k] for entry in blocks.values() for k in keys if k in entry]
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for M in mats:
            damped_inverse(M, 0.03)
        best = min(best, time.perf_counter() - t0)
    return best


def run_width(width: int, batch: int, steps: int, rounds: int) -> dict[str, float]:
    """Median seconds per step of every config, and the inverse times, at one width."""
    x = torch.randn(batch, 784)
    y = torch.randint(0, 10, (batch,))
    runs = {}
    for name, hp in CONFIGS.items():
        model, loss_fn = mlp(width), nn.CrossEntropyLoss()
        opt = curvlab.create(name.split("-")[0], model, loss_fn, **hp)
        runs[name] = (model, loss_fn, opt)

    def block(name: str, n: int) -> float:
        model, loss_fn, opt = runs[name]
        t0 = time.perf_counter()
        for _ in range(n):
            opt.step(curvlab.closure(model, loss_fn, x, y))
        return (time.perf_counter() - t0) / n

    for name in runs:
        block(name, 1)  # first step: factors, first inverses, allocations
    times: dict[str, list[float]] = {name: [] for name in runs}
    inv: dict[str, list[float]] = {"kfac": [], "foof": []}
    for _ in range(rounds):
        for name in runs:
            times[name].append(block(name, steps))
        inv["kfac"].append(inverse_seconds(runs["kfac-stats"][2].curv_state["blocks"], ("A", "G")))
        inv["foof"].append(inverse_seconds(runs["foof-stats"][2].curv_state["blocks"], ("A",)))
    out = {name: statistics.median(t) for name, t in times.items()}
    out.update({f"{k}-inverse": statistics.median(v) for k, v in inv.items()})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", nargs="+", type=int, default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    kfac = curvlab.create("kfac", mlp(8), nn.CrossEntropyLoss()).param_groups[0]
    foof = curvlab.create("foof", mlp(8), nn.CrossEntropyLoss()).param_groups[0]
    tf, ti = kfac["factor_every"], kfac["inverse_every"]
    share_foof = (foof["stats_steps"] or foof["inverse_every"]) / foof["inverse_every"]
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, "
          f"median of {args.rounds} rounds × {args.steps} steps; K-FAC T_f={tf}, T_i={ti}; "
          f"FOOF T={foof['inverse_every']}, S={foof['stats_steps']}\n")
    print("| width | SGD ms | K-FAC ms (× SGD) | K-FAC inverse ms | K-FAC inverse share | "
          "K-FAC T_i for 10 % | FOOF ms (× SGD) | FOOF inverse ms | FOOF inverse share | "
          "FOOF T for 10 % | K-BFGS ms (× SGD) | K-BFGS(L) ms (× SGD) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for width in args.widths:
        t = run_width(width, args.batch, args.steps, args.rounds)
        sgd = t["sgd"]
        rows = [f"{width}", f"{1e3 * sgd:.1f}"]
        for name, share, period in (("kfac", 1 / tf, ti), ("foof", share_foof,
                                                           foof["inverse_every"])):
            base = t[f"{name}-plain"] + max(t[f"{name}-stats"] - t[f"{name}-plain"], 0) * share
            amort = base + t[f"{name}-inverse"] / period
            frac = t[f"{name}-inverse"] / period / amort
            need = math.ceil(t[f"{name}-inverse"] / (base / 9))  # inverse/T ≤ 10 % of the step
            rows += [f"{1e3 * amort:.1f} ({amort / sgd:.2f}×)", f"{1e3 * t[f'{name}-inverse']:.1f}",
                     f"{100 * frac:.0f} %", f"{need}"]
        rows += [f"{1e3 * t[n]:.1f} ({t[n] / sgd:.2f}×)" for n in ("kbfgs", "kbfgsl")]
        print("| " + " | ".join(rows) + " |", flush=True)


if __name__ == "__main__":
    main()
