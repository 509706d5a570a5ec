"""The Fashion-MNIST problems on the real files, where the Debian package (or a copy) is installed."""

import math

import pytest
import torch

import curvlab
from curvlab.harness.data import FASHION_MNIST_CONTENT, DataNotFoundError, locate
from curvlab.harness.problems import BatchStream, load_problem
from curvlab.harness.problems.idx import idx_content_sha256


def _location():
    try:
        return locate("fashion-mnist")
    except DataNotFoundError as err:
        pytest.skip(f"Fashion-MNIST is not installed ({err})")


def test_real_files_are_the_published_release():
    loc = _location()
    for stem, path in zip(loc.source.files, loc.paths):
        assert idx_content_sha256(path) == FASHION_MNIST_CONTENT[stem], path


def test_real_fashion_mlp_data_and_two_sgd_steps():
    _location()
    p = load_problem("fashion-mlp")
    d = p.data()
    assert (d.n_train, d.n_val, d.n_test) == (55000, 5000, 10000)
    assert d.x_train.shape == (55000, 784) and d.y_train.dtype == torch.int64
    assert sorted(torch.unique(d.y_test).tolist()) == list(range(10))
    assert torch.bincount(d.y_test).tolist() == [1000] * 10  # the balanced Fashion-MNIST test set
    prov = p.provenance(d)
    assert len(prov["files"]) == 4 and len(prov["fingerprint"]) == 64
    assert prov["sizes"]["eval"] == 5000 and p.evaluation_subset(d)[0].shape == (5000, 784)
    model, loss_fn = p.init_model(0), p.loss_fn()
    opt = curvlab.create("sgd", model, loss_fn, lr=0.05)
    stream = BatchStream(d.x_train, d.y_train, p.batch_size, 0)
    losses = [float(opt.step(curvlab.closure(model, loss_fn, *next(stream))).detach())
              for _ in range(2)]
    assert all(math.isfinite(v) for v in losses) and abs(losses[0] - math.log(10)) < 0.5
