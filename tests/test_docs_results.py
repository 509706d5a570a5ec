"""The Results and Choosing pages are drawn from committed result stores, with provenance."""

import csv
import json
import re
import sys
from io import StringIO
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
sys.path.insert(0, str(ROOT / "docs" / "results"))
sphinx_application = pytest.importorskip("sphinx.application", reason="sphinx is not installed")

import curvlab_choosing  # noqa: E402
import curvlab_results  # noqa: E402
import regenerate  # noqa: E402
from sphinx.util.docutils import docutils_namespace  # noqa: E402

from curvlab.harness import Store, compare  # noqa: E402

MACHINE = {"cpu": "Test CPU 3000", "cores": 2, "os": "Linux-test", "load_average_1min": 0.5,
           "load_average_1min_after": 0.7, "threads_per_run": 1}
VERSIONS = {"python": "3.x", "curvlab": "0.1.0", "git": "abc123", "torch": "2.13.0+cpu"}


def manifest(comparisons, **extra):
    return {"kind": "comparisons", "title": "Toy set", "summary": "Two quadratic comparisons.",
            "store": "toy.sqlite", "regenerate": "python docs/results/regenerate.py toy",
            "date": "2026-12-01", "machine": MACHINE, "versions": VERSIONS,
            "comparisons": comparisons, "profiles": ["steps"], **extra}


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    """A result set (tuned + defaults comparison of sgd/adam) and a step-time table."""
    folder = tmp_path_factory.mktemp("results")
    scratch = folder / "scratch.sqlite"
    common = {"steps": 20, "seconds": None, "eval_every": 5, "store": str(scratch),
              "executor": "serial", "target": 1e9}
    compare("quadratic", ["sgd", "adam"], name="toy-defaults", **common)
    compare("quadratic", ["sgd", "adam"], tune=True, name="toy-tuned", **{**common, "steps": 15})
    regenerate.compact(scratch, folder / "toy.sqlite", ["toy-defaults", "toy-tuned"])
    entries = [{"name": n, "title": f"Title of {n}", "about": f"About {n}.",
                "command": f"curvlab compare --problem quadratic --name {n}",
                "started": "2026-12-01T10:00:00+00:00", "minutes": 0.1}
               for n in ("toy-defaults", "toy-tuned")]
    (folder / "toy.json").write_text(json.dumps(manifest(entries)))
    ghost = {**manifest(entries), "title": "Ghost set", "store": "ghost.sqlite"}
    (folder / "ghost.json").write_text(json.dumps(ghost))
    rows = [{"problem": "quadratic", "optimizer": "sgd", "ms_per_step": "0.1", "ratio_vs_sgd": "1",
             "unsupported": ""},
            {"problem": "quadratic", "optimizer": "adam", "ms_per_step": "0.15",
             "ratio_vs_sgd": "1.5", "unsupported": ""},
            {"problem": "conv", "optimizer": "adam", "ms_per_step": "", "ratio_vs_sgd": "",
             "unsupported": "Linear layers only"}]
    with open(folder / "step_time.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (folder / "step_time.json").write_text(json.dumps(
        {"kind": "benchmark", "title": "Step time", "table": "step_time.csv",
         "command": "python benchmarks/step_time.py --csv docs/results/step_time.csv",
         "regenerate": "python docs/results/regenerate.py step_time", "date": "2026-12-02",
         "machine": MACHINE, "versions": VERSIONS}))
    scratch.unlink()
    return folder


CONF = """
import sys
sys.path.insert(0, {ext!r})
extensions = ["curvlab_results", "curvlab_choosing"]
curvlab_results_dir = {results!r}
curvlab_backend_pages = {pages!r}
curvlab_docs_strict = True
curvlab_choosing = {{"benchmark": "step_time", "tuned": "toy/toy-tuned",
                    "defaults": ["toy/toy-defaults"]}}
"""
CHOOSING = """Choosing
========

.. curvlab-choosing::

sgd
---

.. curvlab-choose:: sgd

   A hand-written caveat about SGD.
"""


