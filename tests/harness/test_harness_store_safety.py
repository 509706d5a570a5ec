"""Results store safety: foreign, damaged, non-SQLite, read-only and newer stores are refused untouched.

Each bad file is refused by ``Store`` (writable and read-only), by
``compare`` and by the CLI's ``compare`` and ``report`` (exit 2, one line
naming the file), and its bytes are unchanged afterwards. ``report`` never
writes: a good store, and a store from before the identity stamp, keep
their bytes too.
"""

import hashlib
import json
import os
import shutil
import sqlite3
import stat

import pytest

from curvlab.cli import main
from curvlab.harness.compare import compare
from curvlab.harness.store import APPLICATION_ID, STORE_FORMAT, Store, StoreError

RUN = dict(steps=4, eval_every=2, executor="serial")
CLI_COMPARE = ["compare", "--problem", "quadratic", "--optimizers", "sgd", "--steps", "4",
               "--eval-every", "2", "--executor", "serial", "--report", "none", "--no-progress"]


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A real store with one comparison (written once for the module)."""
    path = tmp_path_factory.mktemp("good") / "good.sqlite"
    compare("quadratic", ["sgd"], store=str(path), **RUN).store.close()
    return path


def _foreign_runs(path):
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, athlete TEXT, km REAL)")
        conn.execute("INSERT INTO runs VALUES (1, 'ann', 5.0)")


def _foreign_tables(path):
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")


def _foreign_app(path):
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA application_id = 1234")
        conn.execute("CREATE TABLE t (x)")


def _text_file(path):
    path.write_text("key,loss\nabc,0.5\n" * 200)


def _copy_and_overwrite(good):
    def make(path):
        shutil.copy(good, path)
        with open(path, "r+b") as fh:
            fh.seek(4096)  # page 2: a b-tree page of the runs table
            fh.write(b"\xde\xad\xbe\xef" * 256)
    return make


def _newer(good):
    def make(path):
        shutil.copy(good, path)
        with sqlite3.connect(path) as conn:
            conn.execute(f"PRAGMA user_version = {STORE_FORMAT + 1}")
    return make


def _read_only(good):
    def make(path):
        shutil.copy(good, path)
        os.chmod(path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    return make


BAD = [  # (id, maker, words in the message, also refused when opened read-only)
    ("foreign-runs-table", lambda good: _foreign_runs, ["not a curvlab results store", "table runs"], True),
    ("foreign-tables", lambda good: _foreign_tables, ["not a curvlab results store", "users"], True),
    ("foreign-application-id", lambda good: _foreign_app, ["another application", "0x000004d2"], True),
    ("not-sqlite", lambda good: _text_file, ["not an SQLite database"], True),
    ("overwritten-pages", _copy_and_overwrite, ["is damaged"], True),
    ("newer-format", _newer, [f"format {STORE_FORMAT + 1}", "newer curvlab"], True),
    ("read-only-file", _read_only, ["read-only"], False),
]


@pytest.fixture(params=BAD, ids=[b[0] for b in BAD])
def bad(request, good, tmp_path):
    name, maker, words, refused_read_only = request.param
    path = tmp_path / f"{name}.sqlite"
    maker(good)(path)
    yield path, words, refused_read_only
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)


def test_store_refuses_and_leaves_the_file(bad):
    path, words, refused_read_only = bad
    before = _digest(path)
    with pytest.raises(StoreError) as info:
        Store(path)
    assert str(path) in str(info.value) and all(w in str(info.value) for w in words)
    assert "\n" not in str(info.value)
    if refused_read_only:
        with pytest.raises(StoreError):
            Store(path, readonly=True)
    assert _digest(path) == before


def test_compare_refuses_before_running(bad):
    path, words, _ = bad
    before = _digest(path)
    with pytest.raises(ValueError, match="|".join(words)):
        compare("quadratic", ["sgd"], store=str(path), **RUN)
    assert _digest(path) == before


def test_cli_one_line_exit_2_file_untouched(bad, capsys):
    path, words, refused_read_only = bad
    before = _digest(path)
    argvs = [CLI_COMPARE + ["--store", str(path)]]
    if refused_read_only:
        argvs.append(["report", "--store", str(path), "--out", str(path.parent / "rep")])
    for argv in argvs:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("curvlab: error:") and len(err.strip().splitlines()) == 1, err
        assert str(path) in err and "Traceback" not in err
    assert _digest(path) == before


def test_report_is_read_only(good, tmp_path):
    copy = tmp_path / "copy.sqlite"
    shutil.copy(good, copy)
    before = _digest(copy)
    os.chmod(copy, stat.S_IRUSR)  # report works on a read-only file
    try:
        assert main(["report", "--store", str(copy), "--out", str(tmp_path / "rep")]) == 0
        assert main(["report", "--store", str(copy), "--profile", "--measure", "loss",
                     "--out", str(tmp_path / "rep")]) == 0
    finally:
        os.chmod(copy, stat.S_IRUSR | stat.S_IWUSR)
    assert _digest(copy) == before
    assert not (tmp_path / "copy.sqlite-journal").exists()


def test_report_of_a_missing_store_creates_nothing(tmp_path, capsys):
    path = tmp_path / "nope.sqlite"
    assert main(["report", "--store", str(path), "--out", str(tmp_path / "rep")]) == 2
    assert "does not exist" in capsys.readouterr().err and not path.exists()


def test_store_before_the_stamp_is_read_then_stamped(good, tmp_path):
    """Format 0 (no application id): read as it is, reused by compare, stamped when written."""
    legacy = tmp_path / "legacy.sqlite"
    shutil.copy(good, legacy)
    with sqlite3.connect(legacy) as conn:
        conn.execute("PRAGMA application_id = 0")
        conn.execute("PRAGMA user_version = 0")
    before = _digest(legacy)
    ro = Store(legacy, readonly=True)
    (cid, spec), = [(c, s) for c, _, s in ro.comparisons()]
    ro.close()
    assert _digest(legacy) == before
    store = Store(legacy)
    stamps = store.conn.execute("SELECT key, finished FROM runs ORDER BY key").fetchall()
    assert compare("quadratic", ["sgd"], store=store, **RUN).id == cid  # same settings, same id
    assert store.conn.execute("SELECT key, finished FROM runs ORDER BY key").fetchall() == stamps
    assert store.conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == STORE_FORMAT


def test_new_store_is_stamped_and_an_empty_file_is_accepted(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    for path in (tmp_path / "new.sqlite", empty):
        store = Store(path)
        assert store.conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert store.comparisons() == []
        store.close()


def test_unknown_metric_in_a_stored_run_is_refused_by_name(good, tmp_path):
    copy = tmp_path / "copy.sqlite"
    shutil.copy(good, copy)
    with sqlite3.connect(copy) as conn:
        conn.execute("""UPDATE runs SET metrics = '{"flops": 3}'""")
    store = Store(copy, readonly=True)
    key = store.conn.execute("SELECT key FROM runs").fetchone()[0]
    with pytest.raises(StoreError, match="unknown run metric.*flops"):
        store.result(key)


FORMAT_1 = """
CREATE TABLE runs (key TEXT PRIMARY KEY, problem TEXT, optimizer TEXT, seed INTEGER,
    config TEXT, version TEXT, status TEXT, stop_reason TEXT, metrics TEXT, stats TEXT,
    error TEXT, started REAL, finished REAL);
