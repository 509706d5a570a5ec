"""SQLite results store (stdlib :mod:`sqlite3`) with resume semantics and an identity check.

Tables:

``runs``
    one row per run key (``RunConfig.key()``): config JSON, curvlab
    version, ``status`` (``running`` → ``done``/``error``/``timeout``),
    metrics (:class:`~curvlab.harness.results.RunMetrics` as JSON) and
    optimizer stats JSON, stop reason, error text, and the run's provenance
    JSON (:mod:`curvlab.harness.provenance`: versions, hardware, git commit,
    data checksums, plugin code hash).
``curves``
    ``(key, kind, step)`` → time, train loss (evaluation subset), test loss
    and accuracy (last point), validation loss and accuracy.
``members``
    which runs belong to which comparison, with their role (``tune``,
    ``final``, ``reference``) and label (optimizer name or ablation value).
``comparisons``
    id, creation time and the comparison's settings JSON.

Identity: a store carries SQLite's ``application_id`` :data:`APPLICATION_ID`
and its format number :data:`STORE_FORMAT` in ``user_version``. Stores
written before the stamp existed (format 0: application id 0 and exactly
these tables) and format-1 stores (without the provenance and validation
columns) are read as they are (the missing values read as ``None``) and
upgraded in place, in one transaction, when opened for writing.
Before anything is written, and also when a store is opened read-only, the
file is checked: it must be an SQLite database, pass ``PRAGMA quick_check``,
carry no other application's id, hold no table but these four with these
columns, and have a format this curvlab reads. Anything else is refused
with a :class:`StoreError` naming the file and the problem, and the file is
left untouched. ``Store(path, readonly=True)`` (what ``curvlab report``
uses) opens the file read-only and never creates anything.

Resume: a run is marked ``running`` before it starts; its result and
curve are written in one transaction that also sets ``done``. A killed
comparison therefore leaves ``running`` rows without curves, which a re-run
redoes (the key is the primary key: never duplicated), while ``done`` rows
are skipped.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from curvlab.harness.config import RunConfig
from curvlab.harness.results import CurvePoint, RunMetrics, RunResult

__all__ = ["APPLICATION_ID", "FINISHED", "STORE_FORMAT", "Store", "StoreError"]

#: SQLite ``application_id`` of a curvlab results store (ASCII ``cvlb``).
APPLICATION_ID = 0x63766C62
#: Format number in ``user_version``: 1 = the four tables, stamped; 2 = with the
#: ``provenance`` column of ``runs`` and the validation columns of ``curves``.
STORE_FORMAT = 2
#: Statuses of a finished run (a result); others (``running``, ``error``) are redone.
FINISHED = ("done", "timeout")

_SCHEMA_V1 = """
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
#: What format 2 adds to format 1 (also the upgrade, column by column).
_ADDED_V2 = (("runs", "provenance", "TEXT"), ("curves", "val_loss", "REAL"),
             ("curves", "val_acc", "REAL"))
_SCHEMA = (_SCHEMA_V1.replace("started REAL, finished REAL)", "started REAL, finished REAL, "
                              "provenance TEXT)")
           .replace("test_acc REAL, PRIMARY KEY", "test_acc REAL, val_loss REAL, val_acc REAL, "
                    "PRIMARY KEY"))
_CURVE_COLUMNS = ("key", "kind", "step", "time", "loss", "test_loss", "test_acc", "val_loss",
                  "val_acc")


class StoreError(ValueError):
    """The results store cannot be used: not SQLite, damaged, foreign, newer, read-only, missing."""


