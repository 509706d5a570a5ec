"""Report files of a comparison: markdown and CSV tables, PNG plots (matplotlib, Agg).

Files written to the report folder:

- ``summary.md``: settings, then one table row per optimizer/label with
  final train loss (mean ± std over seeds), test loss/accuracy, runs
  reaching the target, steps and seconds to target, step time and its ratio
  to SGD, peak memory, divergences and optimizer counters;
- ``summary.csv``: the same rows, every column;
- ``runs.csv``: every run (tuning included) with its hparams and metrics;
- ``curves.csv``: every evaluation point of the final runs;
- ``loss_vs_step.png``, ``loss_vs_time.png``: full train loss (mean over
  seeds, log scale) against steps and against training seconds;
- ``time_to_target.png``: bar chart of the mean seconds to the target.

Performance profiles across several comparisons (problems) are written by
:func:`curvlab.harness.profiles.write_profile` (``curvlab report --profile``).
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curvlab.harness.results import RunResult

if TYPE_CHECKING:
    from curvlab.harness.compare import Comparison

__all__ = ["REPORT_FILES", "format_pm", "markdown_table", "prepare_folder", "write_csv", "write_report"]

REPORT_FILES = ("summary.md", "summary.csv", "runs.csv", "curves.csv",
                "loss_vs_step.png", "loss_vs_time.png", "time_to_target.png")


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
        return f"{v:.{digits}g}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]], n_seeds: int) -> str:
    """The summary rows as a GitHub-flavoured markdown table.

    Example:
        >>> row = {"label": "sgd", "hparams": "lr=0.1", "runs": 1, "final_loss": 0.5,
        ...        "final_loss_std": 0.0, "test_loss": 0.6, "test_loss_std": 0.0,
        ...        "test_acc": float("nan"), "test_acc_std": 0.0, "reached": 0,
        ...        "steps_to_target": float("nan"), "seconds_to_target": float("nan"),
        ...        "step_time_ms": 1.0, "ratio_vs_sgd": 1.0, "peak_mem_mb": 300.0,
        ...        "diverged": 0, "errors": 0, "stat_skipped_steps": 0.0}
        >>> print(markdown_table([row], 1).splitlines()[2])
        | sgd | lr=0.1 | 0.5 ± 0 | 0.6 ± 0 | — | 0/1 | — | — | 1 | 1 | 300 | 0 | skipped_steps=0 |
    """
    head = ["optimizer", "hparams", "final train loss", "test loss", "test acc",
            "reached target", "steps to target", "s to target", "ms/step", "× SGD",
            "peak MB", "diverged", "counters"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        counters = ", ".join(f"{k[5:]}={_num(v, 3)}" for k, v in r.items()
                             if k.startswith("stat_") and k != "stat_steps")
        if r.get("errors"):
            counters = (counters + "; " if counters else "") + f"{r['errors']} error(s): {r.get('error', '')}"
        all_diverged = r["runs"] > 0 and r["diverged"] == r["runs"]
        cells = [r["label"], r["hparams"] or "defaults",
                 "diverged" if all_diverged else format_pm(r["final_loss"], r["final_loss_std"]),
                 format_pm(r["test_loss"], r["test_loss_std"]),
                 format_pm(r["test_acc"], r["test_acc_std"]),
                 f"{r['reached']}/{r['runs']}", _num(r["steps_to_target"]),
                 _num(r["seconds_to_target"], 3), _num(r["step_time_ms"], 3),
                 _num(r["ratio_vs_sgd"], 3), _num(r["peak_mem_mb"], 4), str(r["diverged"]),
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


def _metric_columns(result: RunResult) -> dict[str, Any]:
    """A run's metrics as CSV columns, in alphabetical order (none for a failed run)."""
    return dict(sorted(result.metrics.to_dict().items())) if result.metrics is not None else {}


