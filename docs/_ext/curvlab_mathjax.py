"""Serve MathJax from the built documentation itself: equations render offline.

``sphinx.ext.mathjax`` loads MathJax from a CDN by default, so on an
air-gapped machine every equation stays raw TeX. This extension instead
copies the official ``mathjax`` npm package (and the font package it
depends on) into ``_static/mathjax/`` of the HTML output and points
``mathjax_path`` at that copy, so the pages never request anything from the
network and render the same online and offline.

Where the package comes from: ``docs/package.json`` pins it and
``docs/package-lock.json`` fixes its integrity hash; ``make docs`` runs
``npm ci --prefix docs``, which installs it into ``docs/node_modules/``.
Nothing of MathJax is kept in the repository.

Configuration:

``curvlab_mathjax_dir``
    The installed ``mathjax`` package; default: the ``CURVLAB_MATHJAX_DIR``
    environment variable, else ``node_modules/mathjax`` next to ``conf.py``.

A missing or unexpected package is a configuration error that stops the
build and says how to install it; there is no fallback to a CDN.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ConfigError

#: MathJax major version this configuration is written for.
MATHJAX_MAJOR = 4
#: Where the copy lives in the HTML output, relative to ``_static``.
STATIC_DIR = "mathjax"
#: The combined component the pages load (TeX and MathML input, CHTML output).
COMPONENT = "tex-mml-chtml.js"
_STAMP = ".curvlab-mathjax"
#: Browsers refuse web workers on file:// pages, and MathJax 4 generates speech
#: and Braille in one; there the pages use assistive MathML for screen readers
#: instead (the typeset equations are the same). Runs after ``window.MathJax =``.
FILE_PROTOCOL_JS = """\
if (location.protocol === "file:") {
  const mj = window.MathJax = window.MathJax || {};
  const opts = mj.options = mj.options || {};
  const menu = opts.menuOptions = opts.menuOptions || {};
  menu.settings = Object.assign({}, menu.settings,
                                {speech: false, braille: false, assistiveMml: true});
}"""
INSTALL_HINT = (
    "install it with `make docs` (which runs `npm ci --prefix docs`; needs Node.js/npm), "
    "or point CURVLAB_MATHJAX_DIR at an installed `mathjax` npm package"
)


def _package_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "package.json").read_text())
    except (OSError, ValueError):
        return {}


def mathjax_dir(config: Config, confdir: str | Path) -> Path:
    """The installed ``mathjax`` npm package this build serves.

    Raises:
        ConfigError: the package is missing, is not ``mathjax`` or has
            another major version than :data:`MATHJAX_MAJOR`.
    """
    given = config.curvlab_mathjax_dir or os.environ.get("CURVLAB_MATHJAX_DIR", "")
    path = Path(given) if given else Path(confdir) / "node_modules" / "mathjax"
    meta = _package_json(path)
    if meta.get("name") != "mathjax" or not (path / COMPONENT).is_file():
        raise ConfigError(
            f"curvlab-mathjax: MathJax is not installed at {path} (no {COMPONENT} of the "
            f"`mathjax` npm package there); the docs serve MathJax themselves and never "
            f"load it from a CDN: {INSTALL_HINT}"
        )
    major = str(meta.get("version", "")).split(".")[0]
    if major != str(MATHJAX_MAJOR):
        raise ConfigError(
            f"curvlab-mathjax: {path} holds mathjax {meta.get('version')!r}; the docs are "
            f"configured for MathJax {MATHJAX_MAJOR}.x (docs/package.json): {INSTALL_HINT}"
        )
    return path


def font_packages(mathjax: Path) -> dict[str, Path]:
    """The font packages ``mathjax`` depends on: ``font name → installed folder``.

    MathJax 4 keeps its fonts in separate packages (``@mathjax/<font>-font``),
    resolved here as Node would: nested under the package, else beside it.

    Raises:
        ConfigError: a font package is not installed.
    """
    out = {}
    for dep in _package_json(mathjax).get("dependencies", {}):
        if not dep.endswith("-font"):
            continue
        for candidate in (mathjax / "node_modules" / dep, mathjax.parent / dep):
            if _package_json(candidate).get("name") == dep:
                out[dep.rpartition("/")[2].removesuffix("-font")] = candidate
                break
        else:
            raise ConfigError(f"curvlab-mathjax: font package {dep} of {mathjax} is missing: "
                              f"{INSTALL_HINT}")
    return out


def _configure(app: Sphinx, config: Config) -> None:
    """``config-inited``: load MathJax and its fonts from ``_static/mathjax``."""
    font_packages(mathjax_dir(config, app.confdir))  # fail now, before reading any source
    config.mathjax_path = f"{STATIC_DIR}/{COMPONENT}"
    # Sphinx >= 9 names the MathJax 4 configuration mathjax4_config; older ones
    # write mathjax3_config the same way (window.MathJax = {...}).
    name = "mathjax4_config" if "mathjax4_config" in config else "mathjax3_config"
    mj = dict(getattr(config, name) or {})
    loader = dict(mj.get("loader", {}))
    # Fonts are fetched from [fonts]/<font>-font/...; by default [fonts] is a CDN.
    loader["paths"] = {**loader.get("paths", {}), "fonts": "[mathjax]/fonts"}
    mj["loader"] = loader
    setattr(config, name, mj)


def _copy(app: Sphinx) -> None:
    """``builder-inited``: copy MathJax and its fonts into ``_static/mathjax`` of HTML builds."""
    if app.builder.format != "html":
        return
    path = mathjax_dir(app.config, app.confdir)
    fonts = font_packages(path)
    dest = Path(app.outdir) / "_static" / STATIC_DIR
    versions = {"mathjax": _package_json(path)["version"],
                **{f: _package_json(p)["version"] for f, p in fonts.items()}}
    stamp = json.dumps({"source": str(path.resolve()), **versions}, sort_keys=True)
    if (dest / _STAMP).is_file() and (dest / _STAMP).read_text() == stamp:
        return
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(path, dest, ignore=shutil.ignore_patterns("node_modules"))
    for font, src in fonts.items():
        target = dest / "fonts" / f"{font}-font"
        shutil.copytree(src / "chtml", target / "chtml")
        for extra in ("chtml.js", "package.json", "LICENSE"):
            if (src / extra).is_file():
                shutil.copy2(src / extra, target / extra)
    (dest / _STAMP).write_text(stamp)


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the configuration value and the two hooks."""
    app.setup_extension("sphinx.ext.mathjax")
    app.add_config_value("curvlab_mathjax_dir", "", "html", types=frozenset({str}))
    app.connect("config-inited", _configure, priority=900)
    app.connect("builder-inited", _copy)
    app.add_js_file(None, body=FILE_PROTOCOL_JS, priority=600)  # after the config (500)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