def _dumps(obj: dict[str, Any]) -> str:
    def fix(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return repr(v)  # 'inf', 'nan' (JSON has no such numbers)
        return v

    return json.dumps({k: fix(v) for k, v in obj.items()}, sort_keys=True)


def _loads(text: str | None) -> dict[str, Any]:
    out = json.loads(text or "{}")
    return {k: (float(v) if v in ("inf", "-inf", "nan") else v) for k, v in out.items()}


def _columns(conn: sqlite3.Connection) -> dict[str, list[tuple[str, str, int]]]:
    """``table → [(column, declared type, primary-key position)]`` of the user tables."""
    names = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name")]
    return {t: [(r[1], r[2], r[5]) for r in conn.execute(f"PRAGMA table_info('{t}')")]
            for t in names}


def _expected_columns(schema: str = _SCHEMA) -> dict[str, list[tuple[str, str, int]]]:
    with contextlib.closing(sqlite3.connect(":memory:")) as mem:
        mem.executescript(schema)
        return _columns(mem)


def _is_read_only(path: Path) -> bool:
    mode = path.stat().st_mode
    no_write_bit = not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    return no_write_bit or not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK)


class Store:
    """A results database file (created with its parent folder if missing, unless read-only).

    Args:
        path: SQLite file, or ``":memory:"``.
        readonly: Open the file read-only (it must exist); nothing is ever
            created or written.

    Raises:
        StoreError: (a ``ValueError``) the file is missing (read-only), cannot
            be created or written, is not an SQLite database, is damaged,
            belongs to another application, or has a newer format; the
            message names the file and the problem, and the file is not
            modified.

    Example:
        >>> from curvlab.harness.runner import execute
        >>> s = Store(":memory:")
        >>> cfg = RunConfig("quadratic", "sgd", {"lr": 0.1}, seed=0, steps=5)
        >>> s.needs_run(cfg.key())
        True
        >>> s.mark_running(cfg); s.save(execute(cfg))
        >>> s.needs_run(cfg.key()), s.result(cfg.key()).metrics.steps
        (False, 5)
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = str(path)
        self.readonly = readonly
        self.conn = self._connect()
        try:
            current = self._check()
            if not readonly and not current:
                self._stamp()
        except BaseException:
            self.conn.close()
            raise

    # ------------------------------------------------------------ opening
    def _connect(self) -> sqlite3.Connection:
        where = self.path
        if where == ":memory:":
            return sqlite3.connect(where)
        file = Path(where)
        if self.readonly:
            if not file.is_file():
                raise StoreError(f"results store {where!r} does not exist")
            try:
                return sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
            except sqlite3.Error as err:
                raise StoreError(f"cannot open results store {where!r}: {err}") from None
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            if file.exists() and _is_read_only(file):
                raise StoreError(f"results store {where!r} is read-only; pass another --store "
                                 "to write new runs (curvlab report reads it as it is)")
            return sqlite3.connect(where, timeout=30.0)
        except (OSError, sqlite3.Error) as err:
            raise StoreError(f"cannot open results store {where!r} for writing: {err}") from None

    def _check(self) -> bool:
        """Refuse anything but a curvlab store (reads only); True when it needs no stamp."""
        where = self.path
        try:
            app_id = self.conn.execute("PRAGMA application_id").fetchone()[0]
            fmt = self.conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as err:
            raise StoreError(f"{where!r} is not an SQLite database, so not a curvlab results "
                             f"store ({err})") from None
        if app_id not in (0, APPLICATION_ID):
            raise StoreError(f"{where!r} is not a curvlab results store (it belongs to another "
                             f"application: SQLite application_id {app_id:#010x})")
        try:
            problems = [r[0] for r in self.conn.execute("PRAGMA quick_check").fetchall()]
            tables = _columns(self.conn)
        except sqlite3.Error as err:
            raise StoreError(f"results store {where!r} is damaged: {err}") from None
        if problems != ["ok"]:
            lines = [ln.strip() for p in problems for ln in str(p).splitlines()
                     if ln.strip() and not ln.startswith("***")] or [str(problems[0])]
            extra = f" (+{len(lines) - 1} more)" if len(lines) > 1 else ""
            raise StoreError(f"results store {where!r} is damaged: {lines[0]}{extra}")
        if app_id == APPLICATION_ID and fmt > STORE_FORMAT:
            raise StoreError(f"results store {where!r} has format {fmt}, written by a newer "
                             f"curvlab; this one reads formats up to {STORE_FORMAT}")
        expected = _expected_columns()
        legacy = _expected_columns(_SCHEMA_V1)
        foreign = sorted(set(tables) - set(expected))
        if foreign:
            raise StoreError(f"{where!r} is not a curvlab results store: it holds table(s) "
                             f"{', '.join(foreign)}")
        old = app_id == 0 or fmt < STORE_FORMAT
        for name, cols in tables.items():
            if cols != expected[name] and not (old and cols == legacy[name]):
                raise StoreError(
                    f"{where!r} is not a curvlab results store: table {name} has columns "
                    f"({', '.join(c[0] for c in cols)}), expected "
                    f"({', '.join(c[0] for c in expected[name])})")
        self._present = {t: {c[0] for c in cols} for t, cols in tables.items()}
        return (app_id == APPLICATION_ID and fmt == STORE_FORMAT and set(tables) == set(expected)
                and all(tables[t] == expected[t] for t in tables))

    def _stamp(self) -> None:
        """Create the missing tables, add format 2's columns, stamp identity and format: one transaction."""
        with self._guard("initialise it"):
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                present = _columns(self.conn)
                for table, column, kind in _ADDED_V2:
                    if column not in {c[0] for c in present[table]}:
                        self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                self.conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                self.conn.execute(f"PRAGMA user_version = {STORE_FORMAT}")
            except BaseException:
                self.conn.rollback()
                raise
            self.conn.commit()
        self._present = {t: {c[0] for c in cols} for t, cols in _columns(self.conn).items()}

    def _has(self, table: str, column: str) -> bool:
        return column in self._present.get(table, set())

    def _col(self, table: str, column: str) -> str:
        """``column``, or ``NULL`` when an old store (opened read-only) lacks it."""
        return column if self._has(table, column) else "NULL"

    @contextlib.contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turn an SQLite error into a :class:`StoreError` naming the file and the action."""
        try:
            yield
        except sqlite3.Error as err:
            raise StoreError(f"results store {self.path!r}: cannot {action}: {err}") from None

    def _rows(self, action: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._guard(action):
            return self.conn.execute(sql, params).fetchall()

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    # ---------------------------------------------------------------- runs
    def status(self, key: str) -> str | None:
        """``None`` (unknown), ``"running"``, ``"done"`` or ``"error"``."""
        rows = self._rows("read a run", "SELECT status FROM runs WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def needs_run(self, key: str, run_timeout: float | None = None) -> bool:
        """True unless the run finished.

        ``done`` runs are kept; errors and half-done (``running``) runs are
        redone. A ``timeout`` is a result too, unless ``run_timeout`` (the
        timeout in effect now) is larger than the one it was stopped by, or
        ``None`` (no timeout): then it gets its longer chance.
        """
        status = self.status(key)
        if status == "timeout":
            rows = self._rows("read a run", f"SELECT {self._col('runs', 'provenance')} FROM runs "
                              "WHERE key = ?", (key,))
            before = json.loads(rows[0][0] or "{}").get("run_timeout") if rows else None
            return run_timeout is None or before is None or run_timeout > float(before)
        return status != "done"

    def mark_running(self, config: RunConfig) -> None:
        """Record that ``config`` starts (replacing any half-done row and its curve)."""
        import curvlab

        key = config.key()
        with self._guard("record a run"), self.conn:
            self.conn.execute("DELETE FROM curves WHERE key = ?", (key,))
            self.conn.execute(
                "INSERT OR REPLACE INTO runs (key, problem, optimizer, seed, config, version, "
                "status, started) VALUES (?, ?, ?, ?, ?, ?, 'running', ?)",
                (key, config.problem, config.optimizer, config.seed,
                 json.dumps(config.to_dict(), sort_keys=True), curvlab.__version__, time.time()),
            )

    def save(self, result: RunResult) -> None:
        """Store a finished run (metrics, stats, curve, provenance) atomically."""
        metrics = result.metrics.to_dict() if result.metrics is not None else {}
        with self._guard("save a run"), self.conn:
            self.conn.execute("DELETE FROM curves WHERE key = ?", (result.key,))
            self.conn.executemany(
                f"INSERT INTO curves ({', '.join(_CURVE_COLUMNS)}) VALUES "
                f"({', '.join('?' * len(_CURVE_COLUMNS))})",
                [(result.key, p.kind, p.step, p.time, p.loss, p.test_loss, p.test_acc,
                  p.val_loss, p.val_acc) for p in result.curve],
            )
            self.conn.execute(
                "UPDATE runs SET status = ?, stop_reason = ?, metrics = ?, stats = ?, error = ?, "
                "finished = ?, provenance = ? WHERE key = ?",
                (result.status, result.stop_reason, _dumps(metrics), _dumps(result.stats),
                 result.error, time.time(), json.dumps(result.provenance, sort_keys=True),
                 result.key),
            )

    def config(self, key: str) -> RunConfig:
        """The stored config of run ``key``.

        Raises:
            KeyError: no such run.
            StoreError: the stored config is not one this curvlab reads.
        """
        rows = self._rows("read a run", "SELECT config FROM runs WHERE key = ?", (key,))
        if not rows:
            raise KeyError(key)
        try:
            return RunConfig.from_dict(json.loads(rows[0][0]))
        except (TypeError, ValueError) as err:
            raise StoreError(f"results store {self.path!r}: run {key} has a config this "
                             f"curvlab cannot read: {err}") from None

    def result(self, key: str, *, curve: bool = False) -> RunResult:
        """The stored result of run ``key`` (with its curve when asked).

        Raises:
            KeyError: no such run.
            StoreError: the stored metrics are not ones this curvlab reads.
        """
        rows = self._rows("read a run",
                          "SELECT status, stop_reason, metrics, stats, error, "
                          f"{self._col('runs', 'provenance')} FROM runs WHERE key = ?", (key,))
        if not rows:
            raise KeyError(key)
        status, stop, metrics, stats, error, prov = rows[0]
        values = _loads(metrics)
        try:
            record = RunMetrics.from_dict(values) if values else None
        except (TypeError, ValueError) as err:
            raise StoreError(f"results store {self.path!r}: run {key}: {err}") from None
        points = self.curve(key) if curve else []
        return RunResult(key, status, stop or "", record, _loads(stats), points, error or "",
                         json.loads(prov or "{}"))

    def curve(self, key: str) -> list[CurvePoint]:
        """The recorded points of run ``key``, batch points then eval points, by step."""
        vl, va = self._col("curves", "val_loss"), self._col("curves", "val_acc")
        rows = self._rows(
            "read a curve",
            f"SELECT kind, step, time, loss, test_loss, test_acc, {vl}, {va} FROM curves "
            "WHERE key = ? ORDER BY kind, step", (key,))
        # SQLite stores NaN as NULL: a NULL train loss is read back as NaN
        return [CurvePoint(k, st, t, math.nan if loss is None else loss, tl, ta, v, a)
                for k, st, t, loss, tl, ta, v, a in rows]

    # ------------------------------------------------------- raw records
    def keys(self) -> list[str]:
        """Every run key, in insertion order."""
        return [r[0] for r in self._rows("list runs", "SELECT key FROM runs ORDER BY rowid")]

    def record(self, key: str) -> dict[str, Any]:
        """Run ``key`` as stored: ``{"run": {column: value}, "curve": [{column: value}]}``.

        What :meth:`put_record` writes back (used to merge stores).

        Raises:
            KeyError: no such run.
        """
        cols = [c for c in ("key", "problem", "optimizer", "seed", "config", "version", "status",
                            "stop_reason", "metrics", "stats", "error", "started", "finished",
                            "provenance") if c != "provenance" or self._has("runs", c)]
        rows = self._rows("read a run", f"SELECT {', '.join(cols)} FROM runs WHERE key = ?", (key,))
        if not rows:
            raise KeyError(key)
        run = dict(zip(cols, rows[0]))
        run.setdefault("provenance", None)
        ccols = [c for c in _CURVE_COLUMNS if self._has("curves", c)]
        curve = [dict(zip(ccols, r)) for r in self._rows(
            "read a curve", f"SELECT {', '.join(ccols)} FROM curves WHERE key = ? "
            "ORDER BY kind, step", (key,))]
        return {"run": run, "curve": curve}

    def put_record(self, record: dict[str, Any]) -> None:
        """Write a :meth:`record` (replacing the run and its curve), atomically."""
        run = record["run"]
        key = run["key"]
        with self._guard("save a run"), self.conn:
            self.conn.execute("DELETE FROM curves WHERE key = ?", (key,))
            names = list(run)
            self.conn.execute(f"INSERT OR REPLACE INTO runs ({', '.join(names)}) VALUES "
                              f"({', '.join('?' * len(names))})", [run[n] for n in names])
            for point in record["curve"]:
                cols = list(point)
                self.conn.execute(f"INSERT INTO curves ({', '.join(cols)}) VALUES "
                                  f"({', '.join('?' * len(cols))})", [point[c] for c in cols])

    def count_runs(self) -> dict[str, int]:
        """Number of runs per status."""
        return dict(self._rows("count runs", "SELECT status, COUNT(*) FROM runs GROUP BY status"))

    # --------------------------------------------------------- comparisons
    def add_comparison(self, cid: str, spec: dict[str, Any], *, created: float | None = None) -> None:
        """Create (or keep) comparison ``cid`` with its settings (``created``: default now)."""
        with self._guard("record a comparison"), self.conn:
            self.conn.execute(
                "INSERT OR IGNORE INTO comparisons VALUES (?, ?, ?)",
                (cid, time.time() if created is None else created,
                 json.dumps(spec, sort_keys=True)),
            )

    def update_comparison(self, cid: str, spec: dict[str, Any]) -> None:
        """Replace the settings JSON of comparison ``cid`` (adds what tuning selected)."""
        with self._guard("record a comparison"), self.conn:
            self.conn.execute("UPDATE comparisons SET spec = ? WHERE id = ?",
                              (json.dumps(spec, sort_keys=True), cid))

    def add_members(self, cid: str, rows: Iterable[tuple[str, str, str]]) -> None:
        """Attach ``(key, role, label)`` rows to comparison ``cid`` (idempotent)."""
        with self._guard("record a comparison"), self.conn:
            self.conn.executemany(
                "INSERT OR REPLACE INTO members VALUES (?, ?, ?, ?)",
                [(cid, k, role, label) for k, role, label in rows],
            )

    def members(self, cid: str) -> list[tuple[str, str, str]]:
        """``(key, role, label)`` rows of comparison ``cid``."""
        return self._rows("read a comparison",
                          "SELECT key, role, label FROM members WHERE comparison = ? ORDER BY rowid",
                          (cid,))

    def comparisons(self) -> list[tuple[str, float, dict[str, Any]]]:
        """``(id, created, spec)`` of every comparison, oldest first."""
        if not self._rows("read comparisons", "SELECT name FROM sqlite_master "
                          "WHERE type = 'table' AND name = 'comparisons'"):
            return []  # an empty database opened read-only
        rows = self._rows("read comparisons", "SELECT id, created, spec FROM comparisons "
                          "ORDER BY created")
        return [(r[0], r[1], json.loads(r[2])) for r in rows]

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
