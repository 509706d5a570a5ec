"""Report files of a comparison: markdown and CSV tables, PNG plots (matplotlib, Agg), parquet.

Files written to the report folder (``formats=("markdown",)``, the default):

- ``summary.md``: the protocol (ruleset, trials per optimizer and their
  search spaces, studies, tuning and evaluation seeds, selection criterion,
  schedule, target), a warning when the runs mix environments
  (:func:`curvlab.harness.provenance.environment_differences`), then one
  table row per optimizer/label: final train loss, validation loss (median
  [IQR] and its 95 % bootstrap interval), test loss/accuracy, runs reaching
  the validation target, steps and seconds to it, the step cost in
  reference steps (:mod:`curvlab.harness.timing`), gradient-equivalents per
  step, step time, peak memory, divergences and optimizer counters;
- ``summary.csv``: the same rows, every column;
- ``runs.csv``: every run (tuning included) with its role, seeds, hparams,
  schedule, metrics and the main provenance entries;
- ``curves.csv``: every evaluation point of the reported runs;
- ``loss_vs_step.png``, ``loss_vs_time.png``: validation loss (median over
  runs, log scale) against steps and against training seconds;
- ``time_to_target.png``: median seconds to the validation target.

With ``"parquet"`` in ``formats`` also ``summary.parquet``, ``runs.parquet``
and ``curves.parquet`` (the same tables, for pandas/polars/DuckDB; needs
pyarrow: ``pip install 'curvlab[parquet]'``).

Performance profiles and the benchmark score across several comparisons are
written by :mod:`curvlab.harness.profiles` (``curvlab report --profile`` /
``--score``); ablation reports by :func:`write_ablation_report`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curvlab.harness.results import RunResult
from curvlab.harness.statistics import median_iqr

if TYPE_CHECKING:
    from curvlab.harness.ablation import Ablation
    from curvlab.harness.compare import Comparison

__all__ = ["FORMATS", "REPORT_FILES", "format_pm", "format_spread", "markdown_table",
           "prepare_folder", "protocol_lines", "write_ablation_report", "write_csv",
           "write_parquet", "write_report"]

REPORT_FILES = ("summary.md", "summary.csv", "runs.csv", "curves.csv",
                "loss_vs_step.png", "loss_vs_time.png", "time_to_target.png")
PARQUET_FILES = ("summary.parquet", "runs.parquet", "curves.parquet")
#: Report formats (``--format``).
FORMATS = ("markdown", "parquet")


def format_pm(mean: float, std: float, digits: int = 4) -> str:
    """``mean ± std`` with ``digits`` significant digits (``—`` for NaN).

    Example:
        >>> format_pm(0.123456, 0.01), format_pm(float("nan"), 0.0)
        ('0.1235 ± 0.01', '—')
    """
    if mean is None or not math.isfinite(mean):
        return "—" if mean is None or math.isnan(mean) else str(mean)
    return f"{mean:.{digits}g} ± {std:.{max(digits - 2, 1)}g}"


def _num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        return "∞" if v == math.inf else f"{v:.{digits}g}"
    return str(v)


def format_spread(row: dict[str, Any], col: str, digits: int = 4) -> str:
    """``median [q25, q75]`` of column ``col`` of a summary row (``—`` when not measured).

    Example:
        >>> format_spread({"x": 0.5, "x_q25": 0.4, "x_q75": 0.61}, "x")
        '0.5 [0.4, 0.61]'
        >>> format_spread({"x": 0.5, "x_q25": 0.5, "x_q75": 0.5}, "x")
        '0.5'
    """
    m, lo, hi = row.get(col), row.get(col + "_q25"), row.get(col + "_q75")
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "—"
    if lo is None or hi is None or (lo == m and hi == m):
        return _num(m, digits)
    return f"{_num(m, digits)} [{_num(lo, digits)}, {_num(hi, digits)}]"


def _ci(row: dict[str, Any], col: str) -> str:
    lo, hi = row.get(col + "_ci_low"), row.get(col + "_ci_high")
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return "—"
    return f"[{_num(lo)}, {_num(hi)}]"


HEAD = ["optimizer", "hparams", "trials", "train loss", "val loss", "val 95% CI", "test loss",
        "test acc", "reached", "steps to target", "s to target", "cost (ref steps)",
        "grad evals", "ms/step", "peak MB", "diverged", "counters"]


def markdown_table(rows: list[dict[str, Any]], n_seeds: int | None = None) -> str:
    """The summary rows as a GitHub-flavoured markdown table.

    Columns: the medians and inter-quartile ranges of :func:`~curvlab.harness.metrics.summarize`
    (``—``: not measured; ``∞``: failed or target missed).

    Example:
        >>> row = {"label": "sgd", "hparams": "lr=0.1", "trials": 8, "runs": 3,
        ...        "final_loss": 0.5, "val_loss": 0.6, "val_loss_ci_low": 0.55,
        ...        "val_loss_ci_high": 0.7, "test_loss": 0.61, "test_acc": 0.9, "reached": 2,
        ...        "steps_to_target": 100.0, "seconds_to_target": 0.5, "step_cost": 1.1,
        ...        "backward_passes": 1.0, "step_time_ms": 1.0, "peak_mem_mb": 300.0,
        ...        "diverged": 0, "errors": 0, "timeouts": 0, "stat_skipped_steps": 0.0}
        >>> print(markdown_table([row]).splitlines()[2])
        | sgd | lr=0.1 | 8 | 0.5 | 0.6 | [0.55, 0.7] | 0.61 | 0.9 | 2/3 | 100 | 0.5 | 1.1 | 1 | 1 | 300 | 0 | skipped_steps=0 |
    """
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    for r in rows:
        counters = ", ".join(f"{k[5:]}={_num(v, 3)}" for k, v in r.items()
                             if k.startswith("stat_") and k != "stat_steps")
        problems = []
        if r.get("errors"):
            problems.append(f"{r['errors']} error(s): {r.get('error', '')}")
        if r.get("timeouts"):
            problems.append(f"{r['timeouts']} timeout(s)")
        if problems:
            counters = "; ".join(([counters] if counters else []) + problems)
        all_diverged = r["runs"] > 0 and r.get("diverged", 0) == r["runs"]
        cells = [r["label"], r.get("hparams") or "defaults", str(r.get("trials", 0)),
                 "diverged" if all_diverged else format_spread(r, "final_loss"),
                 format_spread(r, "val_loss"), _ci(r, "val_loss"),
                 format_spread(r, "test_loss"), format_spread(r, "test_acc"),
                 f"{r['reached']}/{r['runs']}", _num(r.get("steps_to_target")),
                 _num(r.get("seconds_to_target"), 3), format_spread(r, "step_cost", 3),
                 _num(r.get("backward_passes"), 3), _num(r.get("step_time_ms"), 3),
                 _num(r.get("peak_mem_mb"), 4), str(r.get("diverged", 0)),
                 counters.replace("|", "/")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` as CSV; the columns are the union of their keys, in first-seen order.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
        >>> write_csv(p, [{"a": 1}, {"a": 2, "b": 3}]); print(p.read_text().strip())
        a,b
        1,
        2,3
    """
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def _plain(value: Any) -> Any:
    """A value parquet can hold: scalars as they are, anything else as JSON text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` as one parquet file (pyarrow); columns as in :func:`write_csv`.

    A column that mixes numbers and text is stored as text; lists and dicts
    as JSON text.

    Raises:
        ValueError: pyarrow is not installed (``pip install 'curvlab[parquet]'``).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.parquet"
        >>> write_parquet(p, [{"a": 1.0, "b": "x"}, {"a": 2.5}])
        >>> import pyarrow.parquet as pq
        >>> pq.read_table(p).to_pylist()
        [{'a': 1.0, 'b': 'x'}, {'a': 2.5, 'b': None}]
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("parquet output needs pyarrow: pip install 'curvlab[parquet]'") from None
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    data: dict[str, list[Any]] = {c: [_plain(r.get(c)) for r in rows] for c in cols}
    for c, vals in data.items():
        kinds = {type(v) for v in vals if v is not None}
        if kinds == {int, float}:
            data[c] = [None if v is None else float(v) for v in vals]
        elif len(kinds) > 1:
            data[c] = [None if v is None else str(v) for v in vals]
    pq.write_table(pa.table(data), path)


def _metric_columns(result: RunResult) -> dict[str, Any]:
    """A run's metrics as CSV columns, in alphabetical order (none for a failed run)."""
    return dict(sorted(result.metrics.to_dict().items())) if result.metrics is not None else {}


