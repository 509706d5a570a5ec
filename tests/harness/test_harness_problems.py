"""Problems: determinism (data, init, batch order), splits, options, training, identical stream for every optimizer."""

import hashlib
import math
import warnings

import numpy as np
import pytest
import torch

import curvlab
from curvlab.harness.config import RunConfig
from curvlab.harness.problems import (
    BatchStream,
    Dataset,
    Problem,
    available_problems,
    load_problem,
)
from curvlab.harness.problems.idx import write_idx
from curvlab.harness.runner import FRESH_SEED_OFFSET, execute
from curvlab_plugins.baselines import SGD, Adam

IDX_PROBLEMS = ["mnistmlp", "mnistautoencoder", "mnistcnn",
                "fashionmlp", "fashionautoencoder", "fashioncnn"]
SEQUENTIAL = ["digitsmlp", "digitscnn", "digitsautoencoder", "curvesautoencoder",
              "teacherstudent", "quadratic", "mnistmlp", "mnistautoencoder",
              "fashionmlp", "fashionautoencoder"]
MODULAR = ["mnistcnn", "fashioncnn", "texttransformer"]  # not nn.Sequential
BUILTIN = SEQUENTIAL + MODULAR
ALLOWED = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ReLU, torch.nn.Sigmoid, torch.nn.Tanh,
           torch.nn.Flatten, torch.nn.MaxPool2d)
LOSSES = (torch.nn.MSELoss, torch.nn.CrossEntropyLoss, torch.nn.BCEWithLogitsLoss)


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    """A folder with tiny MNIST-format files (600 train, 100 test), used for mnist and fashion."""
    d = tmp_path_factory.mktemp("idx")
    rng = np.random.RandomState(0)
    for prefix, n in (("train", 600), ("t10k", 100)):
        labels = rng.randint(0, 10, n).astype(np.uint8)
        # class-dependent mean so that a few steps can make progress
        images = np.clip(rng.randint(0, 160, (n, 28, 28)) + 9 * labels[:, None, None], 0, 255)
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", images.astype(np.uint8))
        write_idx(d / f"{prefix}-labels-idx1-ubyte", labels)
    return str(d)


def _problem(name, idx_dir, **options):
    return load_problem(name, small=True, data_dir=idx_dir if name in IDX_PROBLEMS else None,
                        **options)


def test_every_builtin_registered():
    assert set(BUILTIN) <= set(available_problems())


@pytest.mark.parametrize("name", BUILTIN)
def test_data_init_and_order_are_seeded(name, idx_dir):
    p = _problem(name, idx_dir)
    d1, d2 = p.data(), _problem(name, idx_dir).data()
    for split in ("train", "val", "test"):
        for xy in "xy":
            assert torch.equal(getattr(d1, f"{xy}_{split}"), getattr(d2, f"{xy}_{split}"))
    m1, m2, m3 = p.init_model(5), p.init_model(5), p.init_model(6)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, c) for a, c in zip(m1.parameters(), m3.parameters()))
    s1, s2 = (BatchStream(d1.x_train, d1.y_train, p.batch_size, seed=3) for _ in range(2))
    for _ in range(3):
        (xa, ya), (xb, yb) = next(s1), next(s2)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def _row_list(x):
    return [hashlib.sha256(r.numpy().tobytes()).hexdigest() for r in x.reshape(len(x), -1)]


def _row_keys(x):
    return set(_row_list(x))


def _source_rows(name):
    """The rows before any split, for the problems whose data repeat rows (multiset check)."""
    if name.startswith("digits"):
        from curvlab.harness.problems.digits import load_digits_split

        return torch.from_numpy(np.concatenate(load_digits_split()[::2]))
    from curvlab.harness.problems.corpus import stdlib_corpus
    from curvlab.harness.problems.text import SMALL_BYTES, byte_sequences

    return byte_sequences(stdlib_corpus().data[:SMALL_BYTES], 33)[:, :-1]


