"""The complete description of one run, :class:`RunConfig`, and its hash key.

Two runs with equal configs (and equal curvlab version) are the same run:
the results store keys runs by :meth:`RunConfig.key`, a SHA-256 of the
canonical JSON of every field plus ``curvlab.__version__``. The fields
include the fingerprint of the data files the problem reads and the code
hash of the optimizer's plugin package
(:func:`~curvlab.harness.provenance.plugin_code_hash`), so changed data or a
changed backend gives new keys and is re-run, while the cached runs of every
other optimizer stay valid (benchopt keys its cache on the solver's code the
same way).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from curvlab.harness.schedules import resolve_warmup
from curvlab.harness.settings import DTYPES, RunOptions

__all__ = ["DTYPES", "UNRECORDED", "RunConfig"]

#: Placeholder of a field that a stored config predates.
UNRECORDED = "unrecorded"


def _version() -> str:
    import curvlab

    return curvlab.__version__


@dataclass(frozen=True)
class RunConfig(RunOptions):
    """One run: (problem, optimizer, hparams, seed) and the run options it shares with a comparison.

    The run options (``steps``, ``seconds``, ``eval_every``, ``device``,
    ``dtype``, ``threads``) are keyword-only and declared, with their rules
    and defaults, once in :class:`~curvlab.harness.settings.RunOptions`.

    Args:
        problem: Normalised problem name.
        optimizer: Normalised optimizer name.
        hparams: Every hyper-parameter value (defaults filled in), so that the
            hash does not depend on which ones were given explicitly.
        seed: Seeds the model initialisation, the mini-batch order and
            torch's global RNG.
        problem_options: Options of the problem (``small``, ``data_dir``,
            batch sizes, ``split_seed``, ``eval_size``), as
            :meth:`Problem.options` reports them.
        data_fingerprint: SHA-256 over the data files the problem reads
            (:meth:`Problem.provenance`), ``None`` for generated data; the
            runner refuses data with another fingerprint.
        plugin_code: Code hash of the optimizer's plugin package (default:
            computed now by :func:`~curvlab.harness.provenance.plugin_code_hash`).
        steps, seconds, eval_every, schedule, warmup, device, dtype, threads:
            See :class:`~curvlab.harness.settings.RunOptions` (``steps=None``:
            unlimited, then ``seconds`` must be set; ``eval_every=None``: the
            problem's :attr:`~curvlab.harness.problems.Problem.default_eval_every`;
            ``warmup=None``: the schedule's default), stored resolved.

    Raises:
        ValueError: no budget, a budget ≤ 0, ``eval_every`` ≤ 0, unknown dtype,
            device, schedule or problem, a negative seed.

    Example:
        >>> c = RunConfig("quadratic", "sgd", {"lr": 0.1}, seed=0, steps=10)
        >>> len(c.key()), c.key() == RunConfig("quadratic", "sgd", {"lr": 0.1}, 0, steps=10).key()
        (16, True)
        >>> RunConfig("quadratic", "sgd", {}, 0, steps=0)
        Traceback (most recent call last):
        ...
        ValueError: steps must be a positive integer or None, got 0
    """

    problem: str
    optimizer: str
    hparams: dict[str, Any]
    seed: int = 0
    problem_options: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str | None = None
    plugin_code: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        super().__post_init__()
        if self.eval_every is None:
            from curvlab.harness.problems import PROBLEMS

            object.__setattr__(self, "eval_every",
                               int(PROBLEMS.load(self.problem).default_eval_every))
        object.__setattr__(self, "warmup", resolve_warmup(self.schedule, self.warmup))
        if self.plugin_code is None:
            from curvlab.harness.provenance import plugin_code_hash

            object.__setattr__(self, "plugin_code", plugin_code_hash(self.optimizer))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (tuples become lists)."""
        return json.loads(json.dumps(asdict(self), sort_keys=True))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`.

        A config stored before a field existed gets that field's old meaning
        (no schedule, no recorded fingerprint or code hash: ``"unrecorded"``),
        never today's value.
        """
        d = dict(d)
        d.setdefault("plugin_code", UNRECORDED)
        return cls(**d)

    def key(self) -> str:
        """16 hex digits of SHA-256(canonical JSON of the config + curvlab version)."""
        blob = json.dumps({"config": self.to_dict(), "curvlab": _version()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
