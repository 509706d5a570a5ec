"""K-BFGS at its defaults on the Fashion-MNIST auto-encoder: divergence counts and why (issue 19).

``counts``
    The claim of issue 19: the harness problem ``fashion-autoencoder`` (the
    K-BFGS paper's MNIST auto-encoder 784-1000-500-250-30 mirrored, batch
    1000, fed real Fashion-MNIST from ``/usr/share/datasets/fashion-mnist``)
    trained at each optimizer's default hyper-parameters for ``--steps``
    steps over ``--seeds`` seeds through the harness's own loop
    (:func:`curvlab.harness.runner.execute`). A run counts as diverged when
    the harness stops it (non-finite batch loss, or one above 10³ × the
    initial loss), when the optimizer raised a ``DivergedWarning`` (steps
    skipped in a row), or when its final training loss is not below the
    initial one. Prints one line per run and the count per optimizer.

``layers``
    Trains the harness problem with the paper's algorithm
    (``line_search=False``, default hyper-parameters) and, at the chosen
    steps, evaluates the same mini-batch along each layer's own part of the
    step and along the whole step: ``L(θ + tΔ_l) − L(θ)`` (other layers
    fixed) and ``L(θ + tΔ) − L(θ)`` for ``t ∈ {0.25, 0.5, 1, 2}`` (reported
    loss scale, i.e. summed over pixels). A block-diagonal method is right
    layer by layer when each ``Δ_l`` alone lowers the loss at ``t = 1``; the
    steps of all layers together overshoot when the whole ``Δ`` does not.

``authors``
    Runs the authors' public K-BFGS code (Ren & Bahamou,
    github.com/renyiryry/kbfgs_neurips2020_public; pass a checkout with
    ``--repo``; their files are imported, not copied) on the same training
    split, with their own model, initialisation, full-pass warm start of
    ``A`` and defaults (lr 0.3, λ 0.3, batch 1000), and prints the batch
    loss of every step until it diverges.

Usage::

    python benchmarks/kbfgs_stability.py counts --optimizers kbfgs kbfgsl --seeds 3 --steps 100
    python benchmarks/kbfgs_stability.py layers --seed 0 --at 10,20,30,35,38,40,41,42,43,44
    python benchmarks/kbfgs_stability.py authors --repo PATH --seed 0 --steps 100
"""

from __future__ import annotations

import argparse
import math
import sys
import types
import warnings

import numpy as np
import torch

import curvlab
from curvlab.harness.problems import load_problem
from curvlab.harness.runner import RunConfig, execute, prepare


def counts(args: argparse.Namespace) -> None:
    """Divergence count over seeds at default hyper-parameters, through the harness loop."""
    print(f"{args.problem}, defaults{' + ' + args.hparams if args.hparams else ''}, "
          f"{args.steps} steps, seeds 0..{args.seeds - 1}, 1 thread")
    extra = dict(kv.split("=") for kv in args.hparams.split(",")) if args.hparams else {}
    extra = {k: (v == "True" if v in ("True", "False") else float(v)) for k, v in extra.items()}
    for name in args.optimizers:
        diverged = 0
        for seed in range(args.seeds):
            cfg = RunConfig(args.problem, name, dict(extra), seed=seed, steps=args.steps,
                            eval_every=10**9, seconds=None, threads=1)
            r = execute(cfg)
            if r.status != "done":
                print(f"  {name:>13} seed {seed}: error {r.error}")
                diverged += 1
                continue
            m = r.metrics
            batch = [p.loss for p in r.curve if p.kind == "batch"]
            bad = (r.stop_reason == "diverged" or "DivergedWarning" in m.warning_kinds
                   or not m.final_loss < m.initial_loss)
            diverged += bad
            worst = max(batch) if batch else math.nan
            print(f"  {name:>13} seed {seed}: {'DIVERGED' if bad else 'ok      '} "
                  f"stop={r.stop_reason:<8} steps={m.steps:>3} train loss {m.initial_loss:.4g} -> "
                  f"{m.final_loss:.4g}, max batch loss {worst:.4g}, skipped "
                  f"{int(r.stats.get('skipped_steps', 0))}, retracted "
                  f"{int(r.stats.get('retracted_steps', 0))}, {m.step_time:.2f} s/step, "
                  f"warnings {','.join(m.warning_kinds) or '-'}")
        print(f"{name}: diverged in {diverged} of {args.seeds} seeds")


