"""Long runs: checkpoints survive SIGKILL and resume bitwise; hung runs end as recorded timeouts."""

import signal
import subprocess
import sys
import time

import pytest

from curvlab.harness import RunSettings
from curvlab.harness.checkpoint import checkpoint_folder, load_checkpoint, save_checkpoint
from curvlab.harness.config import RunConfig
from curvlab.harness.executor import run_configs
from curvlab.harness.merge import MACHINE_METRICS
from curvlab.harness.runner import RunControls, Trajectory, execute, prepare
from curvlab.harness.store import Store

# K-FAC keeps Kronecker factors, inverses, momentum and a Monte-Carlo RNG in its state
KILLED = ["compare", "--problem", "digits-mlp", "--optimizers", "kfac", "--steps", "150",
          "--seconds", "none", "--eval-every", "10", "--checkpoint-every", "10",
          "--schedule", "cosine", "--executor", "serial", "--report", "none", "--no-progress"]


def _results(result):
    """Everything but the machine measurements (times, memory, resume point)."""
    m = {k: v for k, v in result.metrics.to_dict().items() if k not in MACHINE_METRICS}
    return m, sorted((p.kind, p.step, p.loss, p.val_loss, p.val_acc, p.test_loss, p.test_acc)
                     for p in result.curve)


def _cli(store):
    return [sys.executable, "-m", "curvlab.cli", *KILLED, "--store", str(store)]


def test_a_killed_run_resumes_from_its_checkpoint_bitwise(tmp_path):
    store = tmp_path / "s.sqlite"
    proc = subprocess.Popen(_cli(store), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    folder = checkpoint_folder(store)
    deadline = time.monotonic() + 180
    while not list(folder.glob("*.pt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    (ckpt,) = folder.glob("*.pt")
    key = ckpt.stem
    s = Store(store, readonly=True)
    assert s.status(key) == "running"
    s.close()
    again = subprocess.run(_cli(store), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    s = Store(store, readonly=True)
    resumed, config = s.result(key, curve=True), s.config(key)
    assert s.status(key) == "done" and resumed.metrics.resumed_from >= 10
    assert not list(folder.glob("*.pt"))  # deleted once the result is stored
    uninterrupted = execute(config)  # the same run, in one go, in this process
    assert uninterrupted.metrics.resumed_from == 0
    assert _results(resumed) == _results(uninterrupted)


# (optimizer, schedule): every built-in backend, each with a schedule (the lr changes per step)
RESUMES = [("sgd", "linear-decay"), ("adam", "warmup-cosine"), ("kfac", "cosine"),
           ("foof", "cosine"), ("kbfgs", "linear-decay"), ("groupednewton", "cosine")]


@pytest.mark.parametrize("opt, schedule", RESUMES, ids=[f"{o}-{s}" for o, s in RESUMES])
def test_checkpoints_in_process_resume_bitwise_and_refuse_another_run(tmp_path, opt, schedule):
    cfg = RunConfig("digits-mlp", opt, {}, seed=3, steps=40, eval_every=10, schedule=schedule)
    whole = execute(cfg)
    path = tmp_path / "c.pt"
    controls = RunControls(checkpoint=path, checkpoint_every=15)
    first = execute(cfg, controls)  # writes checkpoints at steps 15 and 30 (not at the end)
    assert first.metrics.resumed_from == 0 and path.exists()
    resumed = execute(cfg, controls)  # continues from step 30
    assert resumed.metrics.resumed_from == 30
    assert _results(first) == _results(whole) == _results(resumed)
    other = RunConfig("digits-mlp", opt, {}, seed=4, steps=40, eval_every=10)
    with pytest.raises(ValueError, match="belongs to run"):
        load_checkpoint(path, prepare(other), Trajectory())
    setup = prepare(cfg)
    save_checkpoint(path, setup, Trajectory())  # atomic rewrite
    assert path.exists() and not (tmp_path / "c.pt.tmp").exists()


HUNG = RunConfig("quadratic", "sgd", {"lr": 0.01}, seed=0, steps=10**8, seconds=None,
                 eval_every=10**7)


def test_a_hung_serial_run_is_recorded_as_a_timeout():
    store = Store(":memory:")
    t0 = time.monotonic()
    run_configs([HUNG], store, RunSettings(executor="serial", run_timeout=1.0))
    assert time.monotonic() - t0 < 30
    r = store.result(HUNG.key())
    assert r.status == "timeout" and r.stop_reason == "timeout" and "1 s" in r.error
    assert r.failed and r.ranked_val_loss == float("inf")
    # a timeout is a result under the same timeout, and gets another chance under a longer one
    assert not store.needs_run(HUNG.key(), 1.0)
    assert store.needs_run(HUNG.key(), 5.0) and store.needs_run(HUNG.key(), None)


def test_the_process_pool_survives_a_timeout(tmp_path):
    short = [RunConfig("quadratic", "sgd", {"lr": 0.01}, seed=s, steps=20) for s in (1, 2, 3)]
    store = Store(tmp_path / "s.sqlite")
    run_configs([HUNG, *short], store, RunSettings(executor="process", jobs=2, run_timeout=2.0))
    assert store.status(HUNG.key()) == "timeout"
    assert [store.status(c.key()) for c in short] == ["done"] * 3
