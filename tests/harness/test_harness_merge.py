"""curvlab merge: stores from several machines combine; conflicting rows are refused, named."""

import json

import pytest

from curvlab.cli import main
from curvlab.harness import compare
from curvlab.harness.compare import Comparison
from curvlab.harness.merge import merge_stores
from curvlab.harness.store import Store

QUICK = dict(steps=6, eval_every=3, executor="serial")


@pytest.fixture()
def two_machines(tmp_path):
    """Machine a compares sgd and adam, machine b sgd (the same runs) and kfac."""
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    ca = compare("quadratic", ["sgd", "adam"], store=str(a), seeds=2, **QUICK)
    cb = compare("quadratic", ["sgd", "kfac"], store=str(b), seeds=2, **QUICK)
    ca.store.close()
    cb.store.close()
    return a, b, ca.id, cb.id


def test_merge_two_stores(two_machines, tmp_path, capsys):
    a, b, ida, idb = two_machines
    out = tmp_path / "all.sqlite"
    assert main(["merge", str(a), str(b), "--out", str(out)]) == 0
    assert "merged 2 store(s)" in capsys.readouterr().out
    merged = Store(out, readonly=True)
    assert {cid for cid, _, _ in merged.comparisons()} == {ida, idb}
    assert len(merged.keys()) == 6  # sgd x 2 seeds shared, adam x 2, kfac x 2
    for cid in (ida, idb):
        spec = merged.comparison(cid)[1]
        rows = Comparison(cid, merged, spec).summary()
        assert all(r["runs"] == 2 and r["errors"] == 0 for r in rows)
    # merging again changes nothing
    s = merge_stores([a, b], out)
    assert (s.runs_added, s.comparisons_added, s.members_added) == (0, 0, 0)


def test_timing_differences_are_not_conflicts(two_machines, tmp_path):
    a, b, _, _ = two_machines
    store = Store(b)
    for key in store.keys():
        rec = store.record(key)
        m = json.loads(rec["run"]["metrics"])
        m["train_time"] *= 3  # another machine, slower
        rec["run"]["metrics"] = json.dumps(m)
        store.put_record(rec)
    store.close()
    s = merge_stores([a, b], tmp_path / "all.sqlite")
    assert s.runs_same == 2  # the two shared sgd runs agree


def test_conflicting_rows_are_refused_with_their_names(two_machines, tmp_path):
    a, b, _, _ = two_machines
    store = Store(b)
    sgd = [k for k in store.keys() if store.config(k).optimizer == "sgd"]
    rec = store.record(sgd[0])
    m = json.loads(rec["run"]["metrics"])
    m["final_val_loss"] += 1.0
    rec["run"]["metrics"] = json.dumps(m)
    store.put_record(rec)
    store.close()
    out = tmp_path / "all.sqlite"
    with pytest.raises(ValueError, match=rf"merge refused, nothing written: 1 conflicting row.*"
                                         rf"run {sgd[0]} \(quadratic/sgd seed \d\).*final_val_loss"):
        merge_stores([a, b], out)
    assert not Store(out).keys()  # nothing written
    assert main(["merge", str(a), str(b), "--out", str(tmp_path / "x.sqlite")]) == 2
    kept = merge_stores([a, b], out, on_conflict="first")
    assert len(kept.conflicts_kept_first) == 1 and sgd[0] in kept.conflicts_kept_first[0]
    first = json.loads(Store(out).record(sgd[0])["run"]["metrics"])["final_val_loss"]
    assert first == pytest.approx(m["final_val_loss"] - 1.0)


def test_a_finished_copy_replaces_an_unfinished_one(two_machines, tmp_path):
    a, b, _, _ = two_machines
    store = Store(b)
    key = [k for k in store.keys() if store.config(k).optimizer == "sgd"][0]
    store.mark_running(store.config(key))  # as if b was killed during that run
    store.close()
    out = tmp_path / "all.sqlite"
    merge_stores([b, a], out)
    assert Store(out).status(key) == "done"
