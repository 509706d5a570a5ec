"""The ``curvlab`` command line: ``list``, ``info``, ``compare``, ``ablate``, ``report``.

The options shared by ``compare`` and ``ablate`` (budget, seeds, target,
device, dtype, threads, store, executor, ...) are derived from the fields
of :class:`~curvlab.harness.settings.RunSettings`; the command line reads
the text of each option once and builds that one settings value, which
checks it. Hyper-parameter text (``--hp kfac.lr=0.1``) is handed on as
text and parsed and checked once by the optimizer's schema
(:meth:`~curvlab.hparams.Schema.parse`).

Exit codes and errors:

- ``0`` success; ``1`` ``list --verify`` found a broken plugin;
- ``2`` bad input: one line on stderr, ``curvlab: error: …``, no traceback
  (curvlab reports every invalid input as a ``ValueError`` naming the value
  and the rule; ``--debug`` also prints the traceback);
- ``1`` with a traceback for anything else (a bug: please report it);
- ``130`` interrupted (finished runs are stored; re-run to resume);
- ``141`` (128 + SIGPIPE) when the reader of stdout went away
  (``curvlab list | head -1``), quietly, as Unix tools do.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from curvlab.harness.settings import DEFAULT_REPORT, DEFAULT_STORE, declared_settings

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

#: Exit status of a process whose stdout reader went away (128 + SIGPIPE).
EXIT_BROKEN_PIPE = 141


class _CliError(ValueError):
    """Bad command-line input found by the CLI itself (reported as one line)."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other input error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"curvlab: error: {message} (see `{self.prog} --help`)\n")


