"""The Ray executor: a local cluster runs a comparison; --ray-address joins an existing one."""

import pytest

from curvlab.harness import RunSettings, compare

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'curvlab[ray]')")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_a_comparison_on_a_local_ray_cluster(local_ray):
    c = compare("quadratic", ["sgd", "adam"], steps=6, eval_every=3, seeds=2, executor="ray",
                jobs=2, store=":memory:")
    rows = {r["label"]: r for r in c.summary()}
    assert set(rows) == {"sgd", "adam"}
    assert all(r["runs"] == 2 and r["errors"] == 0 and r["step_cost"] > 0 for r in rows.values())
    serial = compare("quadratic", ["sgd", "adam"], steps=6, eval_every=3, seeds=2,
                     executor="serial", store=":memory:")
    for r in serial.summary():  # the same runs, wherever they ran
        assert rows[r["label"]]["val_loss"] == pytest.approx(r["val_loss"], rel=1e-6)


def test_ray_address_joins_an_existing_cluster(monkeypatch):
    """``--ray-address`` is handed to ``ray.init(address=...)`` (stopped there: no cluster here)."""
    calls = []

    class Joined(Exception):
        pass

    def fake_init(**kwargs):
        calls.append(kwargs)
        raise Joined()

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    with pytest.raises(Joined):
        compare("quadratic", ["sgd"], steps=2, executor="ray", ray_address="ray://head:10001",
                store=":memory:")
    assert calls and calls[0]["address"] == "ray://head:10001"
    with pytest.raises(ValueError, match="ray_address 'auto' needs executor 'ray'"):
        RunSettings(ray_address="auto")