CREATE TABLE curves (key TEXT, kind TEXT, step INTEGER, time REAL, loss REAL, test_loss REAL,
    test_acc REAL, PRIMARY KEY (key, kind, step));
CREATE TABLE comparisons (id TEXT PRIMARY KEY, created REAL, spec TEXT);
CREATE TABLE members (comparison TEXT, key TEXT, role TEXT, label TEXT,
    PRIMARY KEY (comparison, key, role));
"""


def _format_1_store(path):
    """A store as curvlab wrote it before provenance and validation columns (format 1)."""
    config = {"problem": "quadratic", "optimizer": "sgd", "hparams": {"lr": 0.1}, "seed": 0,
              "problem_options": {"small": False, "data_dir": None}, "steps": 4,
              "seconds": 15.0, "eval_every": 2, "device": "cpu", "dtype": "float32",
              "threads": 1}
    spec = {"kind": "compare", "problem": "quadratic", "optimizers": ["sgd"], "tune": False,
            "select": "loss", "hparams": {}, "seeds": 1, "target": 0.02, "steps": 4,
            "seconds": 15.0, "eval_every": 2, "device": "cpu", "dtype": "float32", "threads": 1,
            "problem_options": {"small": False, "data_dir": None}, "shown": {"sgd": []}}
    metrics = {"steps": 4, "train_time": 0.01, "step_time": 0.0025, "initial_loss": 9.0,
               "final_loss": 5.0, "best_loss": 5.0, "final_test_loss": 5.5,
               "final_test_acc": None, "peak_mem_mb": 300.0, "mem_delta_mb": 1.0,
               "diverged": False, "optimum": 0.01, "warnings": 0, "warning_kinds": []}
    with sqlite3.connect(path) as conn:
        conn.executescript(FORMAT_1)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 1")
        conn.execute("INSERT INTO runs VALUES ('k1', 'quadratic', 'sgd', 0, ?, '0.1.0', 'done', "
                     "'steps', ?, '{}', '', 1.0, 2.0)", (json.dumps(config), json.dumps(metrics)))
        conn.executemany("INSERT INTO curves VALUES ('k1', 'eval', ?, ?, ?, ?, NULL)",
                         [(0, 0.0, 9.0, None), (2, 0.005, 7.0, None), (4, 0.01, 5.0, 5.5)])
        conn.execute("INSERT INTO comparisons VALUES ('old', 1.0, ?)", (json.dumps(spec),))
        conn.execute("INSERT INTO members VALUES ('old', 'k1', 'final', 'sgd')")


def test_a_format_1_store_is_reported_as_it_is_and_upgraded_when_written(tmp_path, capsys):
    path = tmp_path / "v1.sqlite"
    _format_1_store(path)
    before = _digest(path)
    assert main(["report", "--store", str(path), "--out", str(tmp_path / "rep")]) == 0
    assert "| sgd |" in capsys.readouterr().out and _digest(path) == before
    store = Store(path)  # opened for writing: upgraded in place
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == STORE_FORMAT == 2
    cols = {r[1] for r in store.conn.execute("PRAGMA table_info('curves')")}
    assert {"val_loss", "val_acc"} <= cols
    old = store.result("k1", curve=True)
    assert old.metrics.final_loss == 5.0 and old.provenance == {}
    assert [p.val_loss for p in old.curve] == [None, None, None]
    assert store.config("k1").plugin_code == "unrecorded"
    c = compare("quadratic", ["sgd"], store=store, **RUN)  # new runs next to the old ones
    assert c.id != "old" and len(store.keys()) == 2