@pytest.mark.parametrize("name", BUILTIN)
def test_splits_are_disjoint_and_sized(name, idx_dir):
    p = _problem(name, idx_dir)
    d = p.data()
    assert d.has_validation and d.n_val >= 1 and d.n_train > d.n_val
    if name.startswith("digits") or name == "texttransformer":  # rows repeat in the source
        parts = _row_list(d.x_train) + _row_list(d.x_val) + _row_list(d.x_test)
        assert sorted(parts) == sorted(_row_list(_source_rows(name)))
    else:
        tr, va, te = _row_keys(d.x_train), _row_keys(d.x_val), _row_keys(d.x_test)
        assert len(tr) == d.n_train and not tr & va and not va & te and not tr & te
    assert p.provenance(d)["sizes"] == {"train": d.n_train, "val": d.n_val, "test": d.n_test,
                                        "eval": p.resolved_eval_size(d.n_train)}


@pytest.mark.parametrize("name", ["digitsmlp", "quadratic", "fashionautoencoder", "texttransformer"])
def test_split_seed_changes_only_the_split(name, idx_dir):
    a, b = _problem(name, idx_dir).data(), _problem(name, idx_dir, split_seed=1).data()
    assert a.n_val == b.n_val and not torch.equal(a.x_val, b.x_val)
    rows = [sorted(_row_list(d.x_train) + _row_list(d.x_val) + _row_list(d.x_test)) for d in (a, b)]
    assert rows[0] == rows[1]
    if name != "texttransformer":  # the text problem draws its test split with split_seed + 2
        assert torch.equal(a.x_test, b.x_test)


def test_split_validation_is_a_seeded_partition():
    d = Dataset(torch.arange(100.0), torch.arange(100), torch.zeros(3), torch.zeros(3))
    s = d.split_validation(10, seed=4)
    assert sorted(s.x_train.tolist() + s.x_val.tolist()) == list(range(100))
    assert s.x_val.tolist() == sorted(np.random.RandomState(4).permutation(100)[:10].tolist())
    assert torch.equal(s.y_val.float(), s.x_val)  # rows stay paired
    assert s.meta["split"] == {"validation_size": 10, "split_seed": 4}
    with pytest.raises(ValueError, match="validation split already"):
        s.split_validation(1, 0)
    for size in (0, 100):
        with pytest.raises(ValueError, match=r"validation size must be in \[1, 99\]"):
            d.split_validation(size, 0)


def test_old_four_argument_dataset_still_works():
    d = Dataset(torch.zeros(4, 2), torch.zeros(4), torch.zeros(1, 2), torch.zeros(1))
    assert (d.n_train, d.n_val, d.n_test, d.has_validation) == (4, 0, 1, False)
    assert d.to("cpu", torch.float64).x_val is None
    with pytest.raises(ValueError, match="together"):
        Dataset(torch.zeros(4), torch.zeros(4), torch.zeros(1), torch.zeros(1), x_val=torch.zeros(1))
    with pytest.raises(ValueError, match="x_train has 4 rows but y_train has 3"):
        Dataset(torch.zeros(4), torch.zeros(3), torch.zeros(1), torch.zeros(1))


class _ThirdParty(Problem):
    """A third-party problem written against the old API: no validation split of its own."""

    name = "thirdparty"

    def load_data(self):
        return Dataset(torch.arange(50.0)[:, None], torch.zeros(50, 1), torch.zeros(5, 1),
                       torch.zeros(5, 1))


def test_data_adds_the_validation_split_for_old_style_problems():
    p = _ThirdParty()
    d = p.data()
    assert (d.n_train, d.n_val) == (45, 5)
    assert torch.equal(d.x_val, _ThirdParty().data().x_val)


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_sequential_models_use_only_backpack_friendly_modules(name, idx_dir):
    p = _problem(name, idx_dir)
    model = p.init_model(0)
    assert isinstance(model, torch.nn.Sequential)
    for m in model:
        assert isinstance(m, ALLOWED), f"{name}: {type(m).__name__}"
        assert not getattr(m, "inplace", False)