def build(tmp_path, results_dir, pages=None):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    pages = pages or {"sgd": "choosing"}
    (src / "conf.py").write_text(CONF.format(ext=str(ROOT / "docs" / "_ext"),
                                             results=str(results_dir), pages=pages))
    (src / "index.rst").write_text("Home\n====\n\n.. toctree::\n\n   results\n   choosing\n")
    (src / "results.rst").write_text("Results\n=======\n\n.. curvlab-results::\n\n"
                                     "Step time\n---------\n\n.. curvlab-step-time:: step_time\n")
    (src / "choosing.rst").write_text(CHOOSING)
    warnings = StringIO()
    with docutils_namespace():  # this process may have run other Sphinx apps
        app = sphinx_application.Sphinx(str(src), str(src), str(out), str(tmp_path / "doctrees"),
                                         "html", status=None, warning=warnings, freshenv=True)
        app.build()
    return out, warnings.getvalue()


@pytest.fixture(scope="module")
def site(tmp_path_factory, results_dir):
    return build(tmp_path_factory.mktemp("site"), results_dir)


def text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_results_page_shows_every_comparison_with_its_command_and_provenance(site):
    out, warnings = site
    assert warnings == ""
    page = text((out / "results.html").read_text())
    for name in ("toy-defaults", "toy-tuned"):
        assert f"Title of {name}" in page and f"curvlab compare --problem quadratic --name {name}" in page
    for fact in ("2026-12-01", "Test CPU 3000", "2 cores", "curvlab 0.1.0 (git abc123)",
                 "torch 2.13.0+cpu", "python docs/results/regenerate.py toy"):
        assert fact in page, fact
    assert "Toy set" in page and "Ghost set" not in page  # a set without its store is not shown


def test_every_figure_carries_command_date_machine_and_versions(site):
    out, _ = site
    html = (out / "results.html").read_text()
    figures = re.findall(r'<figure class="curvlab-figure[^"]*".*?</figure>', html, re.S)
    # 3 harness plots per comparison + one profile
    assert len(figures) == 7
    for fig in figures:
        caption = text(fig)
        assert "2026-12-01" in caption and "Test CPU 3000" in caption and "torch 2.13.0" in caption
        assert "curvlab compare" in caption
        src = re.search(r'src="([^"]+)"', fig).group(1)
        png = (out / "results.html").parent / src
        assert png.is_file(), src
        import matplotlib.image as mpimg

        height = mpimg.imread(png).shape[0]
        assert height > 4.5 * 110, f"{src} has no provenance footer ({height} px)"


def test_tables_come_from_the_store_summary(site, results_dir):
    out, _ = site
    page = text((out / "results.html").read_text())
    store = Store(results_dir / "toy.sqlite")
    try:
        from curvlab.harness import Comparison

        cid, spec = store.comparison("toy-tuned")
        rows = Comparison(cid, store, spec).summary()
    finally:
        store.close()
    for row in rows:
        assert f"{row['final_loss']:.4g}" in page
        if row["hparams"]:
            assert row["hparams"] in page
    assert "ρ(τ=1)" in page and "Performance profiles across these problems" in page


def test_step_time_table_and_choosing_page_use_the_benchmark_csv(site, results_dir):
    out, _ = site
    results = text((out / "results.html").read_text())
    assert "1.50×" in results and "n/a" in results
    choosing = text((out / "choosing.html").read_text())
    assert "1.50×" in choosing  # adam's cost on the quadratic
    assert "A hand-written caveat about SGD." in choosing
    assert "Stability caveats" in choosing
    assert re.search(r"lr=[0-9.e-]+: #\d of 2|#\d of 2", choosing)
    store = Store(results_dir / "toy.sqlite")
    try:
        from curvlab.harness import Comparison

        cid, spec = store.comparison("toy-tuned")
        tried = len([r for r in Comparison(cid, store, spec).records(("tune",))
                     if r["label"] == "sgd"])
    finally:
        store.close()
    assert tried > 1  # sgd's tuning trials, counted in the store
    assert f"{tried} of {tried}" not in choosing and re.search(rf"\d+ of {tried}\b", choosing)


