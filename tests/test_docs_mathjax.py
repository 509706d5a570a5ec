"""docs/_ext/curvlab_mathjax.py: MathJax is served from the build, or the build stops and says why."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
sphinx_application = pytest.importorskip("sphinx.application", reason="sphinx is not installed")
import curvlab_mathjax  # noqa: E402
from sphinx.errors import ConfigError  # noqa: E402
from sphinx.util.docutils import docutils_namespace  # noqa: E402

PAGE = "Maths\n=====\n\nInline :math:`a^2 + b^2` and display\n\n.. math::\n\n   e^{i\\pi} = -1\n"


def fake_npm_tree(root: Path, version: str = "4.1.3", font: bool = True) -> Path:
    """A node_modules tree shaped like ``npm ci`` leaves it (tiny stand-in files)."""
    mj = root / "node_modules" / "mathjax"
    (mj / "sre").mkdir(parents=True)
    deps = {"@mathjax/mathjax-newcm-font": f"^{version}"}
    (mj / "package.json").write_text(json.dumps({"name": "mathjax", "version": version,
                                                 "dependencies": deps}))
    (mj / curvlab_mathjax.COMPONENT).write_text("/* MathJax */")
    (mj / "sre" / "speech-worker.js").write_text("/* worker */")
    if font:
        f = root / "node_modules" / "@mathjax" / "mathjax-newcm-font"
        (f / "chtml" / "woff2").mkdir(parents=True)
        (f / "package.json").write_text(json.dumps({"name": "@mathjax/mathjax-newcm-font",
                                                    "version": version}))
        (f / "chtml.js").write_text("/* font */")
        (f / "chtml" / "woff2" / "mjx-ncm-n.woff2").write_bytes(b"wOF2")
    return mj


def build(tmp_path: Path, mathjax_dir: Path | None) -> Path:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir(exist_ok=True)
    conf = [f"import sys; sys.path.insert(0, {str(ROOT / 'docs' / '_ext')!r})",
            "extensions = ['curvlab_mathjax']"]
    if mathjax_dir is not None:
        conf.append(f"curvlab_mathjax_dir = {str(mathjax_dir)!r}")
    (src / "conf.py").write_text("\n".join(conf) + "\n")
    (src / "index.rst").write_text(PAGE)
    with docutils_namespace():  # this process may have run other Sphinx apps
        app = sphinx_application.Sphinx(str(src), str(src), str(out), str(tmp_path / "doctrees"),
                                         "html", status=None, warning=None, freshenv=True)
        app.build()
    return out


def test_build_serves_mathjax_and_its_fonts_from_static(tmp_path):
    mj = fake_npm_tree(tmp_path / "npm")
    out = build(tmp_path, mj)
    page = (out / "index.html").read_text()
    assert 'src="_static/mathjax/tex-mml-chtml.js' in page
    assert "cdn.jsdelivr" not in page and "https://" not in page.split("<body")[0]
    config = json.loads(page.split("window.MathJax = ")[1].split("</script>")[0])
    assert config["loader"]["paths"]["fonts"] == "[mathjax]/fonts"
    static = out / "_static" / "mathjax"
    assert (static / "tex-mml-chtml.js").is_file() and (static / "sre" / "speech-worker.js").is_file()
    assert (static / "fonts" / "mathjax-newcm-font" / "chtml" / "woff2" / "mjx-ncm-n.woff2").is_file()
    assert 'location.protocol === "file:"' in page  # speech worker replaced where it cannot run


def test_rebuild_refreshes_the_copy_when_the_package_changes(tmp_path):
    mj = fake_npm_tree(tmp_path / "npm")
    build(tmp_path, mj)
    (mj / curvlab_mathjax.COMPONENT).write_text("/* MathJax, updated */")
    pkg = json.loads((mj / "package.json").read_text())
    (mj / "package.json").write_text(json.dumps({**pkg, "version": "4.1.4"}))
    out = build(tmp_path, mj)
    assert "updated" in (out / "_static" / "mathjax" / curvlab_mathjax.COMPONENT).read_text()


@pytest.mark.parametrize(
    "layout,message",
    [("missing", "MathJax is not installed"), ("v3", "configured for MathJax 4"),
     ("no-font", "font package @mathjax/mathjax-newcm-font")],
    ids=["missing", "wrong-major-version", "missing-font"],
)
def test_build_without_mathjax_stops_with_install_hint(tmp_path, layout, message):
    if layout == "missing":
        target = tmp_path / "npm" / "node_modules" / "mathjax"
    else:
        target = fake_npm_tree(tmp_path / "npm", version="3.2.2" if layout == "v3" else "4.1.3",
                               font=layout != "no-font")
    with pytest.raises(ConfigError, match=message) as err:
        build(tmp_path, target)
    assert "make docs" in str(err.value) and "npm ci --prefix docs" in str(err.value)


def test_default_location_is_next_to_conf_and_env_overrides(tmp_path, monkeypatch):
    class Config:
        curvlab_mathjax_dir = ""

    fake_npm_tree(tmp_path)
    monkeypatch.delenv("CURVLAB_MATHJAX_DIR", raising=False)
    assert curvlab_mathjax.mathjax_dir(Config(), tmp_path) == tmp_path / "node_modules" / "mathjax"
    other = fake_npm_tree(tmp_path / "elsewhere")
    monkeypatch.setenv("CURVLAB_MATHJAX_DIR", str(other))
    assert curvlab_mathjax.mathjax_dir(Config(), tmp_path) == other


def test_docs_pin_mathjax_4_through_npm():
    manifest = json.loads((ROOT / "docs" / "package.json").read_text())
    lock = json.loads((ROOT / "docs" / "package-lock.json").read_text())
    version = manifest["dependencies"]["mathjax"]
    assert version.split(".")[0] == str(curvlab_mathjax.MATHJAX_MAJOR)
    assert lock["packages"]["node_modules/mathjax"]["version"] == version
    assert lock["packages"]["node_modules/mathjax"]["integrity"].startswith("sha512-")
