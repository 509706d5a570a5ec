"""The comparison harness: problems, runs, results store, metrics, reports.

Python entry points (the CLI ``curvlab compare`` / ``ablate`` / ``report``
wraps them):

>>> from curvlab.harness import compare
>>> c = compare("quadratic", ["sgd", "adam"], steps=10, eval_every=5,
...             store=":memory:", executor="serial")
>>> sorted(row["label"] for row in c.summary())
['adam', 'sgd']
"""

from curvlab.harness.compare import DEFAULT_BUDGET, Comparison, ablate, compare
from curvlab.harness.config import RunConfig
from curvlab.harness.problems import Problem, available_problems, load_problem
from curvlab.harness.profiles import performance_profile
from curvlab.harness.runner import RunResult, execute
from curvlab.harness.store import Store

__all__ = [
    "DEFAULT_BUDGET",
    "Comparison",
    "Problem",
    "RunConfig",
    "RunResult",
    "Store",
    "ablate",
    "available_problems",
    "compare",
    "execute",
    "load_problem",
    "performance_profile",
]