def layers(args: argparse.Namespace) -> None:
    """Per-layer and whole-step loss changes along the paper algorithm's steps."""
    hp = {"line_search": args.line_search}
    setup = prepare(RunConfig(args.problem, args.optimizer, hp, seed=args.seed, steps=args.steps,
                              eval_every=10**9))
    model, loss_fn, opt, scale = setup.model, setup.loss_fn, setup.optimizer, setup.problem.loss_scale
    lins = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    at = {int(v) for v in args.at.split(",")}
    ts = (0.25, 0.5, 1.0, 2.0)
    print(f"{args.problem}, {args.optimizer} defaults, line_search={args.line_search}, seed "
          f"{args.seed}: batch-loss change along t·Δ_l (one layer) and t·Δ (all), t = {ts}")
    warnings.simplefilter("ignore", curvlab.NonFiniteStepWarning)
    for k in range(args.steps):
        x, y = next(setup.batches)
        before = {n: [p.detach().clone() for p in m.parameters()] for n, m in lins.items()}
        loss = float(opt.step(curvlab.closure(model, loss_fn, x, y, batches=setup.fresh)).detach())
        if not math.isfinite(loss) or loss * scale > 1e5:
            print(f"step {k}: batch loss {loss * scale:.4g}: diverged")
            return
        if k not in at:
            continue
        after = {n: [p.detach().clone() for p in m.parameters()] for n, m in lins.items()}
        base = _along(model, loss_fn, x, y, lins, before, after, None, 0.0) * scale
        changes = {which: [_along(model, loss_fn, x, y, lins, before, after, which, t) * scale - base
                           for t in ts] for which in (None, *lins)}
        _along(model, loss_fn, x, y, lins, before, after, None, 1.0)  # back to θ⁺
        print(f"step {k}: L(θ) = {base:.1f}; all layers: "
              + " ".join(f"{v:+.2f}" for v in changes[None]))
        for n in lins:
            print(f"    layer {n:>3}: " + " ".join(f"{v:+.2f}" for v in changes[n]))


def _along(model, loss_fn, x, y, lins, before, after, which, t) -> float:
    """The batch loss at θ + t·Δ_which (``None``: every layer), the other layers at θ."""
    with torch.no_grad():
        for n, m in lins.items():
            f = t if which in (None, n) else 0.0
            for p, p0, p1 in zip(m.parameters(), before[n], after[n]):
                p.copy_(p0 + f * (p1 - p0))
        return float(loss_fn(model(x), y))


