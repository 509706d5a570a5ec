"""IDX reader/writer (raw and gzip), the cached loader, and the MNIST-format loader on tiny files."""

import gzip
import hashlib

import numpy as np
import pytest

from curvlab.harness.data import DataCorruptError, DataFile, DataNotFoundError
from curvlab.harness.problems.idx import (
    idx_content_sha256,
    load_idx,
    parse_idx,
    read_idx,
    read_idx_cached,
    write_idx,
)
from curvlab.harness.problems.mnist import MNIST_FILES, load_image_set, load_mnist

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


GOOD = bytes([0, 0, 8, 1, 0, 0, 0, 5]) + bytes(range(5))
BAD_FILES = [
    ("magic", b"\x01\x00\x08\x01", False, "not an IDX file"),
    ("short-header", b"\x00\x00\x08\x02\x00\x00", False, "truncated IDX header"),
    ("truncated", GOOD[:-2], False, "truncated IDX data"),
    ("trailing", GOOD + b"\x00", False, "unexpected bytes"),
    ("gz-truncated", gzip.compress(GOOD)[:-6], True, "corrupt or truncated gzip"),
    ("gz-garbage", b"\x1f\x8b\x08\x00garbage", True, "corrupt or truncated gzip"),
]


@pytest.mark.parametrize("payload, gz, message", [c[1:] for c in BAD_FILES],
                         ids=[c[0] for c in BAD_FILES])
def test_bad_files_give_a_one_line_error(tmp_path, payload, gz, message):
    path = tmp_path / ("bad.gz" if gz else "bad")
    path.write_bytes(payload)
    with pytest.raises(DataCorruptError, match=message) as info:
        read_idx(path)
    assert isinstance(info.value, ValueError) and str(path) in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_missing_file_is_a_data_not_found_error(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        read_idx(tmp_path / "nope")


def test_unsupported_dtype(tmp_path):
    with pytest.raises(ValueError, match="no IDX type code"):
        write_idx(tmp_path / "x", np.zeros(2, dtype=np.complex64))


def test_parse_matches_read():
    assert parse_idx(GOOD).tolist() == [0, 1, 2, 3, 4]


def test_cached_loader_records_the_checksum_and_decodes_once(tmp_path):
    path = tmp_path / "a.gz"
    write_idx(path, np.arange(12, dtype=np.uint8).reshape(3, 4))
    a, file = load_idx(path)
    assert file == DataFile(str(path.resolve()), hashlib.sha256(path.read_bytes()).hexdigest(),
                            path.stat().st_size)
    b, _ = load_idx(path)
    assert a is b and not a.flags.writeable  # one decode per process, shared read-only
    write_idx(path, np.arange(12, dtype=np.uint8).reshape(4, 3))  # a changed file is re-read
    c, file2 = load_idx(path)
    assert c.shape == (4, 3) and file2.sha256 != file.sha256
    other = tmp_path / "b"  # hashed, then changed before it was first decoded
    write_idx(other, np.zeros(2, np.uint8))
    stale = DataFile.of(other)
    write_idx(other, np.ones(2, np.uint8))
    with pytest.raises(DataCorruptError, match="changed"):
        read_idx_cached(stale.path, stale.sha256)


def test_content_checksum_ignores_compression(tmp_path):
    a = np.arange(7, dtype=np.uint8)
    write_idx(tmp_path / "a", a)
    write_idx(tmp_path / "a.gz", a)
    assert idx_content_sha256(tmp_path / "a") == idx_content_sha256(tmp_path / "a.gz")
    assert idx_content_sha256(tmp_path / "a") == hashlib.sha256((tmp_path / "a").read_bytes()).hexdigest()


def _write_mnist(folder, n_train=6, n_test=3, gz=("images",), seed=0):
    rng = np.random.RandomState(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.randint(0, 256, (n, 28, 28)).astype(np.uint8)
        labs = rng.randint(0, 10, n).astype(np.uint8)
        for kind, arr in (("images-idx3", imgs), ("labels-idx1", labs)):
            ext = ".gz" if kind.split("-")[0] in gz else ""
            write_idx(folder / f"{prefix}-{kind}-ubyte{ext}", arr)
        out[prefix] = (imgs, labs)
    return out


def test_mnist_loader_on_tiny_files(tmp_path):
    ref = _write_mnist(tmp_path)  # images gzip-compressed, labels raw
    xtr, ytr, xte, yte = load_mnist(tmp_path)
    assert xtr.shape == (6, 784) and xte.shape == (3, 784)
    assert np.allclose(xtr * 255, ref["train"][0].reshape(6, -1))
    assert np.array_equal(yte, ref["t10k"][1])
    s = load_image_set("mnist", tmp_path)
    names = [f.path.rsplit("/", 1)[-1] for f in s.files]
    assert names == [MNIST_FILES[0] + ".gz", MNIST_FILES[1], MNIST_FILES[2] + ".gz", MNIST_FILES[3]]
    for f in s.files:
        assert f.sha256 == hashlib.sha256(open(f.path, "rb").read()).hexdigest()


def test_mnist_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="to get it: put the IDX files") as info:
        load_mnist(tmp_path)
    assert MNIST_FILES[0] in str(info.value) and len(str(info.value).splitlines()) == 1


CORRUPT = [
    ("truncated-gz", lambda d: (d / "train-images-idx3-ubyte.gz").write_bytes(
        (d / "train-images-idx3-ubyte.gz").read_bytes()[:200]), "corrupt or truncated gzip"),
    ("count-mismatch", lambda d: write_idx(d / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8)),
     "3 t10k images but 2 labels"),
    ("labels-out-of-range", lambda d: write_idx(d / "train-labels-idx1-ubyte",
                                                np.full(6, 12, np.uint8)), "not an MNIST-format label"),
    ("images-shape", lambda d: write_idx(d / "train-images-idx3-ubyte.gz",
                                         np.zeros((6, 28, 27), np.uint8)), "not an MNIST-format image"),
]


@pytest.mark.parametrize("damage, message", [c[1:] for c in CORRUPT], ids=[c[0] for c in CORRUPT])
def test_corrupt_dataset_one_line_error_with_the_fix(tmp_path, damage, message):
    _write_mnist(tmp_path)
    damage(tmp_path)
    with pytest.raises(DataCorruptError, match=message) as info:
        load_image_set("mnist", tmp_path)
    text = str(info.value)
    assert len(text.splitlines()) == 1 and "to fix: replace it with an intact copy" in text
