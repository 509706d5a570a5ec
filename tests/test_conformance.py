"""Every registered optimizer (built-in backends, baselines, bridged peers) passes the suite."""

from curvlab.testing import ConformanceSuite


class TestConformance(ConformanceSuite):
    optimizers = None  # every name in curvlab.available()
