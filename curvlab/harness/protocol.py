r"""The comparison protocol shared by :func:`~curvlab.harness.compare.compare` and ablations.

A :class:`Plan` is a checked comparison about to run on one problem: its
settings, the problem, the fingerprint of the problem's data files, the code
hash of every optimizer's plugin, and the open results store. It builds the
runs of the protocol:

1. **Tuning trials** (ruleset ``tuned``, an explicit grid, or an ablation's
   ``retune``): for every optimizer (or ablation cell) and study
   ``k = 0 … studies-1``, ``trials`` configurations from
   :func:`curvlab.harness.search.trials`, trained with the *tuning seed*
   ``tuning_seed + k``.
2. **Selection** on the validation set, never the test set (:func:`rank`):
   ``val-loss`` takes the lowest final validation loss; ``time-to-target``
   the least work to the validation target in reference steps (steps to
   the target × the step cost, :func:`~curvlab.harness.metrics.cost_to_target`,
   so a busy moment does not decide), ties broken by the final validation
   loss. Failed runs
   (error, timeout, divergence) rank last; among equals the earlier trial
   wins.
3. **Evaluation runs**: each study's winner (the schema defaults without
   tuning) with the *evaluation seeds* ``0 … seeds-1``, disjoint from the
   tuning seeds, so no reported run shares a configuration key with a
   tuning run.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import curvlab
from curvlab.harness.config import RunConfig
from curvlab.harness.data import DataCorruptError
from curvlab.harness.executor import run_configs
from curvlab.harness.metrics import cost_to_target
from curvlab.harness.problems import Problem
from curvlab.harness.provenance import plugin_code_hash
from curvlab.harness.results import RunResult
from curvlab.harness.runner import DataError
from curvlab.harness.search import Trial, trials
from curvlab.harness.settings import SELECT, RunSettings
from curvlab.harness.store import Store

__all__ = ["Candidate", "Plan", "comparison_id", "complete_hparams", "given_hparams", "rank",
           "selection_record"]


def given_hparams(opt: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The hparams given for ``opt``, each checked once: text parsed by the schema, others validated.

    Example:
        >>> given_hparams("adam", {"lr": "0.01", "betas": (0.9, 0.99)})
        {'lr': 0.01, 'betas': (0.9, 0.99)}
    """
    schema = curvlab.info(opt).schema
    text = {k: schema.parse(k, v) for k, v in values.items() if isinstance(v, str)}
    typed = schema.validate({k: v for k, v in values.items() if k not in text}, partial=True)
    return {k: text[k] if k in text else typed[k] for k in values}


