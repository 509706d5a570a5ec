"""The settings of a comparison, :class:`RunSettings`: declared once, validated once, passed down.

Every knob a comparison or an ablation shares (budget, evaluation period,
seeds, loss target, device, dtype, threads, problem variant, results store,
executor, ...) is one field of the frozen dataclass :class:`RunSettings`.
Each field carries its declaration, a :class:`Setting`: a one-line doc, the
group and *scope* it belongs to, how to read it from command-line text and
how to check a value. Everything else is derived from that declaration:

- validation, once, when the object is built (``ValueError`` naming the
  field, the value and the rule);
- the ``curvlab compare`` / ``curvlab ablate`` options and their ``--help``
  (:mod:`curvlab.cli` walks :func:`declared_settings`);
- the attribute documentation below;
- which fields enter each run's configuration and hash key (scope
  ``"run"``: the fields of :class:`RunOptions`, which
  :class:`~curvlab.harness.config.RunConfig` shares), which ones build the
  problem (``"problem"``), which ones define the comparison (``"comparison"``)
  and which ones only say how to execute it (``"execution"``: never part of
  a result's identity).

Adding a setting is one field here; the runner or the comparison then reads
it. The object is built at the edge (the CLI or the Python call) and handed
down unchanged: :func:`~curvlab.harness.compare.compare`,
:func:`~curvlab.harness.compare.ablate` and
:func:`~curvlab.harness.executor.run_configs` take it.

Example:
    >>> s = RunSettings(steps=100, seconds=None, executor="serial", eval_every=25)
    >>> s.steps, s.eval_every, s.run_options()["seconds"]
    (100, 25, None)
    >>> RunSettings(target=float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: target must be a finite number or None (the problem's target), got nan
"""

from __future__ import annotations

import difflib
import math
import os
import sys
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from curvlab.harness.schedules import SCHEDULES, check_schedule

if TYPE_CHECKING:
    from curvlab.harness.store import Store

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_REPORT",
    "DEFAULT_STORE",
    "DEFAULT_TUNING_SEED",
    "DTYPES",
    "EXECUTORS",
    "RULESETS",
    "SAMPLERS",
    "SCOPES",
    "SELECT",
    "RunOptions",
    "RunSettings",
    "Setting",
    "declared_settings",
]

#: Default budget: 500 steps (safety cap 15 s of training time per run); evaluation every
#: ``eval_every`` steps, by default the problem's :attr:`~curvlab.harness.problems.Problem.default_eval_every`
#: (25 for the small problems). ``compare --problem digits-mlp --optimizers all`` (13
#: optimizers) takes ~1-3 min on 2 cores.
DEFAULT_BUDGET = {"steps": 500, "seconds": 15.0, "eval_every": 25}
#: Tuning rulesets (``--ruleset``): ``defaults`` = every optimizer with its schema defaults
#: (no tuning); ``tuned`` = external tuning, the same number of quasi-random trials from
#: each optimizer's declared search space (AlgoPerf's external-tuning ruleset).
RULESETS = ("defaults", "tuned")
#: Selection criteria of the tuning trials (``--select``), both on the validation set.
SELECT = ("val-loss", "time-to-target")
#: Quasi-random sequences of :mod:`scipy.stats.qmc` for the tuning trials (``--sampler``).
SAMPLERS = ("halton", "sobol")
#: First seed of the tuning runs (study ``k`` trains with seed ``tuning_seed + k``); far
#: from the evaluation seeds ``0 … seeds-1``, which must not overlap it.
DEFAULT_TUNING_SEED = 1000
#: Default results-store file (``--store``).
DEFAULT_STORE = "curvlab-results.sqlite"
#: Default report folder (``--report`` of compare/ablate, ``--out`` of report).
DEFAULT_REPORT = "curvlab-report"
DTYPES = ("float32", "float64")
EXECUTORS = ("process", "serial", "ray")
#: What a setting belongs to: one run's identity, the problem instance, the
#: comparison's definition, or only how the comparison is executed.
SCOPES = ("run", "problem", "comparison", "execution")


