# README's two commands are `make install` and `make test`; CI (.ci/run) runs `make test`.
#
# Every target installs into and runs with $(PY): the running $(PYTHON) when it is
# inside a virtual environment, else the project's own $(VENV) (created on first use;
# a PEP 668 system Python refuses `pip install` into itself).
PYTHON ?= python3
VENV ?= .venv
PY := $(shell $(PYTHON) .ci/pyenv.py which --venv $(VENV))
PIP_INSTALL = $(PY) -m pip install --quiet --disable-pip-version-check -c .ci/constraints.txt
REPORT ?= curvlab-results
# the other-kernel run: generic ATen kernels and MKL's conditional-reproducibility mode
OTHER_KERNELS = ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE

.PHONY: env install test lint pytest pytest-other-kernels docs docs-browser results slow bench data
# MathJax for the docs (pinned in docs/package.json + docs/package-lock.json), served from the built pages.
DOCS_ASSETS = docs/node_modules/.package-lock.json

## Create the project venv when not inside a virtual environment.
env:
	@$(PYTHON) .ci/pyenv.py ensure --venv $(VENV)

## Install everything (CPU torch pinned via .ci/constraints.txt) and run the main job.
install: env
	$(PIP_INSTALL) -e ".[peers]"
	$(PY) -m curvlab.cli compare --problem digits-mlp --optimizers all --store $(REPORT)/results.sqlite --report $(REPORT)
	@echo "curvlab is installed for $(PY); results in $(REPORT)/"

## Install test dependencies, lint, run the test suite (twice: this machine's kernels and
## the generic ones) and build the docs (what CI runs).
test: env
	$(PIP_INSTALL) -e ".[test,docs,peers,lightning]"
	$(MAKE) lint pytest pytest-other-kernels docs docs-browser

lint:
	$(PY) -m ruff check .

pytest:
	$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

pytest-other-kernels:
	$(OTHER_KERNELS) $(PY) -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

docs: $(DOCS_ASSETS)
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html

$(DOCS_ASSETS): docs/package.json docs/package-lock.json
	@command -v npm >/dev/null || { echo "make docs: npm (Node.js) is needed to install MathJax from docs/package.json (Debian: apt-get install npm)" >&2; exit 1; }
	npm ci --prefix docs --no-audit --no-fund --loglevel=error

## The built docs in headless Chromium: equations typeset, no network request (skips without chromium).
docs-browser: docs
	CURVLAB_DOCS_HTML=docs/_build/html $(PY) -m pytest -q -m slow -p no:cacheprovider tests/test_docs_browser.py

## Re-run what the docs' Results and Choosing pages are drawn from (docs/results/; ~20-40 min on 2 cores).
results: env
	$(PY) docs/results/regenerate.py

## Long-running checks (paper-style comparisons); not part of CI.
slow:
	$(PY) -m pytest -q -m slow

bench:
	$(PY) benchmarks/step_time.py

## Install the Fashion-MNIST files (Debian package dataset-fashion-mnist) where apt is available,
## say what to do elsewhere, then list every dataset and where it was found.
data:
	@if command -v apt-get >/dev/null 2>&1; then \
	  SUDO=; if [ "$$(id -u)" != 0 ]; then SUDO=sudo; fi; \
	  $$SUDO apt-get install -y dataset-fashion-mnist || \
	  { $$SUDO apt-get update && $$SUDO apt-get install -y dataset-fashion-mnist; }; \
	else \
	  echo "no apt-get here: put the Fashion-MNIST IDX files train-images-idx3-ubyte.gz," \
	       "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz" \
	       "into a folder DIR and pass --data-dir DIR (or set CURVLAB_DATA=DIR)"; \
	fi
	@$(PY) -c "from curvlab.harness.data import data_listing; print(data_listing())" 2>/dev/null \
	  || echo "curvlab is not installed for $(PY) (make install); then run make data again to list the datasets"