def _val(p: Any) -> float:
    v = p.val_loss if p.val_loss is not None else p.loss
    return v if v is not None else math.nan


def _median_curves(comp: Comparison) -> dict[str, list[tuple[int, float, float]]]:
    """Map label → [(step, median time, median validation loss)] over its runs, up to the shortest."""
    per: dict[str, list[list[Any]]] = {}
    for rec in comp.records():
        pts = [p for p in rec["result"].curve if p.kind == "eval"]
        if pts:
            per.setdefault(rec["label"], []).append(pts)
    out = {}
    for label, runs in per.items():
        n = min(len(r) for r in runs)
        out[label] = [(runs[0][i].step, median_iqr([r[i].time for r in runs])[0],
                       median_iqr([_val(r[i]) for r in runs])[0]) for i in range(n)]
    return out


def _plots(comp: Comparison, rows: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = _median_curves(comp)
    paths = []
    styles = ("-", "--", ":", "-.")
    for fname, idx, xlabel, what in (
        ("loss_vs_step.png", 0, "step", "steps"),
        ("loss_vs_time.png", 1, "training time [s] (evaluation excluded)", "time"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, (label, pts) in enumerate(curves.items()):
            xs = [p[idx] for p in pts]
            ys = [p[2] if math.isfinite(p[2]) and p[2] > 0 else math.nan for p in pts]
            ax.plot(xs, ys, label=label, ls=styles[(i // 10) % 4], color=f"C{i % 10}",
                    marker="." if len(xs) < 30 else None)
        ax.axhline(comp.target, color="gray", ls=":", lw=1, label=f"target {comp.target:g}")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation loss")
        ax.set_title(f"{comp.spec['problem']}: validation loss vs {what} (median over runs)")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        paths.append(out / fname)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = [r["label"] for r in rows]
    secs = [r["seconds_to_target"] if math.isfinite(r["seconds_to_target"]) else 0.0 for r in rows]
    bars = ax.bar(range(len(labels)), secs, color="tab:blue")
    for b, r in zip(bars, rows):
        if not math.isfinite(r["seconds_to_target"]):
            ax.text(b.get_x() + b.get_width() / 2, 0, "not\nreached", ha="center", va="bottom",
                    fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"median seconds to validation loss ≤ {comp.target:g}")
    ax.set_title(f"{comp.spec['problem']}: time to target")
    fig.tight_layout()
    fig.savefig(out / "time_to_target.png", dpi=110)
    plt.close(fig)
    paths.append(out / "time_to_target.png")
    return paths


def write_report(comp: Comparison, out_dir: str | Path,
                 formats: Sequence[str] = ("markdown",)) -> list[Path]:
    """Write the report files of ``comp`` into ``out_dir`` (see the module docstring).

    Reads the comparison's store only (a store opened read-only is enough).

    Raises:
        ValueError: ``out_dir`` cannot be created or written (names it), an
            unknown format, or parquet without pyarrow.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"report formats must be among {FORMATS}, got {list(formats)}")
    out = prepare_folder(out_dir)
    try:
        return _write_report(comp, out, formats)
    except OSError as err:
        raise ValueError(f"cannot write the report into {str(out)!r}: {err}") from None


def prepare_folder(out_dir: str | Path) -> Path:
    """Create the report folder ``out_dir`` (with parents) and check that it is writable.

    Call it before a long comparison so that a bad ``--report`` path fails
    before any run.

    Raises:
        ValueError: the folder cannot be created or is not writable (names it).

    Example:
        >>> import tempfile
        >>> prepare_folder(tempfile.mkdtemp()).is_dir()
        True
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create report folder {str(out)!r}: {err}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"report folder {str(out)!r} is not writable")
    return out


def protocol_lines(comp: Comparison) -> list[str]:
    """The protocol part of ``summary.md``: ruleset, trials, spaces, seeds, selection, schedule."""
    spec = comp.spec
    budget = ", ".join(f"{k}={spec.get(k)}" for k in ("steps", "seconds", "eval_every"))
    seeds = spec.get("seeds", 1)
    lines = [
        f"- kind: {spec['kind']}; budget per run: {budget}; schedule: "
        f"{spec.get('schedule', 'constant')} (warm-up {spec.get('warmup') or 0:g})",
        f"- device: {spec['device']}, dtype: {spec['dtype']}, threads: {spec['threads']}",
        f"- evaluation seeds: 0..{seeds - 1} (reported runs: median [inter-quartile range] "
        "over seeds and studies; 95 % percentile-bootstrap interval of the median)",
    ]
    if spec.get("kind") == "compare" or spec.get("retune"):
        ruleset = spec.get("ruleset", "tuned" if spec.get("tune") else "defaults")
        if ruleset == "tuned" or spec.get("retune") or spec.get("grids"):
            studies, tseed = spec.get("studies", 1), spec.get("tuning_seed", "?")
            lines.append(
                f"- ruleset: {ruleset}; {spec.get('trials', '?')} {spec.get('sampler', 'halton')} "
                f"trials per study, {studies} stud{'y' if studies == 1 else 'ies'}, tuning seeds "
                f"{tseed}.. (disjoint from the evaluation seeds); selection: "
                f"{spec.get('select', 'val-loss')} on the validation set"
                + ("; schedule tuned too" if spec.get("tune_schedule") else ""))
            for label, space in spec.get("spaces", {}).items():
                text = ", ".join(f"{k} {v}" for k, v in space.items()) or "nothing to tune"
                lines.append(f"  - {label}: {text}")
            if spec.get("retune"):
                lines.append(f"  - re-tuned in every cell: {', '.join(spec['retune'])}")
        else:
            lines.append("- ruleset: defaults (no tuning: schema defaults and fixed values)")
    lines += [
        f"- target (time-to-target): validation loss ≤ {comp.target:g}; losses are on the "
        "reported scale (auto-encoders: summed over pixels, mean over the batch); train loss = "
        "full training set at the end; accuracy counts target entries",
        "- cost (ref steps) = mean step time / mean time of the problem's plain SGD step, timed "
        "interleaved in the same run; grad evals = backward passes per step (counted); times "
        "exclude evaluation; peak MB = peak resident memory of the run's process (CPU) or peak "
        "allocated CUDA memory",
    ]
    mixed = comp.environments()
    if mixed:
        what = "; ".join(f"{k}: {' vs '.join(v)}" for k, v in mixed.items())
        lines.append(f"- **WARNING: the runs come from different environments** ({what}); "
                     "times and costs are not comparable across them")
    return lines


def _run_rows(comp: Comparison) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    run_rows, curve_rows = [], []
    for rec in comp.records(("tune", "final", "reference")):
        res, cfg = rec["result"], rec["config"]
        env = (res.provenance or {}).get("environment") or {}
        run_rows.append({"key": rec["key"], "role": rec["role"], "label": rec["label"],
                         "optimizer": cfg.optimizer, "seed": cfg.seed, "status": res.status,
                         "stop_reason": res.stop_reason, "error": res.error,
                         "hparams": ";".join(f"{k}={v}" for k, v in cfg.hparams.items()),
                         "schedule": cfg.schedule, "warmup": cfg.warmup,
                         "plugin_code": cfg.plugin_code,
                         "data_fingerprint": cfg.data_fingerprint,
                         **{f"env_{k}": env.get(k) for k in ("curvlab", "torch", "cpu", "git",
                                                             "host")},
                         **_metric_columns(res),
                         **{f"stat_{k}": v for k, v in res.stats.items()}})
        if rec["role"] != "tune":
            curve_rows += [{"label": rec["label"], "seed": cfg.seed, "step": p.step,
                            "time": p.time, "train_loss": p.loss, "val_loss": p.val_loss,
                            "val_acc": p.val_acc, "test_loss": p.test_loss,
                            "test_acc": p.test_acc} for p in res.curve if p.kind == "eval"]
    return run_rows, curve_rows


def _write_report(comp: Comparison, out: Path, formats: Sequence[str]) -> list[Path]:
    rows = comp.summary()
    run_rows, curve_rows = _run_rows(comp)
    paths: list[Path] = []
    if "markdown" in formats:
        md = [f"# curvlab comparison `{comp.id}`: {comp.spec['problem']}", "",
              *protocol_lines(comp), "", markdown_table(rows), "",
              "![validation loss vs step](loss_vs_step.png)",
              "![validation loss vs time](loss_vs_time.png)",
              "![time to target](time_to_target.png)", ""]
        (out / "summary.md").write_text("\n".join(md))
        write_csv(out / "summary.csv", rows)
        write_csv(out / "runs.csv", run_rows)
        write_csv(out / "curves.csv", curve_rows)
        paths += [out / n for n in REPORT_FILES[:4]] + _plots(comp, rows, out)
    if "parquet" in formats:
        for name, table in zip(PARQUET_FILES, (rows, run_rows, curve_rows)):
            write_parquet(out / name, table)
            paths.append(out / name)
    return paths


def _factor_markdown(rows: list[dict[str, Any]]) -> str:
    head = ["level", "problem", "runs", "val loss", "val 95% CI", "test loss", "reached",
            "s to target", "cost (ref steps)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["level"], r["problem"], str(r["runs"]), format_spread(r, "val_loss"),
                 _ci(r, "val_loss"), format_spread(r, "test_loss"), f"{r['reached']}/{r['runs']}",
                 _num(r.get("seconds_to_target"), 3), format_spread(r, "step_cost", 3)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _heatmap(ablation: Ablation, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    (fa, la), (fb, lb) = list(ablation.factors.items())[:2]
    cells = ablation.cells()
    problems = list(ablation.comparisons)
    fig, axes = plt.subplots(1, len(problems), figsize=(4.5 * len(problems), 4), squeeze=False)
    for ax, problem in zip(axes[0], problems):
        grid = np.full((len(la), len(lb)), np.nan)
        for c in cells:
            if c["problem"] == problem:
                i = next(k for k, v in enumerate(la) if repr(v) == repr(c[fa]))
                j = next(k for k, v in enumerate(lb) if repr(v) == repr(c[fb]))
                grid[i, j] = c["val_loss"] if math.isfinite(c["val_loss"]) else np.nan
        im = ax.imshow(grid, cmap="viridis_r", aspect="auto")
        for i in range(len(la)):
            for j in range(len(lb)):
                text = "∞" if math.isnan(grid[i, j]) else f"{grid[i, j]:.3g}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white")
        ax.set_xticks(range(len(lb)), [str(v) for v in lb], fontsize=8)
        ax.set_yticks(range(len(la)), [str(v) for v in la], fontsize=8)
        ax.set_xlabel(fb)
        ax.set_ylabel(fa)
        ax.set_title(f"{problem}: median validation loss", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_ablation_report(ablation: Ablation, out_dir: str | Path) -> list[Path]:
    """Write ``ablation.md`` (a table per factor, the cells), ``cells.csv``, ``factors.csv``, ``heatmap.png``.

    The heat map (median validation loss of every cell, one panel per
    problem) is written for two or more factors (the first two).

    Raises:
        ValueError: ``out_dir`` cannot be created or written.
    """
    out = prepare_folder(out_dir)
    cells = ablation.cells()
    factor_rows = [r for f in ablation.factors for r in ablation.factor_table(f)]
    md = [f"# curvlab ablation of {ablation.optimizer}: "
          + " × ".join(f"{k} ∈ {{{', '.join(str(v) for v in vs)}}}"
                       for k, vs in ablation.factors.items()),
          "", f"- problems: {', '.join(ablation.comparisons)}; re-tuned in every cell: "
              f"{', '.join(ablation.retune) or 'nothing'} (comparisons "
              f"{', '.join(c.id for c in ablation.comparisons.values())})", ""]
    first = next(iter(ablation.comparisons.values()))
    md += protocol_lines(first) + [""]
    for factor in ablation.factors:
        md += [f"## {factor}", "",
               "Each level pooled over the other factors' levels and the seeds.", "",
               _factor_markdown([r for r in factor_rows if r["factor"] == factor]), ""]
    md += ["## Cells", ""]
    for problem, comp in ablation.comparisons.items():
        md += [f"### {problem}", "", markdown_table(comp.summary()), ""]
    paths = [out / "ablation.md", out / "cells.csv", out / "factors.csv"]
    try:
        if len(ablation.factors) >= 2:
            _heatmap(ablation, out / "heatmap.png")
            md.append("![heat map](heatmap.png)")
            paths.append(out / "heatmap.png")
        (out / "ablation.md").write_text("\n".join(md) + "\n")
        write_csv(out / "cells.csv", [{k: (json.dumps(v) if k == "tuned" else v)
                                       for k, v in c.items()} for c in cells])
        write_csv(out / "factors.csv", factor_rows)
    except OSError as err:
        raise ValueError(f"cannot write the report into {str(out)!r}: {err}") from None
    return paths