@pytest.mark.parametrize("name", BUILTIN)
def test_loss_is_a_stock_mean_loss_and_finite(name, idx_dir):
    p = _problem(name, idx_dir)
    loss = p.loss_fn()
    assert isinstance(loss, LOSSES) and loss.reduction == "mean"
    d = p.data()
    out = p.init_model(0)(d.x_train[:4])
    assert math.isfinite(float(loss(out, d.y_train[:4]).detach()))


# Sizes of the paper-size models: (problem, parameters)
PAPER_SIZES = [
    ("fashionmlp", 784 * 1000 + 1000 * 1000 * 2 + 1000 * 10),
    ("fashionautoencoder", 2 * (784 * 1000 + 1000 * 500 + 500 * 250 + 250 * 30)
     + (1000 + 500 + 250 + 30) + (250 + 500 + 1000 + 784)),
    ("fashioncnn", (9 * 16 + 32) + (2 * 9 * 16 * 16 + 64) + (9 * 16 * 32 + 9 * 32 * 32 + 16 * 32 + 3 * 64)
     + (9 * 32 * 64 + 9 * 64 * 64 + 32 * 64 + 3 * 128) + (64 * 10 + 10)),
    ("mnistmlp", 2794000),
    ("texttransformer", 4 * (4 * (128 * 128 + 128) + 2 * 128 * 512 + 512 + 128 + 4 * 128)
     + 256 * 128 + 128 * 128 + 2 * 128 + 128 * 256),
]


@pytest.mark.parametrize("name, n_params", PAPER_SIZES, ids=[c[0] for c in PAPER_SIZES])
def test_paper_sized_models(name, n_params):
    model = load_problem(name).init_model(0)
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_foof_mlp_has_no_biases_and_standardised_inputs(idx_dir):
    p = _problem("fashionmlp", idx_dir)
    assert all(m.bias is None for m in p.init_model(0) if isinstance(m, torch.nn.Linear))
    d = p.data()
    x = d.x_train.double()
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std(unbiased=False)) - 1) < 1e-5
    assert abs(float(d.x_val.double().mean())) > 1e-9  # the validation rows did not enter μ
    raw = load_problem("fashionautoencoder", small=True, data_dir=idx_dir).data()
    assert float(raw.x_train.min()) >= 0 and float(raw.x_train.max()) <= 1
    std = d.meta["standardise"]
    assert torch.allclose(d.x_val, ((raw.x_val.double() - std["mean"]) / std["std"]).float(),
                          atol=1e-5)


def _train(name, optimizer, idx_dir, steps=5, **hp):
    p = _problem(name, idx_dir)
    d = p.data()
    model, loss_fn = p.init_model(0), p.loss_fn()
    opt = curvlab.create(optimizer, model, loss_fn, **hp)
    stream = BatchStream(d.x_train, d.y_train, p.batch_size, 0)
    fresh = BatchStream(d.x_train, d.y_train, p.fresh_batch_size, 1)
    before = p.evaluate(model, d.x_train, d.y_train).loss
    losses = [float(opt.step(curvlab.closure(model, loss_fn, *next(stream), batches=fresh)).detach())
              for _ in range(steps)]
    return losses, before, p.evaluate(model, d.x_train, d.y_train).loss


NEW = ["fashionmlp", "fashionautoencoder", "fashioncnn", "mnistmlp", "mnistautoencoder",
       "mnistcnn", "texttransformer"]
SGD_LR = {"fashionautoencoder": 1.0, "mnistautoencoder": 1.0}


@pytest.mark.parametrize("name", NEW)
def test_small_variant_trains_with_sgd(name, idx_dir):
    losses, before, after = _train(name, "sgd", idx_dir, lr=SGD_LR.get(name, 0.1))
    assert all(math.isfinite(v) for v in losses)
    assert after < before, f"{name}: full train loss {before} -> {after}"


