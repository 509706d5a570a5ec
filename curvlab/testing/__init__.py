"""Conformance suite that any curvlab optimizer (built-in or third-party) can run on itself.

Example:
    >>> from curvlab.testing import ConformanceSuite
    >>> class TestMine(ConformanceSuite):
    ...     optimizers = ["sgd"]
"""

from curvlab.testing.conformance import (
    ConformanceSuite,
    assert_state_equal,
    invalid_values,
    logistic_problem,
)

__all__ = ["ConformanceSuite", "assert_state_equal", "invalid_values", "logistic_problem"]
