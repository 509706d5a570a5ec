"""Dataset discovery: search order, one-line errors that name the fix, the `curvlab data` listing."""

import dataclasses

import numpy as np
import pytest

import curvlab.harness.data as data_mod
from curvlab.harness.data import (
    DATASETS,
    DataFile,
    DataNotFoundError,
    data_listing,
    data_source,
    dataset_status,
    fingerprint,
    locate,
    sha256_file,
)
from curvlab.harness.problems.idx import write_idx
from curvlab.harness.problems.mnist import MNIST_FILES


def _idx_folder(folder, value=0):
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", 4), ("t10k", 2)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", np.full((n, 28, 28), value, np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.zeros(n, np.uint8))
    return folder


# (case id, layout of files under tmp, data_dir, $CURVLAB_DATA, expected folder, expected origin)
SEARCH = [
    ("data-dir-direct", ["d"], "d", None, "d", "--data-dir"),
    ("data-dir-subfolder-first", ["d", "d/mnist"], "d", None, "d/mnist", "--data-dir"),
    ("env-subfolder", ["e/mnist"], None, "e", "e/mnist", "$CURVLAB_DATA"),
    ("env-direct", ["e"], None, "e", "e", "$CURVLAB_DATA"),
    ("data-dir-beats-env", ["d", "e/mnist"], "d", "e", "d", "--data-dir"),
]


@pytest.mark.parametrize("layout, data_dir, env, expected, origin", [c[1:] for c in SEARCH],
                         ids=[c[0] for c in SEARCH])
def test_search_order(tmp_path, layout, data_dir, env, expected, origin):
    for sub in layout:
        _idx_folder(tmp_path / sub)
    environ = {} if env is None else {"CURVLAB_DATA": str(tmp_path / env)}
    loc = locate("mnist", None if data_dir is None else tmp_path / data_dir, environ=environ)
    assert loc.folder == tmp_path / expected and loc.origin == origin
    assert [p.name for p in loc.paths] == [MNIST_FILES[0] + ".gz", MNIST_FILES[1],
                                           MNIST_FILES[2] + ".gz", MNIST_FILES[3]]


def test_explicit_data_dir_never_falls_back(tmp_path):
    _idx_folder(tmp_path / "root" / "mnist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError) as info:
        locate("mnist", tmp_path / "empty", environ={"CURVLAB_DATA": str(tmp_path / "root")})
    msg = str(info.value)
    assert "looked in" in msg and str(tmp_path / "empty") in msg and str(tmp_path / "root") not in msg


def test_system_folder_is_searched_last(tmp_path, monkeypatch):
    system = _idx_folder(tmp_path / "sys", value=1)
    env = _idx_folder(tmp_path / "env" / "fashion-mnist", value=2)
    patched = tuple(dataclasses.replace(s, system_dirs=(str(system),)) if s.name == "fashion-mnist"
                    else s for s in DATASETS)
    monkeypatch.setattr(data_mod, "DATASETS", patched)
    assert locate("fashion-mnist", environ={}).origin == "system"
    assert locate("fashion-mnist", environ={"CURVLAB_DATA": str(tmp_path / "env")}).folder == env


MISSING = [
    ("fashion-mnist", "apt-get install dataset-fashion-mnist"),
    ("mnist", "--data-dir DIR"),
]


@pytest.mark.parametrize("name, fix", MISSING, ids=[m[0] for m in MISSING])
def test_missing_dataset_is_one_line_naming_the_fix(tmp_path, monkeypatch, name, fix):
    monkeypatch.setattr(data_mod, "DATASETS", tuple(
        dataclasses.replace(s, system_dirs=(str(tmp_path / "nowhere"),)) for s in DATASETS))
    with pytest.raises(FileNotFoundError) as info:
        locate(name, environ={})
    msg = str(info.value)
    assert isinstance(info.value, DataNotFoundError) and len(msg.splitlines()) == 1
    assert fix in msg and "$CURVLAB_DATA (not set)" in msg


def test_data_dir_that_is_not_a_folder(tmp_path):
    with pytest.raises(DataNotFoundError, match="is not a folder"):
        locate("mnist", tmp_path / "typo", environ={})


def test_unknown_dataset_suggests_a_name():
    with pytest.raises(ValueError, match="did you mean 'fashion-mnist'"):
        data_source("fashion_mnist")
    with pytest.raises(ValueError, match="built in"):
        locate("digits")


def test_checksums_and_fingerprint(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    assert sha256_file(tmp_path / "a") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    a, b = DataFile("/x/a", "1" * 64, 3), DataFile("/x/b", "2" * 64, 3)
    assert fingerprint([a, b]) != fingerprint([b, a]) != fingerprint([a])
    with pytest.raises(DataNotFoundError):
        sha256_file(tmp_path / "missing")


def test_listing_reports_found_and_missing(tmp_path):
    _idx_folder(tmp_path / "mnist")
    rows = {r.name: r for r in dataset_status(tmp_path, environ={})}
    assert [r.name for r in dataset_status(tmp_path, environ={})] == [s.name for s in DATASETS]
    mnist = rows["mnist"]
    assert mnist.found and mnist.origin == "--data-dir" and len(mnist.files) == 4
    assert {"mnistmlp", "mnistautoencoder", "mnistcnn"} <= set(mnist.problems)
    fashion = rows["fashion-mnist"]  # --data-dir given: no fallback to the system copy
    assert not fashion.found and "apt-get install dataset-fashion-mnist" in fashion.where
    assert rows["stdlib-text"].found and rows["stdlib-text"].problems == ("texttransformer",)
    text = data_listing(tmp_path, environ={})
    assert "mnist          found     (--data-dir)" in text
    assert "fashion-mnist  MISSING" in text
    for f in mnist.files:
        assert f.sha256 in text
    assert mnist.as_dict()["files"][0]["sha256"] == mnist.files[0].sha256


def test_listing_recognises_a_different_copy(tmp_path, monkeypatch):
    _idx_folder(tmp_path / "fashion-mnist")
    rows = {r.name: r for r in dataset_status(tmp_path, environ={})}
    assert rows["fashion-mnist"].found
    assert "differs from the published release" in rows["fashion-mnist"].note