@dataclass(frozen=True)
class Setting:
    """Declaration of one settings field (stored in the dataclass field's metadata).

    Attributes:
        doc: One line for the docs and ``--help``.
        group: Heading of the option group in ``--help``.
        scope: One of :data:`SCOPES`.
        check: ``check(name, value) -> value``: validate (``ValueError``
            naming the field and the rule) and normalise a value.
        parse: ``parse(text) -> value`` for command-line text (``ValueError``
            when the text is not of the type); ``None`` for an on/off switch.
        choices: The allowed values, where there is a fixed list.
        cli_default: Default on the command line when it differs from the
            Python default (called when the option is not given).
    """

    doc: str
    group: str
    scope: str
    check: Callable[[str, Any], Any]
    parse: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    cli_default: Callable[[], Any] | None = None


def setting(default: Any, doc: str, *, group: str, scope: str, check: Callable[[str, Any], Any],
            parse: Callable[[str], Any] | None = None, choices: tuple[str, ...] | None = None,
            cli_default: Callable[[], Any] | None = None) -> Any:
    """A dataclass field declared as a setting (see :class:`Setting`)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    decl = Setting(doc, group, scope, check, parse, choices, cli_default)
    return field(default=default, metadata={"setting": decl})


def declared_settings(cls: type | None = None) -> list[tuple[str, Any, Setting]]:
    """``(name, default, declaration)`` of every setting of ``cls`` (default :class:`RunSettings`).

    Example:
        >>> [n for n, _, d in declared_settings() if d.scope == "run"]
        ['steps', 'seconds', 'eval_every', 'schedule', 'warmup', 'device', 'dtype', 'threads']
    """
    out = []
    for f in fields(cls or RunSettings):
        decl = f.metadata.get("setting")
        if decl is not None:
            out.append((f.name, None if f.default is MISSING else f.default, decl))
    return out


# ------------------------------------------------------------- text → value
def _none(text: str) -> bool:
    return text.strip().lower() == "none"


def _int_text(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"not an integer: {text!r}") from None


def _float_text(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None


def _int_or_none_text(text: str) -> int | None:
    return None if _none(text) else _int_text(text)


def _float_or_none_text(text: str) -> float | None:
    return None if _none(text) else _float_text(text)


def _text(text: str) -> str:
    return text


# ------------------------------------------------------------------ checks
def _positive_int(name: str, value: Any, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        extra = " or None" if optional else ""
        raise ValueError(f"{name} must be a positive integer{extra}, got {value!r}")
    return value


def _positive_int_or_none(name: str, value: Any) -> int | None:
    return _positive_int(name, value, optional=True)


def _non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def _eval_size(name: str, value: Any) -> int | str | None:
    if value is None or value == "full":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, 'full' or None (the problem's), "
                         f"got {value!r}")
    return value


def _eval_size_text(text: str) -> int | str | None:
    raw = text.strip().lower()
    if raw in ("none", "full"):
        return None if raw == "none" else "full"
    return _int_text(text)


def _fraction_or_none(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a fraction in [0, 1) or None, got {value!r}")
    return float(value)


def _address_or_none(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a Ray cluster address ('auto', 'HOST:PORT', "
                         f"'ray://HOST:PORT') or None, got {value!r}")
    return value.strip()


def _seconds(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value > 0
    ):
        raise ValueError(f"{name} must be > 0 (finite) or None, got {value!r}")
    return float(value)


def _target(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number or None (the problem's target), "
                         f"got {value!r}")
    return float(value)


def _one_of(choices: tuple[str, ...]) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{name} must be one of {choices}, got {value!r}{hint}")
        return value

    return check


def _device(name: str, value: Any) -> str:
    if not isinstance(value, str) or not (
        value == "cpu" or value == "cuda" or (value.startswith("cuda:") and value[5:].isdigit())
    ):
        raise ValueError(f"{name} must be 'cpu' or 'cuda[:N]', got {value!r}")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def _folder_or_none(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ValueError(f"{name} must be a folder path or None, got {value!r}")
    return str(value)


def _store(name: str, value: Any) -> str | Store:
    from curvlab.harness.store import Store

    if isinstance(value, Store):
        return value
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ValueError(f"{name} must be a file path, ':memory:' or an open Store, got {value!r}")
    return str(value)


def _name_or_none(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string or None, got {value!r}")
    return value


def _stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


BUDGET, HARDWARE, EXECUTION = "budget and evaluation", "hardware and data", "execution and output"
PROTOCOL = "protocol: tuning, seeds, selection, schedules"


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """The settings one run depends on (scope ``"run"``): part of every run's hash key.

    :class:`~curvlab.harness.config.RunConfig` (one run) and
    :class:`RunSettings` (a comparison) share these fields.

    Raises:
        ValueError: a field outside its rule, or neither ``steps`` nor
            ``seconds`` set.
    """

    steps: int | None = setting(
        DEFAULT_BUDGET["steps"], "steps per run ('none': no step limit, then seconds must be set)",
        group=BUDGET, scope="run", check=_positive_int_or_none, parse=_int_or_none_text)
    seconds: float | None = setting(
        DEFAULT_BUDGET["seconds"], "training seconds per run, a safety cap ('none': no time limit)",
        group=BUDGET, scope="run", check=_seconds, parse=_float_or_none_text)
    eval_every: int | None = setting(
        None, "evaluate train (evaluation subset) and validation loss every N steps, not timed "
        "(default: the problem's, 25 for the small problems)", group=BUDGET, scope="run",
        check=_positive_int_or_none, parse=_int_or_none_text)
    schedule: str = setting(
        "constant", "learning-rate schedule over the step budget (torch.optim.lr_scheduler)",
        group=PROTOCOL, scope="run", check=_one_of(SCHEDULES), parse=_text, choices=SCHEDULES)
    warmup: float | None = setting(
        None, "linear warm-up, a fraction of the steps (warmup-cosine, linear-decay; default: "
        "0.05 for warmup-cosine, else 0)", group=PROTOCOL, scope="run",
        check=_fraction_or_none, parse=_float_or_none_text)
    device: str = setting("cpu", "'cpu' or 'cuda[:N]'", group=HARDWARE, scope="run",
                          check=_device, parse=_text)
    dtype: str = setting("float32", "floating-point type of model and data", group=HARDWARE,
                         scope="run", check=_one_of(DTYPES), parse=_text, choices=DTYPES)
    threads: int = setting(1, "torch threads per run", group=HARDWARE, scope="run",
                           check=_positive_int, parse=_int_text)

    def __post_init__(self) -> None:
        for name, _, decl in declared_settings(type(self)):
            object.__setattr__(self, name, decl.check(name, getattr(self, name)))
        self._check_together()

    def _check_together(self) -> None:
        if self.steps is None and self.seconds is None:
            raise ValueError("a run needs a budget: steps and/or seconds")
        check_schedule(self.schedule, self.warmup, self.steps)

    def run_options(self) -> dict[str, Any]:
        """The run-scope fields as keywords (what a :class:`RunConfig` takes)."""
        return {f.name: getattr(self, f.name) for f in fields(RunOptions)}


@dataclass(frozen=True, kw_only=True)
class RunSettings(RunOptions):
    """Every setting of a comparison or ablation (see the module docstring).

    Build it once (``RunSettings(steps=200, seeds=3)``, or from the command
    line) and pass it to :func:`~curvlab.harness.compare.compare` or
    :func:`~curvlab.harness.compare.ablate`.

    Raises:
        ValueError: a field outside its rule (the message names it), no
            budget, ``device='cuda'`` without a CUDA device, or
            ``executor='ray'`` without the ray package.

    Example:
        >>> RunSettings(seeds=3).seeds
        3
        >>> RunSettings(steps=2.5)
        Traceback (most recent call last):
        ...
        ValueError: steps must be a positive integer or None, got 2.5
    """

    seeds: int = setting(1, "evaluation seeds of the reported runs (0 ... seeds-1)",
                         group=PROTOCOL, scope="comparison", check=_positive_int, parse=_int_text)
    target: float | None = setting(
        None, "validation-loss target for time-to-target (default: the problem's)",
        group=PROTOCOL, scope="comparison", check=_target, parse=_float_or_none_text)
    ruleset: str = setting(
        "defaults", "'defaults': schema defaults, no tuning; 'tuned': the same number of "
        "quasi-random trials per optimizer from its search space", group=PROTOCOL,
        scope="comparison", check=_one_of(RULESETS), parse=_text, choices=RULESETS)
    trials: int = setting(8, "tuning trials per optimizer (or ablation cell) and study",
                          group=PROTOCOL, scope="comparison", check=_positive_int,
                          parse=_int_text)
    studies: int = setting(1, "independent tuning studies (each: its own trials, its own winner)",
                           group=PROTOCOL, scope="comparison", check=_positive_int,
                           parse=_int_text)
    tuning_seed: int = setting(
        DEFAULT_TUNING_SEED, "seed of the tuning runs and of the quasi-random draw (study k: "
        "seed + k); disjoint from the evaluation seeds", group=PROTOCOL, scope="comparison",
        check=_non_negative_int, parse=_int_text)
    sampler: str = setting("halton", "scrambled quasi-random sequence of the trials",
                           group=PROTOCOL, scope="comparison", check=_one_of(SAMPLERS),
                           parse=_text, choices=SAMPLERS)
    select: str = setting(
        "val-loss", "how the best trial is picked: final validation loss, or time to the "
        "validation target (ties: validation loss)", group=PROTOCOL, scope="comparison",
        check=_one_of(SELECT), parse=_text, choices=SELECT)
    tune_schedule: bool = setting(
        False, "also tune the schedule (kind and warm-up fraction) in every trial",
        group=PROTOCOL, scope="comparison", check=_flag)
    small: bool = setting(False, "the problem's small (CI) variant", group=HARDWARE,
                          scope="problem", check=_flag)
    data_dir: str | None = setting(None, "folder (or text file) with the data (see `curvlab "
                                   "data`)", group=HARDWARE, scope="problem",
                                   check=_folder_or_none, parse=_text)
    batch_size: int | None = setting(
        None, "mini-batch size (default: the problem's)", group=HARDWARE, scope="problem",
        check=_positive_int_or_none, parse=_int_or_none_text)
    fresh_batch_size: int | None = setting(
        None, "size of the separate batches some optimizers draw (default: the batch size)",
        group=HARDWARE, scope="problem", check=_positive_int_or_none, parse=_int_or_none_text)
    split_seed: int = setting(0, "seed of the train/validation split (the same for every run)",
                              group=HARDWARE, scope="problem", check=_non_negative_int,
                              parse=_int_text)
    eval_size: int | str | None = setting(
        None, "training rows of the evaluation subset during training: N or 'full' (default: "
        "the problem's; the full sets are evaluated at the end)", group=HARDWARE,
        scope="problem", check=_eval_size, parse=_eval_size_text)
    store: str | Store = setting(
        DEFAULT_STORE, "SQLite results store (a path, ':memory:' or an open Store); finished "
        "runs are reused", group=EXECUTION, scope="execution", check=_store, parse=_text)
    executor: str = setting(
        "process", "process pool, in-process ('serial') or Ray (pip install 'curvlab[ray]')",
        group=EXECUTION, scope="execution", check=_one_of(EXECUTORS), parse=_text,
        choices=EXECUTORS)
    jobs: int = setting(1, "parallel runs", group=EXECUTION, scope="execution",
                        check=_positive_int, parse=_int_text)
    progress: bool = setting(False, "progress bars on stderr (command line: when stderr is a "
                             "terminal)", group=EXECUTION, scope="execution", check=_flag,
                             cli_default=_stderr_is_terminal)
    name: str | None = setting(None, "comparison id (default: a hash of the settings)",
                               group=EXECUTION, scope="execution", check=_name_or_none,
                               parse=_text)
    reference_every: int = setting(
        5, "time the reference SGD step after every N steps of a run (the unit of the cost "
        "ratios)", group=EXECUTION, scope="execution", check=_positive_int, parse=_int_text)
    checkpoint_every: int | None = setting(
        None, "checkpoint each run every N steps into the store's folder; a killed run resumes "
        "there", group=EXECUTION, scope="execution", check=_positive_int_or_none,
        parse=_int_or_none_text)
    run_timeout: float | None = setting(
        None, "wall-clock seconds after which a run is stopped and recorded as a timeout",
        group=EXECUTION, scope="execution", check=_seconds, parse=_float_or_none_text)
    ray_address: str | None = setting(
        None, "address of an existing Ray cluster to join (executor ray; default: a local one)",
        group=EXECUTION, scope="execution", check=_address_or_none, parse=_text)

    def _check_together(self) -> None:
        super()._check_together()
        last_tuning = self.tuning_seed + self.studies - 1
        if self.tuning_seed < self.seeds:
            raise ValueError(
                f"tuning seeds {self.tuning_seed}..{last_tuning} overlap the evaluation seeds "
                f"0..{self.seeds - 1}; pass a tuning_seed >= {self.seeds}")
        if self.ray_address is not None and self.executor != "ray":
            raise ValueError(f"ray_address {self.ray_address!r} needs executor 'ray', "
                             f"got executor {self.executor!r}")
        if self.checkpoint_every is not None and isinstance(self.store, str) and \
                self.store == ":memory:":
            raise ValueError("checkpoint_every needs a store file (checkpoints go into its "
                             "folder), got store ':memory:'")
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"device {self.device!r} requested but torch sees no CUDA device")
        if self.executor == "ray":
            try:
                import ray  # noqa: F401
            except ImportError:
                raise ValueError(
                    "executor 'ray' needs the ray package: pip install 'curvlab[ray]'"
                ) from None

    @classmethod
    def build(cls, settings: RunSettings | None = None, **changes: Any) -> RunSettings:
        """``settings`` (default: all defaults) with ``changes`` applied, validated.

        Raises:
            TypeError: a keyword that is not a setting (with a close match).
            ValueError: an invalid value.

        Example:
            >>> RunSettings.build(RunSettings(seeds=2), steps=10).steps
            10
            >>> RunSettings.build(stpes=10)
            Traceback (most recent call last):
            ...
            TypeError: unknown setting 'stpes' (did you mean 'steps'?); settings: steps, ...
        """
        names = [n for n, _, _ in declared_settings(cls)]
        for key in changes:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise TypeError(f"unknown setting {key!r}{hint}; settings: {', '.join(names)}")
        base = settings if settings is not None else cls()
        return replace(base, **changes) if changes else base

    def of_scope(self, scope: str) -> dict[str, Any]:
        """The fields of one scope (:data:`SCOPES`) as a dict.

        Example:
            >>> RunSettings().of_scope("problem")["split_seed"], len(RunSettings().of_scope("problem"))
            (0, 6)
        """
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        return {n: getattr(self, n) for n, _, d in declared_settings(type(self)) if d.scope == scope}


def _attributes_doc(cls: type) -> str:
    lines = ["", "    Attributes:"]
    for name, default, decl in declared_settings(cls):
        shown = "" if "default" in decl.doc else f"default ``{default!r}``; "
        lines.append(f"        {name}: {decl.doc[0].upper()}{decl.doc[1:]} "
                     f"({shown}scope ``{decl.scope}``).")
    return "\n".join(lines) + "\n"


RunOptions.__doc__ = (RunOptions.__doc__ or "") + _attributes_doc(RunOptions)
RunSettings.__doc__ = (RunSettings.__doc__ or "") + _attributes_doc(RunSettings)
