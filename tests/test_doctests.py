"""Every docstring example in curvlab and its built-in plugins runs (imported by real name)."""

import doctest
import importlib
import pkgutil

import pytest

import curvlab
import curvlab_plugins


def _modules():
    names = []
    for pkg in (curvlab, curvlab_plugins):
        names.append(pkg.__name__)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg.__name__ + "."):
            names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("module_name", _modules())
def test_docstring_examples(module_name):
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:  # optional dependency of a bridge plugin
        pytest.skip(f"{module_name}: {err}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} doctest failure(s) in {module_name}"