def complete_hparams(opt: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every hparam of ``opt``: the (already checked) given values, the declared defaults elsewhere."""
    return {p.name: given.get(p.name, p.default) for p in curvlab.info(opt).schema}


def comparison_id(spec: Mapping[str, Any]) -> str:
    """12 hex digits of the SHA-256 of the spec's canonical JSON."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def rank(result: RunResult, select: str, target: float) -> tuple[float, float]:
    """Sort key of a tuning run under criterion ``select`` (lower is better; validation only).

    Example:
        >>> from curvlab.harness.results import CurvePoint, RunMetrics
        >>> r = RunResult("k", "done", "steps", RunMetrics(final_val_loss=0.3, step_cost=2.5),
        ...               curve=[CurvePoint("eval", 20, 0.5, 0.2, val_loss=0.25)])
        >>> rank(r, "val-loss", 0.3), rank(r, "time-to-target", 0.3)
        ((0.3, 0.0), (50.0, 0.3))
    """
    if select not in SELECT:
        raise ValueError(f"select must be one of {SELECT}, got {select!r}")
    loss = result.ranked_val_loss
    if result.failed:
        return (math.inf, math.inf)
    if select == "time-to-target":
        return (cost_to_target(result, target), loss)
    return (loss, 0.0)


@dataclass(frozen=True)
class Candidate:
    """A tuning trial of one label in one study, as a run.

    Attributes:
        label: The optimizer (or ablation cell) it tunes.
        study: The study index.
        trial: The drawn configuration.
        config: Its run (tuning seed).
    """

    label: str
    study: int
    trial: Trial
    config: RunConfig


@dataclass(frozen=True)
class Plan:
    """A checked comparison on one problem, about to run (see the module docstring).

    Attributes:
        settings: The settings.
        problem: The problem instance.
        store: The open results store.
        data: :meth:`Problem.provenance` of the data (``fingerprint`` enters every key).
        codes: Plugin code hash of each optimizer (enters every key).
    """

    settings: RunSettings
    problem: Problem
    store: Store
    data: dict[str, Any]
    codes: dict[str, str]

    @classmethod
    def open(cls, settings: RunSettings, problem: Problem, optimizers: Sequence[str]) -> Plan:
        """Load the problem's data once (fail early, one line), hash the plugins, open the store.

        Raises:
            DataError: the data cannot be loaded (the message names the fix;
                ``curvlab data`` lists every dataset).
            StoreError: the store cannot be used.
        """
        try:
            data = problem.provenance(problem.data())
        except ValueError as err:
            if not isinstance(err, DataCorruptError):
                raise  # an option that does not fit the data (batch size > rows)
            raise DataError(f"problem {problem.name!r}: cannot load its data: {err}") from err
        except Exception as err:  # noqa: BLE001 - any other failure here is the data's
            raise DataError(f"problem {problem.name!r}: cannot load its data: {err} "
                            "(`curvlab data` lists every dataset and where it is looked for)"
                            ) from err
        codes = {opt: plugin_code_hash(opt) for opt in optimizers}
        store = settings.store
        return cls(settings, problem, store if isinstance(store, Store) else Store(store), data,
                   codes)

    @property
    def target(self) -> float:
        """The validation-loss target: the settings' or else the problem's."""
        target = self.settings.target
        return float(self.problem.target_loss if target is None else target)

    def config(self, opt: str, hparams: dict[str, Any], seed: int,
               options: Mapping[str, Any] | None = None) -> RunConfig:
        """The run of ``opt`` with ``hparams`` and ``seed`` (run options overridden by ``options``)."""
        run = {**self.settings.run_options(), **(options or {})}
        code = self.codes.get(opt)
        return RunConfig(self.problem.name, opt, hparams, seed, self.problem.options(),
                         data_fingerprint=self.data["fingerprint"], plugin_code=code, **run)

    def spec(self, kind: str, **fields: Any) -> dict[str, Any]:
        """The comparison's definition (its id is a hash of it)."""
        s = self.settings
        return {"kind": kind, "problem": self.problem.name, **fields, **s.of_scope("comparison"),
                "target": self.target, **s.run_options(),
                "problem_options": self.problem.options(),
                "data_fingerprint": self.data["fingerprint"], "plugin_code": self.codes}

    def candidates(self, label: str, opt: str, base: Mapping[str, Any], *,
                   fixed: Collection[str] = (), only: Collection[str] | None = None,
                   grid: Sequence[Mapping[str, Any]] | None = None) -> list[Candidate]:
        """Every tuning run of ``label`` over all studies (empty: nothing to tune).

        Args:
            label: The optimizer or ablation cell.
            opt: The optimizer.
            base: The complete hparams the trials start from.
            fixed: Names not to tune (given by the user, or varied by an ablation).
            only: Tune only these names (``retune``).
            grid: Explicit points instead of quasi-random trials (the same in
                every study).
        """
        s = self.settings
        out = []
        for study in range(s.studies):
            if grid is not None:
                drawn = [Trial(i, dict(point), {}) for i, point in enumerate(grid)]
            else:
                drawn = trials(opt, s.trials, seed=s.tuning_seed, study=study, sampler=s.sampler,
                               fixed=fixed, only=only, tune_schedule=s.tune_schedule)
            for t in drawn:
                cfg = self.config(opt, {**base, **t.hparams}, s.tuning_seed + study, t.options)
                out.append(Candidate(label, study, t, cfg))
        return out

    def select(self, candidates: Sequence[Candidate]) -> dict[int, Candidate]:
        """The winner of every study among ``candidates`` (stored results, see :func:`rank`)."""
        best: dict[int, tuple[tuple[float, float, int], Candidate]] = {}
        for c in candidates:
            score = (*rank(self.store.result(c.config.key(), curve=True), self.settings.select,
                           self.target), c.trial.index)
            if c.study not in best or score < best[c.study][0]:
                best[c.study] = (score, c)
        return {k: v[1] for k, v in sorted(best.items())}

    def finals(self, label: str, opt: str, base: Mapping[str, Any],
               winners: Mapping[int, Candidate]) -> list[RunConfig]:
        """The evaluation runs: each study's winner (or ``base``) with seeds ``0 … seeds-1``."""
        points = ([(dict(c.config.hparams), {"schedule": c.config.schedule,
                                              "warmup": c.config.warmup})
                   for c in winners.values()] if winners else [(dict(base), {})])
        out: list[RunConfig] = []
        for hp, options in points:
            for seed in range(self.settings.seeds):
                cfg = self.config(opt, hp, seed, options)
                if all(cfg.key() != o.key() for o in out):
                    out.append(cfg)
        return out

    def run(self, cid: str, rows: list[tuple[RunConfig, str, str]], desc: str) -> None:
        """Attach ``(config, role, label)`` rows to comparison ``cid`` and run what is missing."""
        self.store.add_members(cid, [(c.key(), role, label) for c, role, label in rows])
        run_configs([c for c, _, _ in rows], self.store, self.settings, desc=desc)

    def execute(self, cid: str, spec: dict[str, Any], cands: Mapping[str, Sequence[Candidate]],
                base: Mapping[str, Mapping[str, Any]], optimizer_of: Mapping[str, str],
                desc: str) -> None:
        """Steps 1–3 of the protocol for the labels of ``cands``, recorded under ``cid``.

        Adds the comparison (``spec``), runs every label's tuning trials, selects
        each label's winners on validation, stores them in ``spec["selected"]``
        and runs the evaluation seeds (``desc`` names them in progress bars).

        Args:
            cid: Comparison id.
            spec: The comparison's JSON spec (gets ``"selected"``).
            cands: Tuning candidates per label (empty: the label is not tuned).
            base: Hyper-parameters per label when untuned (or as the fixed part).
            optimizer_of: The optimizer name of each label.
            desc: Progress description of the evaluation runs.
        """
        self.store.add_comparison(cid, spec)
        self.run(cid, [(c.config, "tune", lb) for lb in cands for c in cands[lb]], "tuning")
        finals: list[tuple[RunConfig, str, str]] = []
        selected = {}
        for lb in cands:
            winners = self.select(cands[lb])
            selected[lb] = selection_record(winners, self.store)
            finals += [(c, "final", lb)
                       for c in self.finals(lb, optimizer_of[lb], base[lb], winners)]
        spec["selected"] = selected
        self.store.update_comparison(cid, spec)
        self.run(cid, finals, desc)


def selection_record(winners: Mapping[int, Candidate], store: Store) -> list[dict[str, Any]]:
    """JSON-ready description of the winners (for the comparison's spec and reports)."""
    out = []
    for study, c in winners.items():
        res = store.result(c.config.key())
        out.append({"study": study, "trial": c.trial.index, "hparams": c.trial.hparams,
                    "options": c.trial.options, "key": c.config.key(),
                    "val_loss": res.ranked_val_loss})
    return out
