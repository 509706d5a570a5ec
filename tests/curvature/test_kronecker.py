"""Kronecker algebra and layer-input statistics against brute-force twins (float64)."""

import pytest
import torch
from torch import nn

from curvlab.curvature.kronecker import block_matrix, kron_dense, kron_precondition, split_matrix
from curvlab.curvature.statistics import InputStatistics, input_covariance


def spd(n, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, n + 2, generator=g, dtype=torch.float64)
    return X @ X.T / n + 0.1 * torch.eye(n, dtype=torch.float64)


@pytest.mark.parametrize("out,d", [(1, 1), (2, 3), (4, 2)], ids=["1x1", "2x3", "4x2"])
@pytest.mark.parametrize("sides", ["GA", "G", "A"])
def test_kron_precondition_equals_dense_solve(out, d, sides):
    G = spd(out, 1) if "G" in sides else None
    A = spd(d, 2) if "A" in sides else None
    M = torch.randn(out, d, dtype=torch.float64)
    inv = lambda X: None if X is None else torch.linalg.inv(X)  # noqa: E731
    got = kron_precondition(M, inv(G), inv(A))
    dense = kron_dense(G, A, out, d)
    want = torch.linalg.solve(dense, M.reshape(-1)).reshape(out, d)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_block_matrix_round_trip():
    w, b = torch.randn(3, 2, 2, 2), torch.randn(3)
    M = block_matrix([w, b])
    assert M.shape == (3, 9)
    assert torch.equal(M[:, -1], b)
    w2, b2 = split_matrix(M, [w, b])
    assert torch.equal(w2, w) and torch.equal(b2, b)


def brute_patches(conv: nn.Conv2d, x):
    """Rows (N, T, C·kh·kw) built by slicing the zero-padded input, one location at a time."""
    ph, pw = conv.padding
    xp = nn.functional.pad(x, (pw, pw, ph, ph))
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    dh, dw = conv.dilation
    H = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    W = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for i in range(H):
        for j in range(W):
            patch = xp[:, :, i * sh : i * sh + dh * (kh - 1) + 1 : dh, j * sw : j * sw + dw * (kw - 1) + 1 : dw]
            rows.append(patch.reshape(x.shape[0], -1))
    return torch.stack(rows, dim=1)


CONVS = [
    ("k2", dict(kernel_size=2)),
    ("k3-pad1", dict(kernel_size=3, padding=1)),
    ("k3-stride2-dil1", dict(kernel_size=3, stride=2, padding=1)),
    ("k2-dil2", dict(kernel_size=2, dilation=2)),
]


@pytest.mark.parametrize("homogeneous", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("kw", [c[1] for c in CONVS], ids=[c[0] for c in CONVS])
def test_conv_statistics_match_brute_force(kw, homogeneous):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, **kw).double()
    x = torch.randn(4, 2, 5, 6, dtype=torch.float64)
    rows = brute_patches(conv, x)
    if homogeneous:
        rows = torch.cat([rows, torch.ones(*rows.shape[:2], 1, dtype=rows.dtype)], -1)
    want = torch.einsum("nti,ntj->ij", rows, rows) / x.shape[0]
    torch.testing.assert_close(input_covariance(conv, x, homogeneous=homogeneous), want)
    # the unfolded patches reproduce the convolution itself (layout check)
    out = torch.einsum("nti,oi->not", brute_patches(conv, x), conv.weight.reshape(3, -1))
    torch.testing.assert_close(out + conv.bias[None, :, None], conv(x).flatten(2))


def test_linear_statistics_and_recorder():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    rec = InputStatistics({"0": net[0], "2": net[2]}, homogeneous={"0": True, "2": False})
    net(x)
    assert rec.covariances == {}, "nothing is recorded unless recording is on"
    rec.recording = True
    with torch.no_grad():
        net(x)
    assert rec.covariances == {}, "no_grad passes (evaluation) are not recorded"
    net(x)
    xh = torch.cat([x, torch.ones(6, 1, dtype=x.dtype)], 1)
    torch.testing.assert_close(rec.covariances["0"], xh.T @ xh / 6)
    h = torch.tanh(net[0](x))
    torch.testing.assert_close(rec.covariances["2"], h.T @ h / 6)
    rec.remove()
    rec.covariances = {}
    net(x)
    assert rec.covariances == {}