def _argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` as an argparse ``type``: its ``ValueError`` becomes argparse's one-line error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return convert


def _add_settings_arguments(p: argparse.ArgumentParser) -> None:
    """One option per :class:`RunSettings` field, grouped as declared; unset options stay unset."""
    groups: dict[str, Any] = {}
    for name, default, decl in declared_settings():
        group = groups.get(decl.group) or groups.setdefault(decl.group, p.add_argument_group(decl.group))
        flag = "--" + name.replace("_", "-")
        if decl.cli_default is not None or "default" in decl.doc or default is None:
            shown = ""
        elif isinstance(default, bool):
            shown = f" (default: {'on' if default else 'off'})"
        else:
            shown = f" (default: {default})"
        if decl.parse is None:  # an on/off switch: --x / --no-x
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=decl.doc + shown)
        else:
            metavar = "{" + ",".join(decl.choices) + "}" if decl.choices else name.upper()
            group.add_argument(flag, dest=name, type=_argument_type(decl.parse),
                               default=argparse.SUPPRESS, metavar=metavar, help=decl.doc + shown)


def _settings(args: argparse.Namespace) -> Any:
    """The :class:`RunSettings` of the given options (the rest: declared or command-line defaults)."""
    from curvlab.harness.settings import RunSettings

    given = {}
    for name, _, decl in declared_settings():
        if hasattr(args, name):
            given[name] = getattr(args, name)
        elif decl.cli_default is not None:
            given[name] = decl.cli_default()
    return RunSettings(**given)


def _hp_pairs(items: list[str], default_opt: str | None = None) -> dict[str, dict[str, str]]:
    """``opt.name=text`` (or ``name=text`` with ``default_opt``) → ``{opt: {name: text}}``; text kept."""
    out: dict[str, dict[str, str]] = {}
    for item in items or []:
        left, sep, value = item.partition("=")
        if not sep or not left.strip():
            raise _CliError(f"--hp expects NAME=VALUE (e.g. adam.lr=0.01), got {item!r}")
        if "." in left:
            opt, name = left.split(".", 1)
        elif default_opt is not None:
            opt, name = default_opt, left
        else:
            raise _CliError(f"--hp needs OPTIMIZER.NAME=VALUE, got {item!r}")
        out.setdefault(opt.strip(), {})[name.strip()] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``curvlab`` command.

    Example:
        >>> build_parser().parse_args(["info", "sgd"]).name
        'sgd'
    """
    from curvlab.harness.compare import SELECT
    from curvlab.harness.profiles import DEFAULT_TAUS, MEASURES

    fmt = argparse.RawDescriptionHelpFormatter
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print the traceback of an error too")
    parser = _Parser(
        prog="curvlab", formatter_class=fmt, epilog=EXAMPLES, parents=[common],
        description="Second-order optimizers for PyTorch: list, describe and compare them.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("list", help="optimizers and problems", formatter_class=fmt,
                       parents=[common],
                       epilog="examples:\n  curvlab list\n  curvlab list --all\n  curvlab list --verify\n")
    p.add_argument("--all", action="store_true", help="also names whose extras are not installed")
    p.add_argument("--verify", action="store_true",
                   help="import every plugin and report broken ones (exit 1 if any)")
    p = sub.add_parser("info", help="describe an optimizer or a problem", formatter_class=fmt,
                       parents=[common],
                       epilog="examples:\n  curvlab info kfac\n  curvlab info digits-mlp\n")
    p.add_argument("name")

    p = sub.add_parser("compare", help="compare optimizers on a problem", formatter_class=fmt,
                       parents=[common], epilog=EXAMPLES)
    p.add_argument("--problem", required=True, help="problem name (see `curvlab list`)")
    p.add_argument("--optimizers", nargs="+", default=["all"],
                   help="names (space- or comma-separated) or 'all' (default)")
    p.add_argument("--tune", action=argparse.BooleanOptionalAction, default=False,
                   help="grid-search each optimizer's schema grid first (default off)")
    p.add_argument("--select", default="loss", metavar="{" + ",".join(SELECT) + "}",
                   help="tuning criterion: final train loss or time to target (default loss)")
    p.add_argument("--hp", action="append", default=[], metavar="OPT.NAME=VALUE",
                   help="fix a hyper-parameter (repeatable), e.g. adam.lr=0.01")
    _add_run_arguments(p)

    p = sub.add_parser("ablate", help="vary one hyper-parameter of one optimizer",
                       formatter_class=fmt, parents=[common], epilog=EXAMPLES)
    p.add_argument("--problem", required=True, help="problem name (see `curvlab list`)")
    p.add_argument("--optimizer", required=True)
    p.add_argument("--hparam", required=True, help="the hyper-parameter to vary")
    p.add_argument("--values", default=None,
                   help="comma-separated values (default: the schema grid / choices)")
    p.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                   help="fix another hyper-parameter of the optimizer (repeatable)")
    _add_run_arguments(p)

    p = sub.add_parser("report", help="write the report of a stored comparison",
                       formatter_class=fmt, parents=[common],
                       epilog="examples:\n  curvlab report --store curvlab-results.sqlite --out rep\n"
                              "  curvlab report --store curvlab-results.sqlite --profile "
                              "--measure seconds --out rep\n")
    p.add_argument("--store", default=DEFAULT_STORE,
                   help="results store, opened read-only (default %(default)s)")
    p.add_argument("--comparison", default=argparse.SUPPRESS,
                   help="comparison id (default: the latest)")
    p.add_argument("--out", default=DEFAULT_REPORT, help="report folder (default %(default)s)")
    g = p.add_argument_group("performance profiles across problems (Dolan-More)")
    g.add_argument("--profile", action="store_true",
                   help="write a performance profile of the stored comparisons instead")
    g.add_argument("--measure", default=argparse.SUPPRESS, metavar="{" + ",".join(MEASURES) + "}",
                   help="cost: steps or seconds to the target, or final train loss (default steps)")
    g.add_argument("--comparisons", default=argparse.SUPPRESS,
                   help="comma-separated comparison ids (default: all in the store)")
    g.add_argument("--taus", default=argparse.SUPPRESS,
                   help="comma-separated tau values of the rho table "
                        f"(default {','.join(f'{t:g}' for t in DEFAULT_TAUS)})")
    return parser


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    _add_settings_arguments(p)
    p.add_argument("--report", default=DEFAULT_REPORT,
                   help="report folder (default %(default)s); 'none' to skip")


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


def _report_folder(report: str) -> str | None:
    """The ``--report`` folder, created and checked before any run (``None`` for 'none')."""
    from curvlab.harness.report import prepare_folder

    if report.strip().lower() == "none":
        return None
    prepare_folder(report)
    return report


def _finish(comp: Any, report: str | None) -> int:
    from curvlab.harness.report import markdown_table

    rows = comp.summary()
    print(markdown_table(rows, comp.spec["seeds"]))
    if report is not None:
        paths = comp.report(report)
        print(f"report: {paths[0].parent} ({', '.join(p.name for p in paths)})")
    print(f"comparison {comp.id} stored in {comp.store.path}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from curvlab.harness.compare import compare

    settings = _settings(args)
    hps = _hp_pairs(args.hp)
    report = _report_folder(args.report)
    comp = compare(args.problem, ",".join(args.optimizers), tune=args.tune, select=args.select,
                   hparams=hps, settings=settings)
    return _finish(comp, report)


def _cmd_ablate(args: argparse.Namespace) -> int:
    import curvlab
    from curvlab.harness.compare import ablate

    settings = _settings(args)
    opt = curvlab.info(args.optimizer).name
    hps = _hp_pairs(args.hp, default_opt=args.optimizer)
    for other in hps:
        if curvlab.info(other).name != opt:
            raise _CliError(f"--hp {other}.…: ablate fixes hyper-parameters of {opt} only")
    fixed = {k: v for d in hps.values() for k, v in d.items()}
    values = [v for v in args.values.split(",")] if args.values is not None else None
    if values is not None and not any(v.strip() for v in values):
        raise _CliError("--values is empty; give comma-separated values or leave it out")
    report = _report_folder(args.report)
    comp = ablate(args.problem, opt, args.hparam, values, hparams=fixed, settings=settings)
    return _finish(comp, report)


def _cmd_report(args: argparse.Namespace) -> int:
    from curvlab.harness.compare import Comparison
    from curvlab.harness.store import Store

    profile_only = [f"--{k}" for k in ("measure", "comparisons", "taus") if hasattr(args, k)]
    if profile_only and not args.profile:
        raise _CliError(f"{', '.join(profile_only)} only apply with --profile")
    if args.profile and hasattr(args, "comparison"):
        raise _CliError("--comparison selects one report; with --profile use --comparisons")
    store = Store(args.store, readonly=True)
    try:
        if args.profile:
            return _profile(store, args)
        cid, spec = store.comparison(getattr(args, "comparison", None))
        return _finish(Comparison(cid, store, spec), args.out)
    finally:
        store.close()


def _profile(store: Any, args: argparse.Namespace) -> int:
    from curvlab.harness.profiles import (
        DEFAULT_TAUS,
        performance_profile,
        profile_table,
        write_profile,
    )

    text = getattr(args, "taus", None)
    taus = list(DEFAULT_TAUS)
    if text is not None:
        try:
            taus = [float(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise _CliError(f"--taus expects comma-separated numbers, got {text!r}") from None
        if not taus or any(not t >= 1 for t in taus):
            raise _CliError(f"--taus values must be >= 1, got {text!r}")
    ids = getattr(args, "comparisons", None)
    ids = [c.strip() for c in ids.split(",") if c.strip()] if ids is not None else None
    if ids is not None and not ids:
        raise _CliError("--comparisons is empty; give comma-separated ids or leave it out")
    prof = performance_profile(store, ids, getattr(args, "measure", "steps"))
    print(profile_table(prof, taus))
    paths = write_profile(prof, args.out, taus)
    print(f"profile: {paths[0].parent} ({', '.join(p.name for p in paths)})")
    return 0


HANDLERS = {"list": _cmd_list, "info": _cmd_info, "compare": _cmd_compare,
            "ablate": _cmd_ablate, "report": _cmd_report}


def _dispatch(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        previous = warnings.showwarning

        def one_line(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
            print(f"curvlab: warning: {message}", file=sys.stderr)

        warnings.showwarning = one_line
        try:
            return HANDLERS[args.command](args)
        except BrokenPipeError:
            raise
        except KeyboardInterrupt:
            print("curvlab: interrupted; finished runs are stored, re-run to resume", file=sys.stderr)
            return 130
        except ValueError as err:  # bad input, by curvlab's contract
            if debug:
                traceback.print_exc()
            text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            print(f"curvlab: error: {text}", file=sys.stderr)
            return 2
        except Exception as err:  # noqa: BLE001 - a bug: show where
            traceback.print_exc()
            print(f"curvlab: internal error ({type(err).__name__}); this is a bug, please report "
                  "it with the traceback above", file=sys.stderr)
            return 1
        finally:
            warnings.showwarning = previous


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (captured)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``curvlab`` console script; returns the exit code.

    Example:
        >>> main(["info", "no-such-optimizer"])
        2
    """
    try:
        try:
            return _dispatch(argv)
        finally:
            sys.stdout.flush()  # a gone reader shows here, not as a message at exit
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
