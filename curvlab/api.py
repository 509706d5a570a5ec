"""The by-name API: :func:`create`, :func:`available`, :func:`info`, :func:`register`.

These functions use one :class:`~curvlab.registry.Registry` per process for
the ``curvlab.optimizers`` entry-point group; it holds the names added with
:func:`register` and a cache of the entry points, refreshed when
``sys.path`` or its folders change (so a package installed while the
process runs is seen at the next call) or explicitly with :func:`refresh`.
Every optimizer class is validated when it is loaded or registered
(:func:`check_optimizer_class`): a malformed plugin is reported by name
instead of failing later with a traceback.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from curvlab.closure import CLOSURE_OPTIONS
from curvlab.hparams import Schema
from curvlab.optimizer import CurvatureOptimizer, OptimizerMeta
from curvlab.registry import PluginWarning, Registry, normalize

__all__ = [
    "OptimizerInfo",
    "PluginWarning",
    "available",
    "check_optimizer_class",
    "create",
    "info",
    "refresh",
    "register",
    "unavailable",
    "unregister",
]


def check_optimizer_class(name: str, obj: Any) -> None:
    """Raise unless ``obj`` is a well-formed optimizer class (run on every plugin at load).

    Checks: a :class:`~curvlab.optimizer.CurvatureOptimizer` subclass whose
    ``schema`` is a :class:`~curvlab.hparams.Schema` declaring ``lr``, whose
    ``meta`` is an :class:`~curvlab.optimizer.OptimizerMeta` with a summary,
    known closure options, and conformance hyper-parameters the schema accepts.

    Raises:
        ValueError: names the plugin and the first malformed declaration.

    Example:
        >>> from curvlab_plugins.baselines import SGD
        >>> check_optimizer_class("sgd", SGD)
        >>> class Bad(SGD):
        ...     meta = None
        >>> check_optimizer_class("bad", Bad)
        Traceback (most recent call last):
        ...
        ValueError: optimizer plugin 'bad' is malformed: meta must be an OptimizerMeta, got None
    """
    if not (inspect.isclass(obj) and issubclass(obj, CurvatureOptimizer)):
        raise ValueError(
            f"optimizer plugin {name!r} must be a CurvatureOptimizer subclass, got {obj!r}"
        )

    def bad(text: str) -> ValueError:
        return ValueError(f"optimizer plugin {name!r} is malformed: {text}")

    schema, meta = getattr(obj, "schema", None), getattr(obj, "meta", None)
    if not isinstance(schema, Schema):
        raise bad(f"schema must be a curvlab.Schema, got {schema!r:.60}")
    if "lr" not in schema:
        raise bad("its schema must declare 'lr' (LR schedulers and the harness drive it)")
    if not isinstance(meta, OptimizerMeta):
        raise bad(f"meta must be an OptimizerMeta, got {meta!r:.60}")
    if not isinstance(meta.summary, str) or not meta.summary.strip():
        raise bad("meta.summary must be a non-empty string")
    unknown = set(meta.closure_options) - set(CLOSURE_OPTIONS)
    if unknown:
        raise bad(f"meta.closure_options has unknown option(s) {sorted(unknown)}; allowed: "
                  f"{', '.join(CLOSURE_OPTIONS)}")
    if not isinstance(meta.conformance, Mapping):
        raise bad(f"meta.conformance must be a mapping, got {meta.conformance!r:.60}")
    try:
        schema.validate(meta.conformance, partial=True)
    except ValueError as err:
        raise bad(f"meta.conformance: {err}") from None
    if not isinstance(getattr(obj, "name", None), str):
        raise bad(f"name must be a string, got {getattr(obj, 'name', None)!r:.60}")


OPTIMIZERS = Registry("curvlab.optimizers", kind="optimizer", validate=check_optimizer_class)


@dataclass(frozen=True)
class OptimizerInfo:
    """Everything :func:`info` knows about an optimizer.

    Attributes:
        name: Normalised registry name.
        cls: The optimizer class.
        meta: Summary, paper, supported layers/losses, closure needs.
        schema: Hyper-parameter declarations (defaults, ranges, docs).
    """

    name: str
    cls: type[CurvatureOptimizer]
    meta: OptimizerMeta
    schema: Schema

    @property
    def summary(self) -> str:
        """One-line description."""
        return self.meta.summary

    @property
    def paper(self) -> str:
        """Paper reference."""
        return self.meta.paper

    @property
    def hparams(self) -> list[dict[str, str]]:
        """Hyper-parameter table rows (name, type, default, range, doc)."""
        return self.schema.table()

    def describe(self) -> str:
        """Multi-line human-readable description (used by ``curvlab info``)."""
        lines = [f"{self.name}: {self.meta.summary}"]
        if self.meta.paper:
            lines.append(f"paper: {self.meta.paper}")
        lines.append(f"layers: {', '.join(self.meta.layers)}")
        lines.append(f"losses: {', '.join(self.meta.losses)}")
        if self.meta.closure_options:
            lines.append(f"closure options: {', '.join(self.meta.closure_options)}")
        loops = [k for k, ok in self.meta.loops.items() if ok]
        lines.append(f"training loops: {', '.join(loops)}"
                     + (f" (needs a closure: {self.meta.why_closure})"
                        if self.meta.requires_closure else ""))
        lines.append("hyper-parameters (scope: group = per param group, optimizer = one value):")
        for row in self.hparams:
            lines.append(
                f"  {row['name']:<16} {row['type']:<6} default {row['default']:<10} "
                f"range {row['range']:<20} {row['scope']:<9} {row['doc']}"
                + (f" [search space: {row['space']}]" if row.get("space") else "")
            )
        return "\n".join(lines)


def available(*, verify: bool = False) -> list[str]:
    """Names of the optimizers that can be created, sorted.

    Args:
        verify: Import every plugin and leave out (with a
            :class:`~curvlab.registry.PluginWarning`) those that fail.
            Without it only entry-point metadata is read (nothing imported).

    Example:
        >>> import curvlab
        >>> {"sgd", "adam"} <= set(curvlab.available())
        True
    """
    if verify:
        return sorted(OPTIMIZERS.load_all())
    return OPTIMIZERS.names()


def unavailable() -> dict[str, tuple[str, ...]]:
    """Registered names whose optional requirements are missing → what to install.

    Example:
        >>> isinstance(unavailable(), dict)
        True
    """
    return OPTIMIZERS.unavailable()


def info(name: str) -> OptimizerInfo:
    """Describe an optimizer: summary, paper, hparam schema, layers and losses.

    Raises:
        ValueError: unknown name (with the available names and a close match).

    Example:
        >>> import curvlab
        >>> i = curvlab.info("Adam")
        >>> i.name, i.schema["lr"].default
        ('adam', 0.001)
    """
    cls = OPTIMIZERS.load(name)
    return OptimizerInfo(name=normalize(name), cls=cls, meta=cls.meta, schema=cls.schema)


def create(
    name: str,
    model: nn.Module | Any,
    loss_fn: Callable[..., Tensor] | None = None,
    **hparams: Any,
) -> CurvatureOptimizer:
    """Create an optimizer by name.

    Args:
        name: Any spelling of a registered name (``"ADAM"``, ``"K-BFGS(L)"``).
        model: The network (or, for first-order methods, its parameters).
        loss_fn: The loss module, for methods that need it.
        **hparams: Hyper-parameters (validated; see :func:`info`), plus
            ``params=`` to pass explicit parameters / param groups.

    Returns:
        A ready :class:`~curvlab.optimizer.CurvatureOptimizer`.

    Raises:
        ValueError: unknown name, invalid hyper-parameter, unsupported layer
            or loss.

    Example:
        >>> import torch, curvlab
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = curvlab.create("ADAM", model, torch.nn.MSELoss(), lr=1e-3)
        >>> type(opt).__name__
        'Adam'
    """
    cls = OPTIMIZERS.load(name)
    return cls(model, loss_fn, **hparams)


def register(name: str, cls: type[CurvatureOptimizer], *, replace: bool = False) -> None:
    """Register an optimizer class that is not installed as a package (e.g. in a notebook).

    The same validation as for entry points applies: ``cls`` must subclass
    :class:`~curvlab.optimizer.CurvatureOptimizer` and the name must be free.

    Raises:
        ValueError: the name is taken or ``cls`` is not an optimizer class.

    Example:
        >>> import curvlab
        >>> from curvlab_plugins.baselines import SGD
        >>> class MySGD(SGD):
        ...     name = "mysgd"
        >>> curvlab.register("my-sgd", MySGD)
        >>> "mysgd" in curvlab.available()
        True
        >>> curvlab.unregister("mysgd")
    """
    OPTIMIZERS.register(name, cls, replace=replace)


def unregister(name: str) -> None:
    """Remove a name added with :func:`register`."""
    OPTIMIZERS.unregister(name)


def refresh() -> None:
    """Re-read the installed plugins at the next call (drop the entry-point cache).

    Not needed after ``pip install`` in most cases: the cache is keyed on
    ``sys.path`` and the modification times of its folders. Call it after
    changing ``importlib.metadata`` by other means (tests) or where the
    filesystem's timestamps are too coarse to see an install.

    Example:
        >>> import curvlab
        >>> curvlab.refresh()
    """
    OPTIMIZERS.refresh()