def _mean_curves(comp: Comparison) -> dict[str, list[tuple[int, float, float]]]:
    """Map label → [(step, mean time, mean loss)] over seeds, up to the shortest run."""
    per: dict[str, list[list[Any]]] = {}
    for rec in comp.records():
        pts = [p for p in rec["result"].curve if p.kind == "eval"]
        if pts:
            per.setdefault(rec["label"], []).append(pts)
    out = {}
    for label, runs in per.items():
        n = min(len(r) for r in runs)
        out[label] = [(runs[0][i].step,
                       sum(r[i].time for r in runs) / len(runs),
                       sum(r[i].loss for r in runs) / len(runs)) for i in range(n)]
    return out


def _plots(comp: Comparison, rows: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = _mean_curves(comp)
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
        ax.set_ylabel("full train loss")
        ax.set_title(f"{comp.spec['problem']}: train loss vs {what} (mean over seeds)")
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
    ax.set_ylabel(f"seconds to train loss ≤ {comp.target:g}")
    ax.set_title(f"{comp.spec['problem']}: time to target")
    fig.tight_layout()
    fig.savefig(out / "time_to_target.png", dpi=110)
    plt.close(fig)
    paths.append(out / "time_to_target.png")
    return paths


def write_report(comp: Comparison, out_dir: str | Path) -> list[Path]:
    """Write the report files (:data:`REPORT_FILES`) of ``comp`` into ``out_dir``.

    Reads the comparison's store only (a store opened read-only is enough).

    Raises:
        ValueError: ``out_dir`` cannot be created or written (names it).
    """
    out = prepare_folder(out_dir)
    try:
        return _write_report(comp, out)
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


def _write_report(comp: Comparison, out: Path) -> list[Path]:
    rows = comp.summary()
    spec = comp.spec
    budget = ", ".join(f"{k}={spec.get(k)}" for k in ("steps", "seconds", "eval_every"))
    md = [
        f"# curvlab comparison `{comp.id}`: {spec['problem']}",
        "",
        f"- kind: {spec['kind']}; seeds: {spec['seeds']}; budget per run: {budget}",
        f"- device: {spec['device']}, dtype: {spec['dtype']}, threads: {spec['threads']}; "
        f"tuning: {spec.get('tune', False)} (criterion: {spec.get('select', '-')})",
        f"- target (time-to-target): full train loss ≤ {comp.target:g}; losses are on the "
        "reported scale (auto-encoders: summed over pixels, mean over the batch)",
        "- mean ± std over seeds; times exclude evaluation; × SGD = step time / SGD's step time "
        "in this comparison; peak MB = peak resident memory of the run's process (CPU) or "
        "peak allocated CUDA memory",
        "",
        markdown_table(rows, spec["seeds"]),
        "",
        "![loss vs step](loss_vs_step.png)",
        "![loss vs time](loss_vs_time.png)",
        "![time to target](time_to_target.png)",
        "",
    ]
    (out / "summary.md").write_text("\n".join(md))
    write_csv(out / "summary.csv", rows)
    run_rows, curve_rows = [], []
    for rec in comp.records(("tune", "final", "reference")):
        res, cfg = rec["result"], rec["config"]
        run_rows.append({"key": rec["key"], "role": rec["role"], "label": rec["label"],
                         "optimizer": cfg.optimizer, "seed": cfg.seed, "status": res.status,
                         "stop_reason": res.stop_reason, "error": res.error,
                         "hparams": ";".join(f"{k}={v}" for k, v in cfg.hparams.items()),
                         **_metric_columns(res),
                         **{f"stat_{k}": v for k, v in res.stats.items()}})
        if rec["role"] != "tune":
            curve_rows += [{"label": rec["label"], "seed": cfg.seed, "step": p.step,
                            "time": p.time, "train_loss": p.loss, "test_loss": p.test_loss,
                            "test_acc": p.test_acc} for p in res.curve if p.kind == "eval"]
    write_csv(out / "runs.csv", run_rows)
    write_csv(out / "curves.csv", curve_rows)
    paths = [out / n for n in REPORT_FILES[:4]]
    return paths + _plots(comp, rows, out)
