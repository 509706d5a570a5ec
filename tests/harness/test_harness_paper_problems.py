"""The problems added for the reproductions: Benzing's logistic regression, the GroupedNewton perceptron."""

import math

import pytest
import torch

from curvlab.harness.data import DataNotFoundError, locate
from curvlab.harness.problems import load_problem
from curvlab.harness.problems.papers import tanh_perceptron


def _fashion():
    try:
        locate("fashion-mnist")
    except DataNotFoundError as err:
        pytest.skip(f"Fashion-MNIST is not installed ({err})")


def test_fashion_logreg_is_one_layer_full_batch_on_1000_images():
    _fashion()
    p = load_problem("fashion-logreg")
    d = p.data()
    assert (d.n_train, d.n_val, d.n_test) == (1000, 1000, 10000)
    assert p.batch_size == d.n_train  # full batch
    model = p.init_model(0)
    assert [type(m).__name__ for m in model] == ["Linear"] and model[0].bias is None
    x = d.x_train.double()
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1.0) < 1e-3  # standardised
    assert d.y_train.dtype == torch.int64 and int(d.y_train.max()) == 9


@pytest.mark.parametrize("widths", [[784, 1024, 200, 100, 10], [8, 5, 3]], ids=["paper", "tiny"])
def test_tanh_perceptron_initialisation(widths):
    torch.manual_seed(0)
    model = tanh_perceptron(widths)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert [lin.in_features for lin in linears] == widths[:-1]
    assert sum(isinstance(m, torch.nn.Tanh) for m in model) == len(widths) - 2
    for lin in linears:
        assert float(lin.bias.abs().max()) == 0.0
        if lin.weight.numel() > 10_000:  # the sample std is close to 1/sqrt(fan-in)
            assert abs(float(lin.weight.std()) * math.sqrt(lin.in_features) - 1.0) < 0.02


def test_tanh_mlp_problems():
    assert load_problem("mnist-tanh-mlp").fresh_batch_size == 100
    p = load_problem("fashion-tanh-mlp", small=True, fresh_batch_size=1000)
    assert (p.batch_size, p.fresh_batch_size) == (100, 1000)
    widths = [m.in_features for m in p.init_model(0) if isinstance(m, torch.nn.Linear)]
    assert widths == [784, 64, 32, 16]


def test_mnist_tanh_mlp_without_data_names_the_fix(tmp_path):
    with pytest.raises(DataNotFoundError, match="--data-dir"):
        load_problem("mnist-tanh-mlp", data_dir=str(tmp_path)).data()
