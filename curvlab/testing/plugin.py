"""Pytest plugin (auto-loaded through the ``pytest11`` entry point).

It parametrises test classes that derive from
:class:`curvlab.testing.ConformanceSuite` over the optimizer names given in
their ``optimizers`` attribute (``None``: every name in
:func:`curvlab.available`). Importing this module is cheap: curvlab itself
is imported only when such a class is collected.
"""

from __future__ import annotations

from typing import Any


def pytest_generate_tests(metafunc: Any) -> None:
    """Parametrise ``optimizer_name`` for conformance test classes."""
    cls = metafunc.cls
    if cls is None or "optimizer_name" not in metafunc.fixturenames:
        return
    if not getattr(cls, "__curvlab_conformance__", False):
        return
    names = getattr(cls, "optimizers", None)
    if names is None:
        import curvlab

        names = curvlab.available()
    metafunc.parametrize("optimizer_name", list(names), ids=[str(n) for n in names])
