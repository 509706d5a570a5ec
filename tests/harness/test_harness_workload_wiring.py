"""The workloads in the harness: batch streams, evaluation subset, validation points, full sets at the end."""

import pytest

from curvlab.harness import RunSettings, compare
from curvlab.harness.config import RunConfig
from curvlab.harness.problems import load_problem
from curvlab.harness.runner import execute, prepare


def test_problem_settings_reach_the_batch_streams_and_the_stored_config():
    s = RunSettings(batch_size=32, fresh_batch_size=64, split_seed=3, eval_size=200, steps=4,
                    eval_every=2, store=":memory:", executor="serial")
    c = compare("digits-mlp", ["sgd"], settings=s)
    (rec,) = c.records(("final",))
    opts = rec["config"].problem_options
    assert (opts["batch_size"], opts["fresh_batch_size"], opts["split_seed"], opts["eval_size"]) \
        == (32, 64, 3, 200)
    setup = prepare(rec["config"])
    assert (setup.batches.batch_size, setup.fresh.batch_size) == (32, 64)
    assert setup.eval_x.shape[0] == 200 and rec["result"].metrics.eval_size == 200


def test_split_seed_changes_the_validation_rows_and_the_key():
    a = RunConfig("digits-mlp", "sgd", {}, 0, steps=2, problem_options=load_problem(
        "digits-mlp").options())
    b = RunConfig("digits-mlp", "sgd", {}, 0, steps=2, problem_options=load_problem(
        "digits-mlp", split_seed=1).options())
    assert a.key() != b.key()
    va, vb = prepare(a).data.x_val, prepare(b).data.x_val
    assert va.shape == vb.shape and not bool((va == vb).all())


def test_evaluation_points_validation_everywhere_test_at_the_end():
    cfg = RunConfig("digits-mlp", "adam", {}, seed=0, steps=9, eval_every=3,
                    problem_options=load_problem("digits-mlp", eval_size=300).options())
    r = execute(cfg)
    evals = [p for p in r.curve if p.kind == "eval"]
    assert [p.step for p in evals] == [0, 3, 6, 9]
    assert all(p.val_loss is not None and p.val_acc is not None for p in evals)
    assert all(p.test_loss is None for p in evals[:-1]) and evals[-1].test_loss is not None
    m = r.metrics
    assert m.final_val_loss == evals[-1].val_loss and m.final_test_loss == evals[-1].test_loss
    assert m.final_loss != evals[-1].loss  # full training set at the end, subset during training
    assert m.eval_size == 300 and 0 <= m.final_test_acc <= 1


def test_text_accuracy_counts_bytes_and_stays_a_fraction():
    cfg = RunConfig("text-transformer", "adam", {}, seed=0, steps=2, eval_every=2,
                    problem_options=load_problem("text-transformer", small=True,
                                                 eval_size=16).options())
    r = execute(cfg)
    assert r.status == "done", r.error
    assert 0.0 <= r.metrics.final_val_acc <= 1.0 and 0.0 <= r.metrics.final_test_acc <= 1.0


def test_problem_default_evaluation_period():
    assert RunConfig("fashion-mlp", "sgd", {}, 0, steps=2).eval_every == 100
    assert RunConfig("fashion-cnn", "sgd", {}, 0, steps=2).eval_every == 100
    assert RunConfig("fashion-autoencoder", "sgd", {}, 0, steps=2).eval_every == 25
    assert RunConfig("digits-mlp", "sgd", {}, 0, steps=2, eval_every=7).eval_every == 7


@pytest.mark.parametrize("option, value, message", [
    ("batch_size", 10**6, "batch_size must be in"),
    ("eval_size", 10**6, "eval_size must be in"),
])
def test_options_larger_than_the_data_are_refused_before_any_run(option, value, message):
    with pytest.raises(ValueError, match=message):
        compare("digits-mlp", ["sgd"], steps=2, store=":memory:", executor="serial",
                **{option: value})