@pytest.mark.parametrize("name", NEW)
def test_small_variant_with_kfac(name, idx_dir):
    """kfac trains the Linear-only models; for the others it refuses at construction, naming the module.

    (When kfac covers BatchNorm/Embedding/LayerNorm, the refusal branch
    turns into the training branch.)
    """
    p = _problem(name, idx_dir)
    model = p.init_model(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            curvlab.create("kfac", model, p.loss_fn())
    except ValueError as err:
        assert name in MODULAR, f"kfac refused a Linear-only model: {err}"
        kinds = {type(m).__name__ for m in model.modules()} - {"Linear", "Conv2d"}
        assert any(f"{k} at model." in str(err) for k in kinds), str(err)
        return
    losses, before, after = _train(name, "kfac", idx_dir)
    assert all(math.isfinite(v) for v in losses) and after < before


def test_batch_size_options(idx_dir):
    p = _problem("fashionmlp", idx_dir, batch_size=50, fresh_batch_size=300)
    assert (p.batch_size, p.fresh_batch_size) == (50, 300)
    assert p.options() == {"small": True, "data_dir": idx_dir, "batch_size": 50,
                           "fresh_batch_size": 300, "split_seed": 0, "eval_size": None}
    q = load_problem("fashionmlp", **p.options())
    assert q.options() == p.options()
    default = load_problem("fashionmlp")
    assert (default.batch_size, default.fresh_batch_size) == (100, 100)
    assert load_problem("fashionautoencoder").batch_size == 1000
    assert load_problem("fashionautoencoder", small=True).batch_size == 250
    assert load_problem("fashioncnn").batch_size == 128
    assert load_problem("mnistmlp", fresh_batch_size=1000).describe().count("fresh batch 1000")


BAD_OPTIONS = [
    ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"batch_size": 2.5}, "batch_size must be an integer >= 1"),
    ({"batch_size": True}, "batch_size must be an integer >= 1"),
    ({"fresh_batch_size": -1}, "fresh_batch_size must be an integer >= 1"),
    ({"split_seed": -1}, "split_seed must be an integer >= 0"),
    ({"eval_size": 0}, "eval_size must be an integer >= 1 or 'full'"),
    ({"eval_size": "all"}, "eval_size must be an integer >= 1 or 'full'"),
]


@pytest.mark.parametrize("options, message", BAD_OPTIONS, ids=[str(o) for o, _ in BAD_OPTIONS])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_problem("quadratic", **options)


@pytest.mark.parametrize("option", ["batch_size", "fresh_batch_size", "eval_size"])
def test_sizes_larger_than_the_training_set_are_refused(option):
    p = load_problem("quadratic", **{option: 5000})
    with pytest.raises(ValueError, match=rf"{option} must be in \[1, 1843\]"):
        p.data()


def test_evaluation_subset_is_fixed_and_reported(idx_dir):
    p = load_problem("fashionmlp")  # class default on the paper-size problem
    assert p.resolved_eval_size(55000) == 5000
    p = _problem("fashionmlp", idx_dir, eval_size=100)
    d = p.data()
    x1, y1 = p.evaluation_subset(d)
    x2, _ = _problem("fashionmlp", idx_dir, eval_size=100).evaluation_subset(d)
    assert x1.shape[0] == 100 and torch.equal(x1, x2)
    assert _row_keys(x1) <= _row_keys(d.x_train)
    assert p.provenance(d)["sizes"]["eval"] == 100
    full = _problem("fashionmlp", idx_dir, eval_size="full")
    assert full.evaluation_subset(d)[0] is d.x_train
    small_default = _problem("fashionmlp", idx_dir)  # default 5000 > 540 rows: the whole set
    assert small_default.evaluation_subset(d)[0] is d.x_train


def test_evaluate_matches_a_direct_computation(idx_dir):
    p = _problem("fashionautoencoder", idx_dir)
    d = p.data()
    model = p.init_model(0)
    with torch.no_grad():
        direct = float(p.loss_fn()(model(d.x_val), d.y_val)) * 784
    e = p.evaluate(model, d.x_val, d.y_val)
    assert e.accuracy is None and e.n == d.n_val and abs(e.loss - direct) < 1e-3 * direct
    c = _problem("fashioncnn", idx_dir)
    net = c.init_model(0).train()
    dc = c.data()
    with torch.no_grad():
        acc = float((net.eval()(dc.x_test).argmax(1) == dc.y_test).float().mean())
    net.train()
    ev = c.evaluate(net, dc.x_test, dc.y_test)
    assert net.training and abs(ev.accuracy - acc) < 1e-6  # eval mode inside, mode restored