def test_choosing_warns_about_a_builtin_without_a_section(tmp_path):
    empty = tmp_path / "no-results"
    empty.mkdir()
    _, warnings = build(tmp_path, empty, pages={"sgd": "choosing", "adam": "choosing"})
    assert "no '.. curvlab-choose:: adam' section" in warnings


def test_evidence_ranks_and_grid_failures(results_dir):
    class Config:
        curvlab_results_dir = str(results_dir)
        curvlab_backend_pages = {"adam": "x"}
        curvlab_choosing = {"benchmark": "step_time", "tuned": "toy/toy-tuned",
                            "defaults": ["toy/toy-defaults"]}

    evidence, sources = curvlab_choosing.collect(Path("/"), Config())
    assert sources["problems"] == ["quadratic", "conv"]
    assert list(evidence)[0] == "adam"  # maths-page order first
    sgd, adam = evidence["sgd"], evidence["adam"]
    assert adam.cost == {"quadratic": 1.5, "conv": "unsupported: Linear layers only"}
    assert {sgd.tuned.rank, adam.tuned.rank} == {1, 2} and sgd.tuned.of == 2
    assert sgd.grid == adam.grid == 8  # the protocol: the same trial budget (trials=8) for each
    assert sgd.tuned.hparams.startswith("lr=")
    assert [o.comparison for o in sgd.defaults] == ["Title of toy-defaults"]


def test_compact_store_keeps_every_run_with_evaluation_points_only(tmp_path):
    scratch, small = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    c = compare("quadratic", ["sgd"], steps=10, eval_every=5, store=str(scratch),
                executor="serial", name="one")
    before = c.summary()
    regenerate.compact(scratch, small, ["one"])
    store = Store(small)
    try:
        cid, spec = store.comparison("one")
        assert cid == "one" and spec == c.spec
        from curvlab.harness import Comparison

        comp = Comparison(cid, store, spec)
        assert [r["final_loss"] for r in comp.summary()] == [r["final_loss"] for r in before]
        kinds = {p.kind for rec in comp.records(("final", "reference", "tune"))
                 for p in rec["result"].curve}
        assert kinds == {"eval"}
    finally:
        store.close()


def test_result_sets_skip_missing_stores_and_order_by_manifest(tmp_path):
    for name, order in (("b", 1), ("a", 2), ("c", 0)):
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"kind": "comparisons", "order": order, "store": f"{name}.sqlite"}))
        if name != "c":
            Store(tmp_path / f"{name}.sqlite").close()
    (tmp_path / "bench.json").write_text(json.dumps({"kind": "benchmark"}))
    assert [s.name for s in curvlab_results.result_sets(tmp_path)] == ["b", "a"]


def test_stamp_adds_a_footer_below_the_picture(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2), dpi=100)
    ax.plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "p.png", dpi=100)
    plt.close(fig)
    before = mpimg.imread(tmp_path / "p.png").shape
    curvlab_results.stamp(tmp_path / "p.png", ["command line", "date · machine", "versions"])
    after = mpimg.imread(tmp_path / "p.png").shape
    assert after[1] == before[1] and after[0] > before[0] + 30


def test_regenerate_commands_are_the_cli_with_repo_relative_paths():
    store = regenerate.ROOT / "curvlab-results" / "docs" / "readme.sqlite"
    cmd = regenerate.command(["--problem", "digits-mlp"], store, "main", jobs=1)
    assert regenerate.display(cmd) == ("curvlab compare --problem digits-mlp --store "
                                       "curvlab-results/docs/readme.sqlite --name main --report none")
    for spec in regenerate.SETS.values():
        names = [c["name"] for c in spec["comparisons"]]
        assert len(set(names)) == len(names)
    assert set(regenerate.versions()) >= {"python", "curvlab", "torch", "numpy"}
