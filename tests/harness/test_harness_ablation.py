"""Ablation studies: cartesian products of factors on several problems, re-tuned per cell."""

import csv

import pytest

from curvlab.cli import main
from curvlab.harness import ablate
from curvlab.harness.ablation import cell_label, split_values
from curvlab.harness.search import trials

QUICK = dict(steps=6, eval_every=3, store=":memory:", executor="serial")


def test_two_factors_with_retune_give_each_cell_its_own_lr_from_the_same_trials():
    a = ablate(["quadratic", "teacher-student"], "sgd",
               {"momentum": [0.0, 0.9], "nesterov": [False, True]}, retune="lr", trials=4,
               **QUICK)
    cells = a.cells()
    assert len(cells) == 2 * 4  # problems x (2 x 2) cells
    drawn = sorted(t.hparams["lr"] for t in trials("sgd", 4, seed=1000))
    for comp in a.comparisons.values():
        tune = comp.records(("tune",))
        for cell in a.cells_levels():
            label = cell_label("sgd", cell)
            mine = [r for r in tune if r["label"] == label]
            assert len(mine) == 4  # the same budget in every cell ...
            assert sorted(r["config"].hparams["lr"] for r in mine) == pytest.approx(drawn)
            assert all(r["config"].hparams["momentum"] == cell["momentum"] for r in mine)
            best = min(mine, key=lambda r: r["result"].ranked_val_loss)
            (sel,) = comp.spec["selected"][label]
            assert sel["key"] == best["key"]  # ... and each cell its own winner
            finals = [r for r in comp.records(("final",)) if r["label"] == label]
            assert finals and all(r["config"].hparams["lr"] == best["config"].hparams["lr"]
                                  for r in finals)
    assert {c["trials"] for c in cells} == {4}


def test_factor_tables_pool_the_other_factors_and_the_heat_map_is_written(tmp_path):
    a = ablate("quadratic", "sgd", {"momentum": [0.0, 0.5], "nesterov": [False, True]},
               hparams={"lr": 0.05}, seeds=2, **QUICK)
    rows = a.factor_table("momentum")
    assert [r["level"] for r in rows] == ["0", "0.5"]
    assert all(r["runs"] == 4 for r in rows)  # 2 nesterov levels x 2 seeds
    assert all(r["val_loss_ci_low"] <= r["val_loss"] <= r["val_loss_ci_high"] for r in rows)
    with pytest.raises(KeyError, match="not a factor"):
        a.factor_table("lr")
    paths = a.report(tmp_path)
    assert [p.name for p in paths] == ["ablation.md", "cells.csv", "factors.csv", "heatmap.png"]
    md = (tmp_path / "ablation.md").read_text()
    assert "## momentum" in md and "## nesterov" in md and "heatmap.png" in md
    assert len(list(csv.DictReader(open(tmp_path / "cells.csv")))) == 4


def test_tuple_valued_levels_are_expressible():
    assert split_values("(0.9,0.999),(0.95,0.95)") == ["(0.9,0.999)", "(0.95,0.95)"]
    a = ablate("quadratic", "adam", {"betas": "(0.9,0.999),(0.5,0.9)"}, **QUICK)
    labels = [r["label"] for r in a.cells()]
    assert labels == ["adam betas=(0.9,0.999)", "adam betas=(0.5,0.9)"]
    finals = a.comparisons["quadratic"].records(("final",))
    assert sorted(tuple(r["config"].hparams["betas"]) for r in finals) == [(0.5, 0.9), (0.9, 0.999)]


def test_ruleset_tuned_retunes_every_spaced_hparam_not_varied():
    a = ablate("quadratic", "kfac", {"damping_heuristic": ["pi", "equal"]}, ruleset="tuned",
               trials=2, **QUICK)
    assert a.retune == ["lr", "damping"]


# (id, call kwargs, message)
REFUSED = [
    ("varied-and-fixed", dict(vary={"momentum": [0.0]}, hparams={"momentum": 0.5}),
     "sgd.momentum is varied; do not also fix it"),
    ("varied-and-retuned", dict(vary={"lr": [0.1]}, retune="lr"), "cannot also be re-tuned"),
    ("retune-without-space", dict(vary={"momentum": [0.0]}, retune="dampening"),
     "declares no search space"),
    ("no-levels", dict(vary={"momentum": []}), "no levels given for sgd.momentum"),
    ("duplicate-level", dict(vary={"momentum": ["0.5", 0.5]}), "a level is given twice"),
    ("nothing", dict(vary={}), "nothing to vary"),
    ("unknown", dict(vary={"momentm": [0.1]}), "did you mean 'momentum'"),
    ("range-without-levels", dict(vary="lr"), "no values to ablate for sgd.lr"),
]


@pytest.mark.parametrize("kwargs, message", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_bad_ablations_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ablate("quadratic", "sgd", **kwargs, **QUICK)


def test_cli_ablation_with_two_factors_and_retune(tmp_path, capsys):
    code = main(["ablate", "--problems", "quadratic", "--optimizer", "sgd",
                 "--vary", "momentum=0,0.9", "--vary", "nesterov=false,true", "--retune", "lr",
                 "--trials", "2", "--steps", "6", "--eval-every", "3", "--executor", "serial",
                 "--store", str(tmp_path / "s.sqlite"), "--report", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert code == 0
    assert "momentum:" in out and "nesterov:" in out
    assert (tmp_path / "rep" / "heatmap.png").stat().st_size > 0