def test_provenance_records_the_files_read(idx_dir):
    p = _problem("mnistmlp", idx_dir)
    prov = p.provenance()
    assert [f["path"].rsplit("/", 1)[-1] for f in prov["files"]] == [
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte"]
    for f in prov["files"]:
        assert f["sha256"] == hashlib.sha256(open(f["path"], "rb").read()).hexdigest()
    assert len(prov["fingerprint"]) == 64 and prov["dataset"] == "mnist"
    assert prov["options"] == p.options() and prov["meta"]["origin"] == "--data-dir"


def test_batch_stream_is_an_epoch_permutation():
    x = torch.arange(10.0)
    s = BatchStream(x, x, 3, seed=0)
    epoch = torch.cat([next(s)[0] for _ in range(3)])  # 3 full batches, last 1 dropped
    assert len(set(epoch.tolist())) == 9


def test_quadratic_optimum_is_least_squares():
    p = load_problem("quadratic")
    d = p.load_data().to("cpu", torch.float64)
    a = torch.cat([d.x_train, torch.ones(d.n_train, 1, dtype=torch.float64)], 1)
    sol = torch.linalg.lstsq(a, d.y_train).solution
    grad = a.T @ (a @ sol - d.y_train)
    assert grad.abs().max() < 1e-5
    assert abs(p.optimum - float(((a @ sol - d.y_train) ** 2).mean())) < 1e-6


def _spy(base):
    class Spy(base):
        """Records fingerprints of the initial weights and of every batch it is given."""

        name = "spy" + base.name

        def _setup(self):
            super()._setup()
            w = torch.cat([p.detach().flatten() for p in self.model.parameters()])
            self.stats["init"] = float((w * torch.arange(1, len(w) + 1)).sum())
            self.stats["data"] = 0.0
            self.stats["fresh"] = 0.0

        def _update(self, closure, loss):
            x = closure.inputs
            self.stats["data"] += float((x.flatten() * torch.arange(1, x.numel() + 1)).sum()) * (
                self.stats["steps"] + 1)
            xf, _ = closure.batches() if callable(closure.batches) else next(closure.batches)
            self.stats["fresh"] += float(xf.sum()) * (self.stats["steps"] + 1)
            super()._update(closure, loss)

    return Spy


@pytest.mark.parametrize("seed", [0, 1])
def test_every_optimizer_sees_the_same_init_and_stream(seed):
    spies = [_spy(SGD), _spy(Adam)]
    for cls in spies:
        curvlab.register(cls.name, cls, replace=True)
    try:
        stats = []
        for cls, hp in zip(spies, ({"lr": 0.1}, {"lr": 0.01})):
            cfg = RunConfig("digitsmlp", cls.name, hp, seed=seed, steps=6, eval_every=3)
            r = execute(cfg)
            assert r.status == "done", r.error
            stats.append(r.stats)
    finally:
        for cls in spies:
            curvlab.unregister(cls.name)
    assert stats[0]["init"] == stats[1]["init"]
    assert stats[0]["data"] == stats[1]["data"]
    assert stats[0]["fresh"] == stats[1]["fresh"]
    # and they equal what the problem itself produces for this seed (the runner trains on
    # the training split: validation rows never enter a mini-batch)
    p = load_problem("digitsmlp")
    d = p.data()
    w = torch.cat([q.detach().flatten() for q in p.init_model(seed).parameters()])
    assert stats[0]["init"] == float((w * torch.arange(1, len(w) + 1)).sum())
    s = BatchStream(d.x_train, d.y_train, p.batch_size, seed)
    f = BatchStream(d.x_train, d.y_train, p.fresh_batch_size, seed + FRESH_SEED_OFFSET)
    data = fresh = 0.0
    for k in range(6):
        x = next(s)[0]
        data += float((x.flatten() * torch.arange(1, x.numel() + 1)).sum()) * (k + 1)
        fresh += float(next(f)[0].sum()) * (k + 1)
    assert stats[0]["data"] == data and stats[0]["fresh"] == fresh
