"""IDX reader/writer round trip (raw and gzip) and the MNIST loader on tiny files."""

import numpy as np
import pytest

from curvlab.harness.problems.idx import read_idx, write_idx
from curvlab.harness.problems.mnist import MNIST_FILES, load_mnist

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("dtype", DTYPES, ids=[np.dtype(d).name for d in DTYPES])
@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4)], ids=["1d", "2d", "3d"])
def test_round_trip(tmp_path, dtype, gz, shape):
    a = (np.arange(np.prod(shape)) * 3 - 7).astype(dtype).reshape(shape)
    path = tmp_path / ("a.idx" + (".gz" if gz else ""))
    write_idx(path, a)
    b = read_idx(path)
    assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)


def test_big_endian_header(tmp_path):
    write_idx(tmp_path / "x", np.zeros((2, 300), dtype=np.int16))
    raw = (tmp_path / "x").read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0B, 2]) and raw[4:12] == bytes([0, 0, 0, 2, 0, 0, 1, 44])


@pytest.mark.parametrize(
    "payload, message",
    [(b"\x01\x00\x08\x01", "not an IDX file"), (b"\x00\x00\x08\x01\x00\x00\x00\x05ab", "truncated")],
    ids=["magic", "truncated"],
)
def test_bad_files(tmp_path, payload, message):
    (tmp_path / "bad").write_bytes(payload)
    with pytest.raises(ValueError, match=message):
        read_idx(tmp_path / "bad")


def test_unsupported_dtype(tmp_path):
    with pytest.raises(ValueError, match="no IDX type code"):
        write_idx(tmp_path / "x", np.zeros(2, dtype=np.complex64))


def test_mnist_loader_on_tiny_files(tmp_path):
    rng = np.random.RandomState(0)
    imgs = {p: rng.randint(0, 256, (n, 28, 28)).astype(np.uint8) for p, n in (("train", 6), ("t10k", 3))}
    labs = {p: rng.randint(0, 10, len(imgs[p])).astype(np.uint8) for p in imgs}
    for p in imgs:  # mix raw and gzip
        write_idx(tmp_path / f"{p}-images-idx3-ubyte.gz", imgs[p])
        write_idx(tmp_path / f"{p}-labels-idx1-ubyte", labs[p])
    xtr, ytr, xte, yte = load_mnist(tmp_path)
    assert xtr.shape == (6, 784) and xte.shape == (3, 784)
    assert np.allclose(xtr * 255, imgs["train"].reshape(6, -1)) and np.array_equal(yte, labs["t10k"])


def test_mnist_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError, match=MNIST_FILES[0]):
        load_mnist(tmp_path)
