"""The comparison harness: problems, runs, the protocol, results store, statistics, reports.

Python entry points (the CLI ``curvlab compare`` / ``ablate`` / ``report`` /
``merge`` wraps them). The settings shared by every run of a comparison are one
value, :class:`RunSettings`, built once and passed down; its fields may
also be given as keywords:

>>> from curvlab.harness import RunSettings, compare
>>> settings = RunSettings(steps=10, eval_every=5, store=":memory:", executor="serial")
>>> c = compare("quadratic", ["sgd", "adam"], settings=settings)
>>> sorted(row["label"] for row in c.summary())
['adam', 'sgd']
>>> compare("quadratic", ["sgd"], steps=10, eval_every=5, store=":memory:",
...         executor="serial").spec["steps"]
10
"""

from curvlab.harness.ablation import Ablation, ablate
from curvlab.harness.compare import Comparison, compare
from curvlab.harness.config import RunConfig
from curvlab.harness.merge import merge_stores
from curvlab.harness.problems import Problem, available_problems, load_problem
from curvlab.harness.profiles import performance_profile, profile_score
from curvlab.harness.results import CurvePoint, RunMetrics, RunResult
from curvlab.harness.runner import DataError, execute
from curvlab.harness.settings import DEFAULT_BUDGET, RunSettings
from curvlab.harness.store import Store, StoreError

__all__ = [
    "DEFAULT_BUDGET",
    "Ablation",
    "Comparison",
    "CurvePoint",
    "DataError",
    "Problem",
    "RunConfig",
    "RunMetrics",
    "RunResult",
    "RunSettings",
    "Store",
    "StoreError",
    "ablate",
    "available_problems",
    "compare",
    "execute",
    "load_problem",
    "merge_stores",
    "performance_profile",
    "profile_score",
]
