"""SQLite results store (stdlib :mod:`sqlite3`) with resume semantics.

Tables:

``runs``
    one row per run key (``RunConfig.key()``): config JSON, curvlab
    version, ``status`` (``running`` → ``done``/``error``), metrics and
    optimizer stats JSON, stop reason, error text.
``curves``
    ``(key, kind, step)`` → time, loss, test loss, test accuracy.
``members``
    which runs belong to which comparison, with their role (``tune``,
    ``final``, ``reference``) and label (optimizer name or ablation value).
``comparisons``
    id, creation time and the comparison's settings JSON.

Resume: a run is marked ``running`` before it starts; its result and
curve are written in one transaction that also sets ``done``. A killed
comparison therefore leaves ``running`` rows without curves, which a re-run
redoes (the key is the primary key: never duplicated), while ``done`` rows
are skipped.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from curvlab.harness.config import RunConfig
from curvlab.harness.runner import CurvePoint, RunResult

__all__ = ["Store"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY, problem TEXT, optimizer TEXT, seed INTEGER,
    config TEXT, version TEXT, status TEXT, stop_reason TEXT,
    metrics TEXT, stats TEXT, error TEXT, started REAL, finished REAL);
CREATE TABLE IF NOT EXISTS curves (
    key TEXT, kind TEXT, step INTEGER, time REAL, loss REAL,
    test_loss REAL, test_acc REAL, PRIMARY KEY (key, kind, step));
CREATE TABLE IF NOT EXISTS comparisons (id TEXT PRIMARY KEY, created REAL, spec TEXT);
CREATE TABLE IF NOT EXISTS members (
    comparison TEXT, key TEXT, role TEXT, label TEXT, PRIMARY KEY (comparison, key, role));
"""