def authors(args: argparse.Namespace) -> None:
    """The authors' own K-BFGS loop (their train_model, without its data download) on our data."""
    sys.modules.setdefault("psutil", types.ModuleType("psutil"))  # imported, never used
    sys.path.insert(0, args.repo)
    from functions_utils import (  # the authors' modules, from --repo
        get_loss_from_z,
        get_model_grad,
        get_multiply_scalar,
        get_multiply_scalar_no_grad,
        get_plus_torch,
        get_zero_torch,
    )
    from kbfgs_utils import Kron_BFGS_update
    from models import Model_class
    from training_utils import (
        get_second_order_caches,
        train_initialization,
        update_parameter,
    )

    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    data = load_problem(args.problem).data()
    images = data.x_train.numpy().astype(np.float32)

    class Train:  # their DataSet.next_batch: in order, reshuffled each epoch
        def __init__(self, x: np.ndarray) -> None:
            self.x, self.i = x, 0

        def next_batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
            start, self.i = self.i, self.i + n
            if self.i > len(self.x):
                self.x = self.x[np.random.permutation(len(self.x))]
                start, self.i = 0, n
            return self.x[start:self.i], self.x[start:self.i]

    dataset = types.SimpleNamespace(train=Train(images))
    params = {"name_dataset": "MNIST", "name_loss": "logistic-regression-sum-loss", "if_gpu": False,
              "device": torch.device("cpu"), "algorithm": args.algorithm, "matrix_name": "EF",
              "momentum_gradient_rho": 0.9}
    model = Model_class(params)
    params.update(name_model=model.name_model, layersizes=model.layersizes,
                  layers_params=model.layers_params, numlayers=model.numlayers,
                  num_train_data=len(images), alpha=args.lr, if_second_order_algorithm=True,
                  tau=1e-5)
    config = {"N1": args.batch, "N2": args.batch, "Kron_BFGS_A_decay": 0.9,
              "Kron_LBFGS_Hg_initial": 1, "Kron_BFGS_A_LM_epsilon": np.sqrt(args.damping),
              "Kron_BFGS_H_epsilon": np.sqrt(args.damping), "Kron_BFGS_H_initial": 1,
              "Kron_BFGS_number_s_y": 100}
    state = {"model": model, "dataset": dataset}
    state, params = train_initialization(state, params, config)
    state["model_grad_momentum"] = get_zero_torch(params)
    losses = []
    for i in range(args.steps):
        params["i"] = i
        x, t = (torch.from_numpy(v) for v in dataset.train.next_batch(args.batch))
        z, a, h = model.forward(x)
        loss = get_loss_from_z(model, z, t, "mean")
        model.zero_grad()
        loss.backward()
        g = get_plus_torch(get_model_grad(model, params),
                           get_multiply_scalar_no_grad(params["tau"], model.layers_weight))
        state["model_grad_momentum"] = get_plus_torch(
            get_multiply_scalar(0.9, state["model_grad_momentum"]), get_multiply_scalar(0.1, g))
        state["model_grad_used_torch"] = state["model_grad_momentum"]
        state["X_mb"], state["t_mb"] = x, t
        state = get_second_order_caches(z, a, h, state, params)
        state, params = Kron_BFGS_update(state, params)
        model = update_parameter(state["p_torch"], model, params)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]) or losses[-1] > 1e3 * losses[0]:
            break
    verdict = f"diverged at step {len(losses) - 1}" if len(losses) < args.steps else "no divergence"
    print(f"authors' {args.algorithm}, lr {args.lr}, λ {args.damping}, batch {args.batch}, seed "
          f"{args.seed}: {verdict}")
    print(" ".join(f"{v:.1f}" for v in losses))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("counts", help="divergence counts over seeds at defaults (issue 19)")
    c.add_argument("--optimizers", nargs="+", default=["kbfgs", "kbfgsl"])
    c.add_argument("--seeds", type=int, default=3)
    c.add_argument("--hparams", default="", help="k=v,k=v for every optimizer, e.g. "
                   "line_search=False")
    c.set_defaults(run=counts)
    p = sub.add_parser("layers", help="per-layer vs whole-step loss changes (curvlab's K-BFGS)")
    p.add_argument("--optimizer", default="kbfgs")
    p.add_argument("--line-search", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--at", default="10,20,30,35,38,40,41,42,43,44")
    p.set_defaults(run=layers)
    q = sub.add_parser("authors", help="the authors' public code on the same data")
    q.add_argument("--repo", required=True, help="checkout of renyiryry/kbfgs_neurips2020_public")
    q.add_argument("--algorithm", default="K-BFGS", choices=("K-BFGS", "K-BFGS(L)"))
    q.add_argument("--lr", type=float, default=0.3)
    q.add_argument("--damping", type=float, default=0.3)
    q.add_argument("--batch", type=int, default=1000)
    q.set_defaults(run=authors)
    for s in (c, p, q):
        s.add_argument("--problem", default="fashion-autoencoder")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.run(args)


if __name__ == "__main__":
    main()
