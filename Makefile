# README's two commands are `make install` and `make test`; CI (.ci/run) runs `make test`.
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install --quiet --disable-pip-version-check -c .ci/constraints.txt
REPORT ?= curvlab-results

.PHONY: install test lint pytest docs slow bench data

## Install everything (CPU torch pinned via .ci/constraints.txt) and run the main job.
install:
	$(PIP_INSTALL) -e ".[peers]"
	$(PYTHON) -m curvlab.cli compare --problem digits-mlp --optimizers all --store $(REPORT)/results.sqlite --report $(REPORT)

## Install test dependencies, lint, run the test suite and build the docs (what CI runs).
test:
	$(PIP_INSTALL) -e ".[test,docs,peers]"
	$(MAKE) lint pytest docs

lint:
	$(PYTHON) -m ruff check .

pytest:
	$(PYTHON) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

docs:
	$(PYTHON) -m sphinx -W --keep-going -q -b html docs docs/_build/html

## Long-running checks (paper-style comparisons); not part of CI.
slow:
	$(PYTHON) -m pytest -q -m slow

bench:
	$(PYTHON) benchmarks/step_time.py

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
	$(PYTHON) -c "from curvlab.harness.data import data_listing; print(data_listing())"
