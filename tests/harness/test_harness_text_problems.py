"""The text problem: the stdlib corpus (fixed list, checksums, clear errors), text files, the transformer."""

import hashlib
import sysconfig
from pathlib import Path

import pytest
import torch

import curvlab
from curvlab.harness.data import DataNotFoundError
from curvlab.harness.problems import BatchStream, load_problem
from curvlab.harness.problems.corpus import STDLIB_FILES, stdlib_corpus, text_corpus
from curvlab.harness.problems.text import byte_sequences
from curvlab.harness.problems.transformer import ByteTransformer


def test_stdlib_corpus_is_the_documented_list_in_order():
    c = stdlib_corpus()
    root = Path(sysconfig.get_paths()["stdlib"])
    expected = b"".join((root / f).read_bytes() for f in STDLIB_FILES)
    assert c.data == expected and c.sha256 == hashlib.sha256(expected).hexdigest()
    assert [Path(f.path) for f in c.files] == [(root / f).resolve() for f in STDLIB_FILES]
    assert c.meta()["files"] == list(STDLIB_FILES) and c.meta()["bytes"] == len(expected)
    assert len(set(STDLIB_FILES)) == len(STDLIB_FILES) == 32


def test_missing_stdlib_file_is_a_clear_error(tmp_path):
    (tmp_path / "argparse.py").write_text("pass\n")
    with pytest.raises(DataNotFoundError, match="ast.py") as info:
        stdlib_corpus(("argparse.py", "ast.py"), root=tmp_path)
    assert "--data-dir FILE" in str(info.value) and len(str(info.value).splitlines()) == 1


def test_text_file_or_folder_via_data_dir(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"second ")
    (tmp_path / "a.txt").write_bytes(b"first ")
    (tmp_path / "ignored.md").write_bytes(b"not text")
    assert text_corpus(tmp_path).data == b"first second "
    assert text_corpus(tmp_path / "b.txt").data == b"second "
    for bad, message in ((tmp_path / "none", "does not exist"), (tmp_path / "empty", "no \\*.txt")):
        if bad.name == "empty":
            bad.mkdir()
        with pytest.raises(DataNotFoundError, match=message):
            text_corpus(bad)


def test_problem_on_a_text_file_records_it(tmp_path):
    text = bytes(range(256)) * 600  # 153,600 bytes
    (tmp_path / "corpus.txt").write_bytes(text)
    p = load_problem("text-transformer", small=True, data_dir=str(tmp_path / "corpus.txt"))
    d = p.data()
    prov = p.provenance(d)
    assert prov["files"][0]["sha256"] == hashlib.sha256(text).hexdigest()
    assert prov["meta"]["corpus"]["origin"] == "text"
    assert prov["meta"]["bytes_used"] == 65536 and d.n_train + d.n_val + d.n_test == 65536 // 33
    assert torch.equal(d.x_train[:, 1:], d.y_train[:, :-1])  # targets are the next bytes


def test_byte_sequences_and_too_short_text():
    assert byte_sequences(b"abcdef", 2).tolist() == [[97, 98], [99, 100], [101, 102]]
    with pytest.raises(ValueError, match="need at least 6"):
        byte_sequences(b"abcde", 3)


def test_provenance_of_the_builtin_corpus():
    p = load_problem("text-transformer", small=True)
    prov = p.provenance()
    corpus = prov["meta"]["corpus"]
    assert corpus["origin"] == "stdlib" and corpus["files"] == list(STDLIB_FILES)
    assert corpus["sha256"] == stdlib_corpus().sha256 and len(prov["files"]) == 32


def test_transformer_is_causal_and_shaped_for_cross_entropy():
    torch.manual_seed(0)
    net = ByteTransformer(context=16, layers=2, d_model=32, heads=4).eval()
    tokens = torch.randint(0, 256, (3, 16))
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 256
    a, b = net(tokens), net(changed)
    assert a.shape == (3, 256, 16)
    assert torch.allclose(a[:, :, :10], b[:, :, :10], atol=1e-6)  # the past ignores the future
    assert not torch.allclose(a[:, :, 10:], b[:, :, 10:])
    loss = torch.nn.CrossEntropyLoss()(a, tokens)
    manual = torch.nn.functional.cross_entropy(a.transpose(1, 2).reshape(-1, 256), tokens.reshape(-1))
    assert torch.allclose(loss, manual)
    with pytest.raises(ValueError, match="exceeds the context"):
        net(torch.zeros(1, 17, dtype=torch.long))


def test_attention_is_built_from_linear_projections():
    net = load_problem("text-transformer").init_model(0)
    kinds = {type(m) for m in net.modules() if any(True for _ in m.parameters(recurse=False))}
    assert kinds == {torch.nn.Embedding, torch.nn.LayerNorm, torch.nn.Linear}
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in net.modules())
    linears = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4 * 6 + 1  # q, k, v, out, fc, proj per block + head


# GroupedNewton with its default partition="tensor" (order 3) reports a failed solve at every
# recomputation on this model and does not move (measured: solve_failures = recomputations);
# partition="layer" trains. Left to the GroupedNewton owners.
@pytest.mark.parametrize("optimizer, hp", [("adam", {"lr": 3e-3}),
                                           ("groupednewton", {"partition": "layer"})],
                         ids=["adam", "groupednewton-layer"])
def test_other_optimizers_train_the_transformer(optimizer, hp):
    p = load_problem("text-transformer", small=True)
    d = p.data()
    model, loss_fn = p.init_model(0), p.loss_fn()
    opt = curvlab.create(optimizer, model, loss_fn, **hp)
    stream = BatchStream(d.x_train, d.y_train, p.batch_size, 0)
    fresh = BatchStream(d.x_train, d.y_train, p.fresh_batch_size, 1)
    before = p.evaluate(model, d.x_val, d.y_val).loss
    for _ in range(5):
        opt.step(curvlab.closure(model, loss_fn, *next(stream), batches=fresh))
    assert p.evaluate(model, d.x_val, d.y_val).loss < before
