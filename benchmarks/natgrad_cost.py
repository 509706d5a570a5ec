r"""Cost of one natgrad step: ms/step against SGD and peak memory, by parameters × batch.

Each configuration runs in a fresh Python process (so that its peak resident
memory is its own): the model is built, one SGD step and one natgrad step are
taken to warm up, then ``--steps`` steps of each are timed alternately and the
medians reported. ``peak MiB`` is the growth of the process's peak resident
set size (``ru_maxrss``) over the warm-up SGD step, i.e. what natgrad's
step adds; ``U MiB`` is the size of the column matrix :math:`U` alone
(``N·K·P`` numbers in float32), what the generic per-example path would
store; ``Linear`` layers keep only their inputs and output gradients.

Models: ``digits`` is the digits MLP 64-128-64-10 (17,226 parameters);
``mlp100k`` is an MLP 784-128-10 (101,770 parameters, Fashion-MNIST-sized
inputs); ``mlp400k`` is 784-512-10 (407,050); ``logreg`` is multinomial
logistic regression 784-10 (7,850; Benzing's one-layer case, where with
``N·K >= P`` the :math:`P \times P` system is solved instead of the Gram one). Inputs are random (the cost
does not depend on the data); the loss is mean cross-entropy over 10 classes.

Usage::

    python benchmarks/natgrad_cost.py                       # the table in docs/backends/natgrad.rst
    python benchmarks/natgrad_cost.py --models digits --batches 32 100 --fisher mc true
    python benchmarks/natgrad_cost.py --one digits 100 true full   # one configuration (internal)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

import curvlab

MODELS = {
    "digits": (64, [128, 64], 10),
    "mlp100k": (784, [128], 10),
    "mlp400k": (784, [512], 10),
    "logreg": (784, [], 10),
}


def build(name: str) -> nn.Module:
    d_in, hidden, classes = MODELS[name]
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(d_in, h), nn.ReLU()]
        d_in = h
    return nn.Sequential(*layers, nn.Linear(d_in, classes))


def measure(model_name: str, batch: int, fisher: str, structure: str, steps: int) -> dict:
    """One configuration (run inside its own process)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    d_in, _, classes = MODELS[model_name]
    x, y = torch.randn(batch, d_in), torch.randint(0, classes, (batch,))
    loss_fn = nn.CrossEntropyLoss()
    sgd_model, ng_model = build(model_name), build(model_name)
    params = sum(p.numel() for p in ng_model.parameters())
    sgd = curvlab.create("sgd", sgd_model, loss_fn, lr=0.01)
    ng = curvlab.create("natgrad", ng_model, loss_fn, lr=0.01, damping=1.0, fisher_type=fisher,
                        block_diagonal=structure == "block", max_columns=10**6)
    sgd.step(curvlab.closure(sgd_model, loss_fn, x, y))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ng.step(curvlab.closure(ng_model, loss_fn, x, y))
    times: dict[str, list[float]] = {"sgd": [], "natgrad": []}
    for _ in range(steps):
        for name, opt, model in (("sgd", sgd, sgd_model), ("natgrad", ng, ng_model)):
            t0 = time.perf_counter()
            opt.step(curvlab.closure(model, loss_fn, x, y))
            times[name].append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    k = classes if fisher == "true" else 1
    return {
        "model": model_name, "params": params, "batch": batch, "fisher": fisher,
        "structure": structure, "columns": batch * k,
        "sgd_ms": 1e3 * statistics.median(times["sgd"]),
        "natgrad_ms": 1e3 * statistics.median(times["natgrad"]),
        "peak_mib": (peak - base) / 1024, "u_mib": batch * k * params * 4 / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits", "mlp100k", "mlp400k"])
    parser.add_argument("--batches", nargs="+", type=int, default=[32, 100, 256])
    parser.add_argument("--fisher", nargs="+", default=["mc", "true"])
    parser.add_argument("--structures", nargs="+", default=["full"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max-columns-true", type=int, default=2560,
                        help="skip true-Fisher configurations with more Gram columns N·K")
    parser.add_argument("--one", nargs=4, metavar=("MODEL", "BATCH", "FISHER", "STRUCTURE"))
    args = parser.parse_args()
    if args.one:
        model, batch, fisher, structure = args.one
        print(json.dumps(measure(model, int(batch), fisher, structure, args.steps)))
        return
    print("| model | P | N | Fisher | blocks | N·K | P·N | SGD ms | natgrad ms | × SGD "
          "| peak MiB | dense U MiB |")
    print("|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for model in args.models:
        for batch in args.batches:
            for fisher in args.fisher:
                if fisher == "true" and batch * 10 > args.max_columns_true:
                    continue
                for structure in args.structures:
                    out = subprocess.run(
                        [sys.executable, __file__, "--steps", str(args.steps), "--one", model,
                         str(batch), fisher, structure],
                        capture_output=True, text=True, check=True,
                    )
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    print(f"| {r['model']} | {r['params']} | {r['batch']} | {r['fisher']} | "
                          f"{r['structure']} | {r['columns']} | {r['params'] * r['batch']:.2e} | "
                          f"{r['sgd_ms']:.2f} | {r['natgrad_ms']:.0f} | "
                          f"{r['natgrad_ms'] / r['sgd_ms']:.0f} | {r['peak_mib']:.0f} | "
                          f"{r['u_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
