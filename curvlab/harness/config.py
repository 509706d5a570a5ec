"""The complete description of one run, :class:`RunConfig`, and its hash key.

Two runs with equal configs (and equal curvlab version) are the same run:
the results store keys runs by :meth:`RunConfig.key`, a SHA-256 of the
canonical JSON of every field plus ``curvlab.__version__``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["DTYPES", "RunConfig"]

DTYPES = ("float32", "float64")


def _version() -> str:
    import curvlab

    return curvlab.__version__


@dataclass(frozen=True)
class RunConfig:
    """One run: (problem, optimizer, hparams, seed, budget, device, dtype).

    Args:
        problem: Normalised problem name.
        optimizer: Normalised optimizer name.
        hparams: Every hyper-parameter value (defaults filled in), so that the
            hash does not depend on which ones were given explicitly.
        seed: Seeds the model initialisation, the mini-batch order and
            torch's global RNG.
        steps: Step budget (``None``: unlimited, then ``seconds`` must be set).
        seconds: Wall-time budget of the timed (training) region, or ``None``.
        eval_every: Evaluate full train loss and test loss/accuracy every
            this many steps (outside the timed region).
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:1"`` …).
        dtype: ``"float32"`` or ``"float64"``.
        threads: ``torch.set_num_threads`` for the run.
        problem_options: Options of the problem (``small``, ``data_dir``).

    Raises:
        ValueError: no budget, a budget ≤ 0, ``eval_every`` ≤ 0, unknown dtype
            or device.

    Example:
        >>> c = RunConfig("quadratic", "sgd", {"lr": 0.1}, seed=0, steps=10)
        >>> len(c.key()), c.key() == RunConfig("quadratic", "sgd", {"lr": 0.1}, 0, steps=10).key()
        (16, True)
        >>> RunConfig("quadratic", "sgd", {}, 0, steps=0)
        Traceback (most recent call last):
        ...
        ValueError: steps must be a positive integer, got 0
    """

    problem: str
    optimizer: str
    hparams: dict[str, Any]
    seed: int = 0
    steps: int | None = None
    seconds: float | None = None
    eval_every: int = 25
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1
    problem_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.steps is None and self.seconds is None:
            raise ValueError("a run needs a budget: steps and/or seconds")
        if self.steps is not None and (
            isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps <= 0
        ):
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if self.seconds is not None and not (
            isinstance(self.seconds, (int, float)) and math.isfinite(self.seconds) and self.seconds > 0
        ):
            raise ValueError(f"seconds must be > 0, got {self.seconds!r}")
        if not isinstance(self.eval_every, int) or self.eval_every <= 0:
            raise ValueError(f"eval_every must be a positive integer, got {self.eval_every!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if not isinstance(self.threads, int) or self.threads <= 0:
            raise ValueError(f"threads must be a positive integer, got {self.threads!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (tuples become lists)."""
        return json.loads(json.dumps(asdict(self), sort_keys=True))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**d)

    def key(self) -> str:
        """16 hex digits of SHA-256(canonical JSON of the config + curvlab version)."""
        blob = json.dumps({"config": self.to_dict(), "curvlab": _version()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
