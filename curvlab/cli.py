"""The ``curvlab`` command line: ``list``, ``info``, ``data``, ``compare``, ``ablate``, ``report``, ``merge``, ``reproduce``.

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
  curvlab info kfac                        hyper-parameters, search space, paper, layers
  curvlab data                             every dataset: where it was found, how to get it
  curvlab compare --problem digits-mlp --optimizers all
  curvlab compare --problem digits-mlp --optimizers sgd,adam,kfac --tune --trials 8 --seeds 3
  curvlab compare --problem quadratic --optimizers sgd,adam --steps 200 --hp adam.lr=0.01
  curvlab compare --problem digits-mlp --optimizers sgd --grid sgd.lr=0.3,0.1,0.03 --seeds 3
  curvlab ablate --problems digits-mlp,quadratic --optimizer kfac \\
      --vary damping_heuristic=pi,equal --vary inverse_every=10,50 --retune lr
  curvlab report --store curvlab-results.sqlite --out curvlab-report
  curvlab report --store curvlab-results.sqlite --score --measure ref-steps
  curvlab merge machine1.sqlite machine2.sqlite --out all.sqlite
  curvlab reproduce --list                 the seed papers' claims, one preset each
  curvlab reproduce foof-vs-kfac --quick   run one (resumable), print ours beside the paper's
  curvlab reproduce --all --quick --write-docs
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


def _add_settings_arguments(p: argparse.ArgumentParser,
                            keep: Callable[[str, Any], bool] | None = None) -> None:
    """One option per :class:`RunSettings` field, grouped as declared; unset options stay unset.

    ``keep(name, declaration)`` selects the fields (default: all).
    """
    groups: dict[str, Any] = {}
    for name, default, decl in declared_settings():
        if keep is not None and not keep(name, decl):
            continue
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
    from curvlab.harness.profiles import DEFAULT_R_MAX, DEFAULT_TAUS, MEASURES
    from curvlab.harness.report import FORMATS

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
    p = sub.add_parser("data", help="list every dataset: where it was found, how to get it",
                       formatter_class=fmt, parents=[common],
                       epilog="examples:\n  curvlab data\n  curvlab data --data-dir ~/mnist\n")
    p.add_argument("--data-dir", default=None,
                   help="folder to search first (then only it), as for compare")

    p = sub.add_parser("compare", help="compare optimizers on a problem", formatter_class=fmt,
                       parents=[common], epilog=EXAMPLES)
    p.add_argument("--problem", required=True, help="problem name (see `curvlab list`)")
    p.add_argument("--optimizers", nargs="+", default=["all"],
                   help="names (space- or comma-separated) or 'all' (default)")
    p.add_argument("--tune", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help="shorthand for --ruleset tuned (--no-tune: --ruleset defaults)")
    p.add_argument("--hp", action="append", default=[], metavar="OPT.NAME=VALUE",
                   help="fix a hyper-parameter (repeatable, never tuned), e.g. adam.lr=0.01")
    p.add_argument("--grid", action="append", default=[], metavar="OPT.NAME=V1,V2,...",
                   help="tune OPT over an explicit grid instead of its quasi-random trials "
                        "(repeatable: the product of the grids), e.g. sgd.lr=0.3,0.1,0.03")
    _add_run_arguments(p)

    p = sub.add_parser("ablate", help="vary hyper-parameters of one optimizer (cartesian product)",
                       formatter_class=fmt, parents=[common], epilog=EXAMPLES)
    p.add_argument("--problems", "--problem", dest="problems", required=True,
                   help="problem name(s), comma-separated (see `curvlab list`)")
    p.add_argument("--optimizer", required=True)
    p.add_argument("--vary", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="a factor and its levels (repeatable: the cells are the product); tuple "
                        "levels in parentheses, e.g. betas=(0.9,0.999),(0.95,0.95)")
    p.add_argument("--hparam", default=None, help="one factor (with --values; same as --vary)")
    p.add_argument("--values", default=None,
                   help="levels of --hparam, comma-separated (default: its choices)")
    p.add_argument("--retune", default=None, metavar="NAME[,NAME]",
                   help="re-tune these hyper-parameters in every cell with the same --trials "
                        "budget, e.g. lr or lr,damping")
    p.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                   help="fix another hyper-parameter of the optimizer (repeatable)")
    _add_run_arguments(p)

    p = sub.add_parser("report", help="write the report of a stored comparison, profiles, scores",
                       formatter_class=fmt, parents=[common],
                       epilog="examples:\n  curvlab report --store curvlab-results.sqlite --out rep\n"
                              "  curvlab report --store curvlab-results.sqlite --format parquet\n"
                              "  curvlab report --store curvlab-results.sqlite --profile "
                              "--measure seconds --out rep\n"
                              "  curvlab report --store curvlab-results.sqlite --score "
                              "--measure ref-steps --r-max 4\n")
    p.add_argument("--store", default=DEFAULT_STORE,
                   help="results store, opened read-only (default %(default)s)")
    p.add_argument("--comparison", default=argparse.SUPPRESS,
                   help="comparison id (default: the latest)")
    p.add_argument("--out", default=DEFAULT_REPORT, help="report folder (default %(default)s)")
    p.add_argument("--format", default=argparse.SUPPRESS, metavar="{" + ",".join(FORMATS) + "}",
                   help="report tables: markdown (with CSV and plots; default) or parquet "
                        "(pip install 'curvlab[parquet]'); comma-separated for both")
    g = p.add_argument_group("across problems: performance profiles (Dolan-More) and the "
                             "benchmark score (AlgoPerf)")
    g.add_argument("--profile", action="store_true",
                   help="write a performance profile of the stored comparisons instead")
    g.add_argument("--score", action="store_true",
                   help="print and write the integrated performance-profile score per optimizer")
    g.add_argument("--measure", default=argparse.SUPPRESS, metavar="{" + ",".join(MEASURES) + "}",
                   help="cost: steps, seconds or reference steps to the validation target, or "
                        "final train / validation loss (default steps)")
    g.add_argument("--r-max", dest="r_max", type=_argument_type(_r_max), default=argparse.SUPPRESS,
                   metavar="R", help=f"upper limit of the score's integral (default {DEFAULT_R_MAX:g})")
    g.add_argument("--comparisons", default=argparse.SUPPRESS,
                   help="comma-separated comparison ids (default: all in the store)")
    g.add_argument("--taus", default=argparse.SUPPRESS,
                   help="comma-separated tau values of the rho table "
                        f"(default {','.join(f'{t:g}' for t in DEFAULT_TAUS)})")

    p = sub.add_parser("merge", help="combine results stores (e.g. from several machines)",
                       formatter_class=fmt, parents=[common],
                       epilog="examples:\n  curvlab merge a.sqlite b.sqlite --out all.sqlite\n")
    p.add_argument("stores", nargs="+", metavar="STORE", help="input stores (read-only)")
    p.add_argument("--out", required=True, help="output store (created, or added to)")
    p.add_argument("--on-conflict", dest="on_conflict", default="refuse",
                   metavar="{refuse,first}",
                   help="a run whose copies disagree: refuse the merge (default) or keep the "
                        "first store's copy")

    p = sub.add_parser("reproduce", help="re-run a seed paper's claim (a preset) and give a verdict",
                       formatter_class=fmt, parents=[common],
                       epilog="examples:\n  curvlab reproduce --list\n"
                              "  curvlab reproduce foof-vs-kfac --quick\n"
                              "  curvlab reproduce --all --quick --write-docs\n")
    p.add_argument("preset", nargs="?", default=None, metavar="NAME", help="preset (see --list)")
    p.add_argument("--list", action="store_true", help="list the presets and what they claim")
    p.add_argument("--all", action="store_true", help="run every preset that can run")
    p.add_argument("--quick", action="store_true",
                   help="the quick budgets (CI, docs: a few CPU-minutes a preset)")
    p.add_argument("--write-docs", action="store_true",
                   help="write the results file of the docs' Reproductions page (with --all)")
    p.add_argument("--docs-dir", default=os.path.join("docs", "results"),
                   help="where --write-docs writes reproductions.json/.sqlite (default "
                        "%(default)s)")
    _add_settings_arguments(p, keep=lambda name, decl: name == "data_dir"
                            or (decl.scope == "execution" and name != "name"))
    return parser


def _r_max(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--r-max must be a number > 1, got {text!r}") from None
    if not value > 1 or value == float("inf"):
        raise ValueError(f"--r-max must be a finite number > 1, got {text!r}")
    return value


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


def _finish(comp: Any, report: str | None, formats: tuple[str, ...] = ("markdown",)) -> int:
    from curvlab.harness.report import markdown_table

    rows = comp.summary()
    print(markdown_table(rows))
    mixed = comp.environments()
    if mixed:
        what = "; ".join(f"{k}: {' vs '.join(v)}" for k, v in mixed.items())
        print(f"curvlab: warning: comparison {comp.id} mixes environments ({what})",
              file=sys.stderr)
    if report is not None:
        paths = comp.report(report, formats=formats)
        print(f"report: {paths[0].parent} ({', '.join(p.name for p in paths)})")
    print(f"comparison {comp.id} stored in {comp.store.path}")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from curvlab.harness.data import data_listing

    print(data_listing(args.data_dir))
    return 0


def _grid_pairs(items: list[str]) -> dict[str, dict[str, list[str]]]:
    """``opt.name=v1,v2`` → ``{opt: {name: [v1, v2]}}`` (tuple values in parentheses stay whole)."""
    from curvlab.harness.ablation import split_values

    out: dict[str, dict[str, list[str]]] = {}
    for opt, values in _hp_pairs(items).items():
        for name, text in values.items():
            levels = split_values(text)
            if not levels:
                raise _CliError(f"--grid {opt}.{name}= has no values")
            out.setdefault(opt, {})[name] = levels
    return out


def _cmd_compare(args: argparse.Namespace) -> int:
    from curvlab.harness.compare import compare

    if hasattr(args, "tune"):
        wanted = "tuned" if args.tune else "defaults"
        if getattr(args, "ruleset", wanted) != wanted:
            raise _CliError(f"--{'' if args.tune else 'no-'}tune contradicts --ruleset "
                            f"{args.ruleset}")
        args.ruleset = wanted
    settings = _settings(args)
    hps = _hp_pairs(args.hp)
    grids = _grid_pairs(args.grid)
    report = _report_folder(args.report)
    comp = compare(args.problem, ",".join(args.optimizers), hparams=hps, grids=grids,
                   settings=settings)
    return _finish(comp, report)


def _cmd_ablate(args: argparse.Namespace) -> int:
    import curvlab
    from curvlab.harness.ablation import ablate, default_levels, split_values
    from curvlab.harness.report import markdown_table

    settings = _settings(args)
    opt = curvlab.info(args.optimizer).name
    hps = _hp_pairs(args.hp, default_opt=args.optimizer)
    for other in hps:
        if curvlab.info(other).name != opt:
            raise _CliError(f"--hp {other}.…: ablate fixes hyper-parameters of {opt} only")
    fixed = {k: v for d in hps.values() for k, v in d.items()}
    vary: dict[str, Any] = {}
    for item in args.vary:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise _CliError(f"--vary expects NAME=V1,V2,... (e.g. damping=0.1,0.01), got {item!r}")
        levels = split_values(text)
        if not levels:
            raise _CliError(f"--vary {name.strip()}= has no values")
        vary[name.strip()] = levels
    if args.values is not None and args.hparam is None:
        raise _CliError("--values goes with --hparam NAME (or use --vary NAME=V1,V2)")
    if args.hparam is not None:
        if args.hparam in vary:
            raise _CliError(f"{args.hparam} is given with both --hparam and --vary")
        if args.values is not None:
            levels = split_values(args.values)
            if not levels:
                raise _CliError("--values is empty; give comma-separated values or leave it out")
            vary[args.hparam] = levels
        else:
            vary[args.hparam] = default_levels(opt, args.hparam)
    if not vary:
        raise _CliError("nothing to vary: give --vary NAME=V1,V2 (or --hparam NAME --values ...)")
    report = _report_folder(args.report)
    abl = ablate(args.problems, opt, vary, retune=args.retune, hparams=fixed, settings=settings)
    for factor in abl.factors:
        rows = abl.factor_table(factor)
        print(f"{factor}:")
        for r in rows:
            print(f"  {r['level']:<14} {r['problem']:<20} val loss {r['val_loss']:.4g} "
                  f"(95% CI {r['val_loss_ci_low']:.4g}..{r['val_loss_ci_high']:.4g}), "
                  f"{r['reached']}/{r['runs']} reached the target")
    for problem, comp in abl.comparisons.items():
        print(f"\n{problem}:")
        print(markdown_table(comp.summary()))
    if report is not None:
        paths = abl.report(report)
        print(f"report: {paths[0].parent} ({', '.join(p.name for p in paths)})")
    ids = ", ".join(c.id for c in abl.comparisons.values())
    store = next(iter(abl.comparisons.values())).store.path
    print(f"ablation comparisons {ids} stored in {store}")
    return 0


def _formats(args: argparse.Namespace) -> tuple[str, ...]:
    from curvlab.harness.report import FORMATS

    text = getattr(args, "format", "markdown")
    out = tuple(f.strip() for f in text.split(",") if f.strip())
    bad = [f for f in out if f not in FORMATS]
    if bad or not out:
        raise _CliError(f"--format must be among {', '.join(FORMATS)} (comma-separated), "
                        f"got {text!r}")
    return out


def _cmd_report(args: argparse.Namespace) -> int:
    from curvlab.harness.compare import Comparison
    from curvlab.harness.store import Store

    across = args.profile or args.score
    profile_only = [f"--{k.replace('_', '-')}" for k in ("measure", "comparisons", "taus")
                    if hasattr(args, k)]
    if profile_only and not across:
        raise _CliError(f"{', '.join(profile_only)} only apply with --profile or --score")
    if hasattr(args, "r_max") and not args.score:
        raise _CliError("--r-max only applies with --score")
    if hasattr(args, "taus") and not args.profile:
        raise _CliError("--taus only applies with --profile")
    if across and hasattr(args, "comparison"):
        raise _CliError("--comparison selects one report; with --profile/--score use --comparisons")
    if across and hasattr(args, "format"):
        raise _CliError("--format applies to the report of one comparison, not to --profile/--score")
    formats = _formats(args)
    store = Store(args.store, readonly=True)
    try:
        if across:
            return _profile(store, args)
        cid, spec = store.comparison(getattr(args, "comparison", None))
        return _finish(Comparison(cid, store, spec), args.out, formats)
    finally:
        store.close()


def _cmd_merge(args: argparse.Namespace) -> int:
    from curvlab.harness.merge import merge_stores

    s = merge_stores(args.stores, args.out, on_conflict=args.on_conflict)
    for text in s.conflicts_kept_first:
        print(f"curvlab: warning: kept the first copy of {text}", file=sys.stderr)
    print(f"merged {len(args.stores)} store(s) into {args.out}: {s.runs_added} run(s) added, "
          f"{s.runs_same} found in several stores with the same results, "
          f"{s.comparisons_added} comparison(s), {s.members_added} membership(s) added")
    return 0


def _profile(store: Any, args: argparse.Namespace) -> int:
    from curvlab.harness.profiles import (
        DEFAULT_R_MAX,
        DEFAULT_TAUS,
        performance_profile,
        profile_table,
        score_table,
        write_profile,
        write_score,
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
    if args.profile:
        print(profile_table(prof, taus))
        paths = write_profile(prof, args.out, taus)
        print(f"profile: {paths[0].parent} ({', '.join(p.name for p in paths)})")
    if args.score:
        r_max = getattr(args, "r_max", DEFAULT_R_MAX)
        print(score_table(prof, r_max))
        paths = write_score(prof, args.out, r_max)
        print(f"score: {paths[0].parent} ({', '.join(p.name for p in paths)})")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    import datetime as dt
    import shlex

    from curvlab.harness.presets import get_preset, preset_names
    from curvlab.harness.reproduce import format_result, reproduce, write_docs
    from curvlab.harness.reproduce import machine as machine_now
    from curvlab.harness.store import Store

    if args.list:
        if args.preset or args.all or args.write_docs:
            raise _CliError("--list takes no preset, --all or --write-docs")
        for name in preset_names():
            p = get_preset(name)
            state = f" [cannot run yet: {p.missing}]" if p.missing else ""
            print(f"{name:<20} {p.title}{state}")
            print(f"{'':<20} {p.paper}; problems: {', '.join(part.problem for part in p.parts)}")
        return 0
    if args.all == bool(args.preset):
        raise _CliError("give one preset NAME or --all (see `curvlab reproduce --list`)")
    if args.write_docs and not args.all:
        raise _CliError("--write-docs regenerates every preset's entry: use it with --all")
    names = preset_names() if args.all else [get_preset(args.preset).name]
    options = {n: getattr(args, n) for n, _, d in declared_settings()
               if hasattr(args, n) and n != "store"}
    if not hasattr(args, "progress"):
        options["progress"] = sys.stderr.isatty()
    started, before = dt.datetime.now(dt.timezone.utc), machine_now()
    store = Store(getattr(args, "store", DEFAULT_STORE))
    results = []
    try:
        for name in names:
            preset = get_preset(name)
            if preset.missing:
                if not args.all:
                    raise ValueError(f"preset {name!r} cannot run yet: {preset.missing}")
                print(f"{name}: skipped, cannot run yet: {preset.missing}\n")
                continue
            result = reproduce(preset, quick=args.quick, store=store, **options)
            print(format_result(result) + "\n", flush=True)
            results.append(result)
        if args.write_docs:
            command = "curvlab reproduce --all" + (" --quick" if args.quick else "") + \
                " --write-docs"
            paths = write_docs(results, store, args.docs_dir, command=command, started=started,
                               machine_before=before,
                               skipped=[n for n in names if get_preset(n).missing])
            print("wrote " + ", ".join(shlex.quote(str(p)) for p in paths))
    finally:
        store.close()
    for r in results:  # a claim that does not reproduce is a result, not an error: exit 0
        print(f"{r.name:<20} {r.verdict}")
    return 0


HANDLERS = {"list": _cmd_list, "info": _cmd_info, "data": _cmd_data, "compare": _cmd_compare,
            "ablate": _cmd_ablate, "report": _cmd_report, "merge": _cmd_merge,
            "reproduce": _cmd_reproduce}


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
