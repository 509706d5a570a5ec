"""Compare optimizers on the built-in digits MLP with the harness (small budget).

Every optimizer gets the same initial weights, data order, device, dtype and
budget; runs are stored in SQLite keyed by a hash of their configuration, so
re-running the script resumes instead of starting over. The same comparison
from the shell::

    curvlab compare --problem digits-mlp --optimizers sgd,adam,kfac,foof --steps 200 \
        --report results/

Run::

    python examples/compare_digits.py                       # 200 steps, 4 optimizers
    python examples/compare_digits.py --steps 50 --report out/

``CURVLAB_EXAMPLE_STEPS`` overrides the default number of steps.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

from curvlab.harness import RunSettings, compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", nargs="+", default=["sgd", "adam", "kfac", "foof"])
    parser.add_argument("--steps", type=int, default=int(os.environ.get("CURVLAB_EXAMPLE_STEPS", 200)))
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--store", default=None, help="SQLite results store (default: temporary)")
    parser.add_argument("--report", default=None, help="folder for markdown/CSV tables and plots")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or str(Path(tmp) / "results.sqlite")
        settings = RunSettings(  # what every run shares, built once
            steps=args.steps,
            seconds=None,  # a pure step budget: identical work for every optimizer
            eval_every=max(1, args.steps // 4),
            seeds=args.seeds,
            store=store,
            executor="serial",
        )
        comparison = compare("digits-mlp", args.optimizers, settings=settings)
        rows = comparison.summary()
        print(f"{'optimizer':<14}{'val loss':>10}{'test acc':>10}{'cost (SGD steps)':>18}")
        for row in sorted(rows, key=lambda r: _finite(r.get("val_loss"))):
            print(  # medians over seeds; cost = step time in reference (plain SGD) steps
                f"{row['label']:<14}{_fmt(row.get('val_loss')):>10}"
                f"{_fmt(row.get('test_acc'), pct=True):>10}{_fmt(row.get('step_cost')):>18}"
            )
        if args.report:
            for path in comparison.report(args.report):
                print("wrote", path)


def _finite(v) -> float:
    return v if isinstance(v, (int, float)) and math.isfinite(v) else math.inf


def _fmt(v, pct: bool = False) -> str:
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return "-"
    return f"{v:.1%}" if pct else f"{v:.4f}"


if __name__ == "__main__":
    main()
