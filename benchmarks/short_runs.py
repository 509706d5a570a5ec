"""Short training runs: final training loss of optimizer configurations on one problem.

Not a test and not a tuning study: a fixed, small budget per configuration,
the problem's own seeded batches, the training loss on the problem's fixed
evaluation subset at a few checkpoints. Used for the measurements behind
K-FAC's and FOOF's defaults (the Conv2d convention, the fallback for
parameters no curvature block covers); the commands and tables are in
``docs/backends/kfac.rst``.

Usage::

    python benchmarks/short_runs.py --problem digits-cnn --steps 300 \
        --run kfac --run kfac:kfac_approx=reduce --run sgd:lr=0.1,momentum=0.9
    python benchmarks/short_runs.py --problem nanogpt --steps 300 \
        --run kfac:fallback=adam --run kfac:fallback=sgd

``--run NAME[:key=value,...]`` adds one configuration (values parsed as
numbers, ``true``/``false``, ``none``, or ``a/b`` for a pair). Problems are
the harness's (``curvlab list``; ``--small`` for the small variants) and
``nanogpt``: the text-transformer's data with a nanoGPT-layout model (tied
token embedding / ``lm_head``, positions as an ``nn.Parameter``), whose
embedding matrix and positions no Kronecker block covers.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import torch
from torch import nn

import curvlab
from curvlab.harness.problems import BatchStream, load_problem
from curvlab.harness.problems.transformer import Block


class NanoGPT(nn.Module):
    """nanoGPT's layout: tied ``wte``/``lm_head``, learned positions as a bare parameter."""

    def __init__(self, vocab: int = 256, context: int = 32, layers: int = 1, d_model: int = 32,
                 heads: int = 2) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d_model)
        self.wpe = nn.Parameter(torch.zeros(context, d_model))
        self.blocks = nn.Sequential(*(Block(d_model, heads, context) for _ in range(layers)))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        h = self.wte(tokens) + self.wpe[:t]
        return self.lm_head(self.ln_f(self.blocks(h))).transpose(1, 2)


def parse_value(text: str) -> object:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    if "/" in text:
        return tuple(float(x) for x in text.split("/"))
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def parse_run(text: str) -> tuple[str, dict[str, object]]:
    name, _, rest = text.partition(":")
    hp = {}
    for pair in filter(None, rest.split(",")):
        key, _, value = pair.partition("=")
        hp[key] = parse_value(value)
    return name, hp


def setup(problem_name: str, small: bool):
    if problem_name == "nanogpt":
        problem = load_problem("text-transformer", small=True)
        arch = dict(problem.architecture)

        def build(seed: int) -> nn.Module:
            torch.manual_seed(seed)
            return NanoGPT(context=arch["context"], layers=arch["layers"],
                           d_model=arch["d_model"], heads=arch["heads"])
    else:
        problem = load_problem(problem_name, small=small)
        build = problem.init_model
    return problem, build


def run(problem, build, data, name, hp, steps, checkpoints, seed):
    model = build(seed)
    loss_fn = problem.loss_fn()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.manual_seed(seed)  # the optimizer's private streams are seeded from the global RNG
        opt = curvlab.create(name, model, loss_fn, **hp)
        stream = BatchStream(data.x_train, data.y_train, problem.batch_size, seed)
        fresh = BatchStream(data.x_train, data.y_train, problem.batch_size, seed + 1)
        x_eval, y_eval = problem.evaluation_subset(data)
        out = {}
        start = time.perf_counter()
        for step in range(1, steps + 1):
            x, y = next(stream)
            opt.step(curvlab.closure(model, loss_fn, x, y, batches=fresh))
            if step in checkpoints:
                out[step] = problem.evaluate(model, x_eval, y_eval).loss
        seconds = time.perf_counter() - start
    kinds = {}
    for w in caught:
        kinds[w.category.__name__] = kinds.get(w.category.__name__, 0) + 1
    return out, seconds, opt.stats.get("skipped_steps", 0), kinds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problem", required=True)
    parser.add_argument("--small", action="store_true", help="the problem's small variant")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--checkpoints", type=int, default=3, help="evaluations (evenly spaced)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--run", action="append", required=True, metavar="NAME[:k=v,...]")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    problem, build = setup(args.problem, args.small)
    data = problem.data()
    checkpoints = sorted({max(1, round(args.steps * (i + 1) / args.checkpoints))
                          for i in range(args.checkpoints)})
    print(f"problem {args.problem}{' (small)' if args.small else ''}, {args.steps} steps, "
          f"batch {problem.batch_size}, seeds {args.seeds}, torch {torch.__version__}, "
          f"{args.threads} thread(s)\n")
    print("| run | " + " | ".join(f"loss @ {c}" for c in checkpoints)
          + " | s | skipped | warnings |")
    print("|---|" + "---:|" * len(checkpoints) + "---:|---:|---|")
    for text in args.run:
        name, hp = parse_run(text)
        for seed in args.seeds:
            try:
                losses, seconds, skipped, kinds = run(problem, build, data, name, hp, args.steps,
                                                      checkpoints, seed)
            except ValueError as err:
                print(f"| {text} (seed {seed}) | refused: {err} |")
                continue
            cells = " | ".join(f"{losses[c]:.4f}" if math.isfinite(losses[c]) else "nan"
                               for c in checkpoints)
            warn = ", ".join(f"{k} ×{n}" for k, n in sorted(kinds.items())) or "-"
            print(f"| {text} (seed {seed}) | {cells} | {seconds:.1f} | {skipped} | {warn} |",
                  flush=True)


if __name__ == "__main__":
    main()
