"""curvlab's conformance suite, run on this plugin's optimizer (three lines)."""

from curvlab.testing import ConformanceSuite


class TestSignSGD(ConformanceSuite):
    optimizers = ["signsgd"]
