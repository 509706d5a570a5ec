"""The ``curvlab`` command line: ``list``, ``info``, ``compare``, ``ablate``, ``report``.

Every sub-command validates its input and fails with one line on stderr
(``curvlab: error: …``) and exit code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "main"]

EXAMPLES = """\
examples:
  curvlab list --all                       optimizers (also those needing extras) and problems
  curvlab list --verify                    import every plugin, report broken ones
  curvlab info kfac                        hyper-parameters, paper, supported layers
  curvlab compare --problem digits-mlp --optimizers all
  curvlab compare --problem digits-autoencoder --optimizers kfac,kbfgs,adam --tune --seeds 3
  curvlab compare --problem quadratic --optimizers sgd,adam --steps 200 --hp adam.lr=0.01
  curvlab ablate --problem digits-mlp --optimizer sgd --hparam lr --values 0.3,0.1,0.03
  curvlab report --store curvlab-results.sqlite --out curvlab-report
  curvlab report --store curvlab-results.sqlite --profile --measure steps --out curvlab-report
"""


class _CliError(Exception):
    """A user error reported as one line."""


def _budget(kind: type) -> Any:
    def parse(text: str) -> Any:
        if text.strip().lower() == "none":
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {kind.__name__} or 'none': {text!r}") from None

    return parse


def _hp_pairs(items: list[str], default_opt: str | None = None) -> dict[str, dict[str, Any]]:
    """``opt.name=value`` (or ``name=value`` with ``default_opt``) → {opt: {name: raw value}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        if "=" not in item:
            raise _CliError(f"--hp expects NAME=VALUE (e.g. adam.lr=0.01), got {item!r}")
        left, value = item.split("=", 1)
        if "." in left:
            opt, name = left.split(".", 1)
        elif default_opt is not None:
            opt, name = default_opt, left
        else:
            raise _CliError(f"--hp needs OPTIMIZER.NAME=VALUE, got {item!r}")
        out.setdefault(opt, {})[name] = value
    return out


def _typed(hps: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    from curvlab.harness.compare import _parse_value

    return {opt: {k: _parse_value(opt, k, v) for k, v in d.items()} for opt, d in hps.items()}


def _add_run_options(p: argparse.ArgumentParser) -> None:
    from curvlab.harness.compare import DEFAULT_BUDGET

    p.add_argument("--problem", required=True, help="problem name (see `curvlab list`)")
    g = p.add_argument_group("budget and evaluation")
    g.add_argument("--steps", type=_budget(int), default=DEFAULT_BUDGET["steps"],
                   help="steps per run, or 'none' (default %(default)s)")
    g.add_argument("--seconds", type=_budget(float), default=DEFAULT_BUDGET["seconds"],
                   help="training seconds per run (safety cap), or 'none' (default %(default)s)")
    g.add_argument("--eval-every", type=int, default=DEFAULT_BUDGET["eval_every"],
                   help="evaluate every N steps, not timed (default %(default)s)")
    g.add_argument("--seeds", type=int, default=1, help="seeds per final run (default 1)")
    g.add_argument("--target", type=float, default=None,
                   help="train-loss target for time-to-target (default: the problem's)")
    g = p.add_argument_group("hardware and data")
    g.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    g.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    g.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    g.add_argument("--small", action="store_true", help="the problem's small (CI) variant")
    g.add_argument("--data-dir", default=None, help="folder with data files (mnist-* problems)")
    g = p.add_argument_group("execution and output")
    g.add_argument("--store", default="curvlab-results.sqlite",
                   help="SQLite results store (default %(default)s); finished runs are reused")
    g.add_argument("--report", default="curvlab-report",
                   help="report folder (default %(default)s); 'none' to skip")
    g.add_argument("--executor", default="process", choices=("process", "serial", "ray"),
                   help="process pool (default), in-process, or Ray (pip install 'curvlab[ray]')")
    g.add_argument("--jobs", type=int, default=1, help="parallel runs (default 1)")
    g.add_argument("--name", default=None, help="comparison id (default: hash of the settings)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``curvlab`` command.

    Example:
        >>> build_parser().parse_args(["info", "sgd"]).name
        'sgd'
    """
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="curvlab", formatter_class=fmt, epilog=EXAMPLES,
        description="Second-order optimizers for PyTorch: list, describe and compare them.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("list", help="optimizers and problems", formatter_class=fmt,
                       epilog="examples:\n  curvlab list\n  curvlab list --all\n  curvlab list --verify\n")
    p.add_argument("--all", action="store_true", help="also names whose extras are not installed")
    p.add_argument("--verify", action="store_true",
                   help="import every plugin and report broken ones (exit 1 if any)")
    p = sub.add_parser("info", help="describe an optimizer or a problem", formatter_class=fmt,
                       epilog="examples:\n  curvlab info kfac\n  curvlab info digits-mlp\n")
    p.add_argument("name")
    p = sub.add_parser("compare", help="compare optimizers on a problem", formatter_class=fmt,
                       epilog=EXAMPLES)
    p.add_argument("--optimizers", nargs="+", default=["all"],
                   help="names (space- or comma-separated) or 'all' (default)")
    p.add_argument("--tune", action=argparse.BooleanOptionalAction, default=False,
                   help="grid-search each optimizer's schema grid first (default off)")
    p.add_argument("--select", default="loss", choices=("loss", "time"),
                   help="tuning criterion: final train loss or time to target")
    p.add_argument("--hp", action="append", default=[], metavar="OPT.NAME=VALUE",
                   help="fix a hyper-parameter (repeatable), e.g. adam.lr=0.01")
    _add_run_options(p)
    p = sub.add_parser("ablate", help="vary one hyper-parameter of one optimizer",
                       formatter_class=fmt, epilog=EXAMPLES)
    p.add_argument("--optimizer", required=True)
    p.add_argument("--hparam", required=True, help="the hyper-parameter to vary")
    p.add_argument("--values", default=None,
                   help="comma-separated values (default: the schema grid / choices)")
    p.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                   help="fix another hyper-parameter (repeatable)")
    _add_run_options(p)
    p = sub.add_parser("report", help="write the report of a stored comparison",
                       formatter_class=fmt,
                       epilog="examples:\n  curvlab report --store curvlab-results.sqlite --out rep\n"
                              "  curvlab report --store curvlab-results.sqlite --profile "
                              "--measure seconds --out rep\n")
    p.add_argument("--store", default="curvlab-results.sqlite")
    p.add_argument("--comparison", default=None, help="comparison id (default: the latest)")
    p.add_argument("--out", default="curvlab-report", help="report folder")
    g = p.add_argument_group("performance profiles across problems (Dolan-More)")
    g.add_argument("--profile", action="store_true",
                   help="write a performance profile of the stored comparisons instead")
    g.add_argument("--measure", default="steps", choices=("steps", "seconds", "loss"),
                   help="cost: steps or seconds to the target, or final train loss (default steps)")
    g.add_argument("--comparisons", default=None,
                   help="comma-separated comparison ids (default: all in the store)")
    g.add_argument("--taus", default="1,2,4,8,16",
                   help="comma-separated tau values of the rho table (default %(default)s)")
    return parser


def _cmd_list(args: argparse.Namespace) -> int:
    import curvlab
    from curvlab.harness.problems import available_problems

    status = 0
    print("optimizers:")
    if args.verify:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ok = curvlab.available(verify=True)
        for name in ok:
            print(f"  {name:<16} {curvlab.info(name).summary}")
        for w in caught:
            if issubclass(w.category, curvlab.PluginWarning):
                print(f"  BROKEN: {w.message}")
                status = 1
    else:
        for name in curvlab.available():
            print(f"  {name}")
    if args.all:
        for name, missing in sorted(curvlab.unavailable().items()):
            print(f"  {name:<16} unavailable: needs `pip install curvlab[peers]` ({', '.join(missing)})")
    print("problems:")
    for name in available_problems():
        print(f"  {name}")
    return status


def _cmd_info(args: argparse.Namespace) -> int:
    import curvlab
    from curvlab.harness.problems import available_problems, load_problem
    from curvlab.registry import normalize

    if normalize(args.name) in available_problems():
        print(load_problem(args.name).describe())
        return 0
    print(curvlab.info(args.name).describe())
    return 0


def _common_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"steps": args.steps, "seconds": args.seconds, "eval_every": args.eval_every,
            "seeds": args.seeds, "target": args.target, "device": args.device,
            "dtype": args.dtype, "threads": args.threads, "small": args.small,
            "data_dir": args.data_dir, "store": args.store, "executor": args.executor,
            "jobs": args.jobs, "progress": not args.no_progress and sys.stderr.isatty(),
            "name": args.name}


def _finish(comp: Any, report: str | None) -> int:
    from curvlab.harness.report import markdown_table

    rows = comp.summary()
    print(markdown_table(rows, comp.spec["seeds"]))
    if report and report.lower() != "none":
        paths = comp.report(report)
        print(f"report: {paths[0].parent} ({', '.join(p.name for p in paths)})")
    print(f"comparison {comp.id} stored in {comp.store.path}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from curvlab.harness.compare import compare, resolve_optimizers

    names = resolve_optimizers(",".join(args.optimizers))
    hps = _typed(_hp_pairs(args.hp))
    comp = compare(args.problem, names, tune=args.tune, select=args.select, hparams=hps,
                   **_common_kwargs(args))
    return _finish(comp, args.report)


def _cmd_ablate(args: argparse.Namespace) -> int:
    from curvlab.harness.compare import ablate

    values = [v for v in args.values.split(",")] if args.values else None
    fixed = _typed(_hp_pairs(args.hp, default_opt=args.optimizer)).get(args.optimizer, {})
    comp = ablate(args.problem, args.optimizer, args.hparam, values, hparams=fixed,
                  **_common_kwargs(args))
    return _finish(comp, args.report)


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from curvlab.harness.compare import Comparison
    from curvlab.harness.store import Store

    if not Path(args.store).is_file():
        raise _CliError(f"results store {args.store!r} does not exist")
    store = Store(args.store)
    if args.profile:
        return _profile(store, args)
    cid, spec = store.comparison(args.comparison)
    return _finish(Comparison(cid, store, spec), args.out)


def _profile(store: Any, args: argparse.Namespace) -> int:
    from curvlab.harness.profiles import performance_profile, profile_table, write_profile

    try:
        taus = [float(t) for t in args.taus.split(",") if t.strip()]
    except ValueError:
        raise _CliError(f"--taus expects comma-separated numbers, got {args.taus!r}") from None
    if not taus or any(not t >= 1 for t in taus):
        raise _CliError(f"--taus values must be >= 1, got {args.taus!r}")
    ids = [c.strip() for c in args.comparisons.split(",") if c.strip()] if args.comparisons else None
    prof = performance_profile(store, ids, args.measure)
    print(profile_table(prof, taus))
    paths = write_profile(prof, args.out, taus)
    print(f"profile: {paths[0].parent} ({', '.join(p.name for p in paths)})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``curvlab`` console script; returns the exit code.

    Example:
        >>> main(["info", "no-such-optimizer"])
        2
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"list": _cmd_list, "info": _cmd_info, "compare": _cmd_compare,
                "ablate": _cmd_ablate, "report": _cmd_report}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        previous = warnings.showwarning

        def one_line(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
            print(f"curvlab: warning: {message}", file=sys.stderr)

        warnings.showwarning = one_line
        try:
            return handlers[args.command](args)
        except (_CliError, ValueError, FileNotFoundError, KeyError, OSError) as err:
            text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            print(f"curvlab: error: {text}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("curvlab: interrupted; finished runs are stored, re-run to resume", file=sys.stderr)
            return 130
        finally:
            warnings.showwarning = previous


if __name__ == "__main__":
    sys.exit(main())
