# README's two commands are `make install` and `make test`; CI (.ci/run) runs `make test`.
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install --quiet --disable-pip-version-check -c .ci/constraints.txt
REPORT ?= curvlab-results

.PHONY: install test lint pytest docs docs-browser results slow bench
# MathJax for the docs (pinned in docs/package.json + docs/package-lock.json), served from the built pages.
DOCS_ASSETS = docs/node_modules/.package-lock.json

## Install everything (CPU torch pinned via .ci/constraints.txt) and run the main job.
install:
	$(PIP_INSTALL) -e ".[peers]"
	$(PYTHON) -m curvlab.cli compare --problem digits-mlp --optimizers all --store $(REPORT)/results.sqlite --report $(REPORT)

## Install test dependencies, lint, run the test suite and build the docs (what CI runs).
test:
	$(PIP_INSTALL) -e ".[test,docs,peers]"
	$(MAKE) lint pytest docs docs-browser

lint:
	$(PYTHON) -m ruff check .

pytest:
	$(PYTHON) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

docs: $(DOCS_ASSETS)
	$(PYTHON) -m sphinx -W --keep-going -q -b html docs docs/_build/html

$(DOCS_ASSETS): docs/package.json docs/package-lock.json
	@command -v npm >/dev/null || { echo "make docs: npm (Node.js) is needed to install MathJax from docs/package.json (Debian: apt-get install npm)" >&2; exit 1; }
	npm ci --prefix docs --no-audit --no-fund --loglevel=error

## The built docs in headless Chromium: equations typeset, no network request (skips without chromium).
docs-browser: docs
	CURVLAB_DOCS_HTML=docs/_build/html $(PYTHON) -m pytest -q -m slow -p no:cacheprovider tests/test_docs_browser.py

## Re-run what the docs' Results and Choosing pages are drawn from (docs/results/; ~30 min on 2 cores).
results:
	$(PYTHON) docs/results/regenerate.py

## Long-running checks (paper-style comparisons); not part of CI.
slow:
	$(PYTHON) -m pytest -q -m slow

bench:
	$(PYTHON) benchmarks/step_time.py