def _dumps(obj: Any) -> str:
    def fix(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return repr(v)  # 'inf', 'nan' (JSON has no such numbers)
        return v

    return json.dumps({k: fix(v) for k, v in obj.items()}, sort_keys=True)


def _loads(text: str | None) -> dict[str, Any]:
    out = json.loads(text or "{}")
    return {k: (float(v) if v in ("inf", "-inf", "nan") else v) for k, v in out.items()}


class Store:
    """A results database file (created with its parent folder if missing).

    Args:
        path: SQLite file, or ``":memory:"``.

    Raises:
        ValueError: the path cannot be created or opened for writing (message
            names it).

    Example:
        >>> from curvlab.harness.runner import execute
        >>> s = Store(":memory:")
        >>> cfg = RunConfig("quadratic", "sgd", {"lr": 0.1}, seed=0, steps=5)
        >>> s.needs_run(cfg.key())
        True
        >>> s.mark_running(cfg); s.save(execute(cfg))
        >>> s.needs_run(cfg.key()), s.result(cfg.key()).metrics["steps"]
        (False, 5)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=30.0)
            self.conn.executescript(_SCHEMA)
            self.conn.commit()
        except (OSError, sqlite3.Error) as err:
            raise ValueError(f"cannot open results store {self.path!r} for writing: {err}") from None

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    # ---------------------------------------------------------------- runs
    def status(self, key: str) -> str | None:
        """``None`` (unknown), ``"running"``, ``"done"`` or ``"error"``."""
        row = self.conn.execute("SELECT status FROM runs WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def needs_run(self, key: str) -> bool:
        """True unless the run finished (``done``); errors and half-done runs are redone."""
        return self.status(key) != "done"

    def mark_running(self, config: RunConfig) -> None:
        """Record that ``config`` starts (replacing any half-done row and its curve)."""
        key = config.key()
        import curvlab

        with self.conn:
            self.conn.execute("DELETE FROM curves WHERE key = ?", (key,))
            self.conn.execute(
                "INSERT OR REPLACE INTO runs (key, problem, optimizer, seed, config, version, "
                "status, started) VALUES (?, ?, ?, ?, ?, ?, 'running', ?)",
                (key, config.problem, config.optimizer, config.seed,
                 json.dumps(config.to_dict(), sort_keys=True), curvlab.__version__, time.time()),
            )

    def save(self, result: RunResult) -> None:
        """Store a finished run (metrics, stats, curve) atomically."""
        with self.conn:
            self.conn.execute("DELETE FROM curves WHERE key = ?", (result.key,))
            self.conn.executemany(
                "INSERT INTO curves VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(result.key, p.kind, p.step, p.time, p.loss, p.test_loss, p.test_acc)
                 for p in result.curve],
            )
            self.conn.execute(
                "UPDATE runs SET status = ?, stop_reason = ?, metrics = ?, stats = ?, error = ?, "
                "finished = ? WHERE key = ?",
                (result.status, result.stop_reason, _dumps(result.metrics), _dumps(result.stats),
                 result.error, time.time(), result.key),
            )

    def config(self, key: str) -> RunConfig:
        """The stored config of run ``key``."""
        row = self.conn.execute("SELECT config FROM runs WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return RunConfig.from_dict(json.loads(row[0]))

    def result(self, key: str, *, curve: bool = False) -> RunResult:
        """The stored result of run ``key`` (with its curve when asked)."""
        row = self.conn.execute(
            "SELECT status, stop_reason, metrics, stats, error FROM runs WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            raise KeyError(key)
        points = self.curve(key) if curve else []
        return RunResult(key, row[0], row[1] or "", _loads(row[2]), _loads(row[3]), points,
                         row[4] or "")

    def curve(self, key: str) -> list[CurvePoint]:
        """The recorded points of run ``key``, batch points then eval points, by step."""
        rows = self.conn.execute(
            "SELECT kind, step, time, loss, test_loss, test_acc FROM curves WHERE key = ? "
            "ORDER BY kind, step", (key,)
        ).fetchall()
        # SQLite stores NaN as NULL: a NULL train loss is read back as NaN
        return [CurvePoint(k, st, t, math.nan if loss is None else loss, tl, ta)
                for k, st, t, loss, tl, ta in rows]

    def count_runs(self) -> dict[str, int]:
        """Number of runs per status."""
        rows = self.conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall()
        return dict(rows)

    # --------------------------------------------------------- comparisons
    def add_comparison(self, cid: str, spec: dict[str, Any]) -> None:
        """Create (or keep) comparison ``cid`` with its settings."""
        with self.conn:
            self.conn.execute(
                "INSERT OR IGNORE INTO comparisons VALUES (?, ?, ?)",
                (cid, time.time(), json.dumps(spec, sort_keys=True)),
            )

    def add_members(self, cid: str, rows: Iterable[tuple[str, str, str]]) -> None:
        """Attach ``(key, role, label)`` rows to comparison ``cid`` (idempotent)."""
        with self.conn:
            self.conn.executemany(
                "INSERT OR REPLACE INTO members VALUES (?, ?, ?, ?)",
                [(cid, k, role, label) for k, role, label in rows],
            )

    def members(self, cid: str) -> list[tuple[str, str, str]]:
        """``(key, role, label)`` rows of comparison ``cid``."""
        return self.conn.execute(
            "SELECT key, role, label FROM members WHERE comparison = ? ORDER BY rowid", (cid,)
        ).fetchall()

    def comparisons(self) -> list[tuple[str, float, dict[str, Any]]]:
        """``(id, created, spec)`` of every comparison, oldest first."""
        rows = self.conn.execute("SELECT id, created, spec FROM comparisons ORDER BY created")
        return [(r[0], r[1], json.loads(r[2])) for r in rows.fetchall()]

    def comparison(self, cid: str | None = None) -> tuple[str, dict[str, Any]]:
        """``(id, spec)`` of comparison ``cid`` (default: the latest).

        Raises:
            ValueError: no such comparison (lists the known ids).
        """
        known = self.comparisons()
        if not known:
            raise ValueError(f"results store {self.path!r} holds no comparison")
        if cid is None:
            return known[-1][0], known[-1][2]
        for k, _, spec in known:
            if k == cid:
                return k, spec
        raise ValueError(f"unknown comparison {cid!r}; known: {', '.join(k for k, _, _ in known)}")
