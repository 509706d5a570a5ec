"""Sphinx configuration for the curvlab documentation.

Build (warnings are errors)::

    python3 -m sphinx -W --keep-going -b html docs docs/_build/html

No network is needed, neither to build nor to read the pages: intersphinx is
deliberately not enabled, and MathJax is served from the built docs
(``docs/_ext/curvlab_mathjax.py``; ``make docs`` installs it with npm).
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))  # import curvlab from the checkout if not installed

import curvlab  # noqa: E402

project = "curvlab"
author = "curvlab contributors"
copyright = "curvlab contributors"  # noqa: A001 - Sphinx's name
release = curvlab.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "curvlab_mathjax",  # MathJax from _static/, never from a CDN
    "sphinx.ext.viewcode",
    "curvlab_docs",
    "curvlab_results",  # Results page: tables and plots from docs/results/
    "curvlab_choosing",  # Choosing an optimizer: cost, coverage, measured behaviour
    "curvlab_reproductions",  # Reproductions page: docs/results/reproductions.json
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "node_modules", "results/_figures"]
root_doc = "index"

# -- API reference -----------------------------------------------------------
autosummary_generate = True
autosummary_generate_overwrite = True
autosummary_imported_members = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_inherit_docstrings = True
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields, so no duplicate attribute entries
napoleon_use_rtype = False
add_module_names = False
python_display_short_literal_types = True

# -- generated reference pages (docs/_ext/curvlab_docs.py) --------------------
curvlab_backend_pages = {
    "kfac": "backends/kfac",
    "foof": "backends/foof",
    "kbfgs": "backends/kbfgs",
    "kbfgsl": "backends/kbfgs",
    "groupednewton": "backends/groupednewton",
    "natgrad": "backends/natgrad",
    "sgd": "backends/baselines",
    "adam": "backends/baselines",
    "rmsprop": "backends/baselines",
    "soap": "backends/peers",
    "shampoo": "backends/peers",
    "kron": "backends/peers",
    "adahessian": "backends/peers",
    "sophiah": "backends/peers",
    "muon": "backends/peers",
}
# A registered optimizer that fails to import is a build warning (so -W fails);
# CURVLAB_DOCS_STRICT=0 relaxes it to a note in the page.
curvlab_docs_strict = os.environ.get("CURVLAB_DOCS_STRICT", "1") != "0"

# -- HTML --------------------------------------------------------------------
html_theme = "furo"
html_title = f"curvlab {release}"
html_static_path = ["_static"]
html_css_files = ["curvlab.css"]
smartquotes = False  # keep quotes in code-like text (hparam docs) straight

# One API page per module of these packages, written to docs/api/generated/ at build time.
curvlab_api_packages = ["curvlab", "curvlab_plugins"]
curvlab_api_dir = "api/generated"

# -- Results and Choosing pages (docs/_ext/curvlab_results.py, curvlab_choosing.py) --
# Data: docs/results/*.json manifests + stores/CSV, written by docs/results/regenerate.py.
curvlab_results_dir = "results"
curvlab_results_figures = "results/_figures"  # drawn at build time, not committed
curvlab_choosing = {
    "benchmark": "step_time",
    "tuned": "readme/digits-autoencoder-tuned",
    "defaults": ["readme/digits-mlp-defaults", "readme/digits-cnn-defaults"],
}
