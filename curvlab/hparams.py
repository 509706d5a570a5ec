"""Hyper-parameter schemas: declare once, validate, document and tune from it.

Every optimizer declares its hyper-parameters exactly once as a
:class:`Schema` of :class:`HParam` entries. Validation (with errors that name
the parameter, the value and the allowed range), :func:`curvlab.info`, the
CLI's ``--help``, the documentation tables and the search spaces of the
comparison harness are all derived from that declaration.

Values are finite unless a declaration says otherwise (``finite=False``):
``inf`` and ``nan`` are refused for every float, and an interval printed as
``[0.0, inf)`` means exactly that (a closed ``inf]`` appears only where
``inf`` is allowed).

Scope: a hyper-parameter is either per param group (:data:`GROUP`, the
default, like torch's ``lr``: every param group may override it and the
optimizer reads it per group at every step) or per optimizer
(:data:`OPTIMIZER`: one value for all groups, because the method builds
objects or schedules from it, e.g. K-FAC's ``factor_every``). The base
optimizer refuses a param-group override of a per-optimizer value
(:meth:`Schema.validate_group`), whichever backend it is.
A tunable hyper-parameter declares its *search space* (``space=``): a
:class:`LogUniform` or :class:`Uniform` range, a :class:`OneMinusLogUniform`
range for coefficients close to 1 (``1 - β`` log-uniform, as AlgoPerf tunes
``one_minus_beta1``), a :class:`Choice` of feasible points, or, for tuple
values, :class:`Entries` (one space or a fixed value per entry). A space
maps points ``u`` of the unit cube ``[0, 1)^d`` to values
(:meth:`HParam.draw`), so the harness can hand the *same* quasi-random
points to every optimizer (:mod:`curvlab.harness.search`).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GROUP", "OPTIMIZER", "SCOPES", "Choice", "Entries", "HParam", "LogUniform",
           "OneMinusLogUniform", "Schema", "Space", "Uniform"]

_SCALARS = (bool, int, float, str)

#: Scope of a hyper-parameter that each param group may set (torch's ``lr``).
GROUP = "group"
#: Scope of a hyper-parameter with one value for the whole optimizer.
OPTIMIZER = "optimizer"
#: The allowed scopes.
SCOPES = (GROUP, OPTIMIZER)


class Space:
    """A search space: maps a point ``u`` of the unit cube ``[0, 1)^dims`` to a value.

    Subclasses: :class:`LogUniform`, :class:`Uniform`,
    :class:`OneMinusLogUniform`, :class:`Choice` (one coordinate each) and
    :class:`Entries` (one coordinate per non-fixed entry of a tuple).
    """

    @property
    def dims(self) -> int:
        """Unit-cube coordinates the space consumes."""
        return 1

    def value(self, u: Sequence[float]) -> Any:
        """The value at ``u`` (``len(u) == dims``, every entry in ``[0, 1)``)."""
        raise NotImplementedError

    def ends(self) -> tuple[Any, ...]:
        """Values the space can reach at its extremes (checked against the hparam's range)."""
        raise NotImplementedError

    @property
    def text(self) -> str:
        """Human-readable description, e.g. ``log-uniform [0.0001, 0.01]``."""
        raise NotImplementedError


def _unit(u: float) -> float:
    u = float(u)
    if not 0.0 <= u <= 1.0:
        raise ValueError(f"unit-cube coordinate must be in [0, 1], got {u!r}")
    return u


def _bounds(kind: str, low: float, high: float, *, positive: bool = False) -> None:
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{kind} {name} must be a finite number, got {v!r}")
    if positive and low <= 0:
        raise ValueError(f"{kind} needs 0 < low, got low={low!r}")
    if not low < high:
        raise ValueError(f"{kind} needs low < high, got [{low!r}, {high!r}]")


@dataclass(frozen=True)
class LogUniform(Space):
    """``x = exp(log low + u · (log high − log low))``: uniform in ``log x`` on ``[low, high]``.

    The usual space of step sizes and damping (AlgoPerf's ``"scaling": "log"``).

    Example:
        >>> s = LogUniform(1e-4, 1e-2)
        >>> round(s.value([0.5]), 6), s.text
        (0.001, 'log-uniform [0.0001, 0.01]')
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        _bounds("LogUniform", self.low, self.high, positive=True)

    def value(self, u: Sequence[float]) -> float:
        """``low · (high/low)^u``."""
        a, b = math.log(self.low), math.log(self.high)
        return math.exp(a + _unit(u[0]) * (b - a))

    def ends(self) -> tuple[float, ...]:
        """``(low, high)``."""
        return (float(self.low), float(self.high))

    @property
    def text(self) -> str:
        """``log-uniform [low, high]``."""
        return f"log-uniform [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Uniform(Space):
    """``x = low + u · (high − low)``: uniform on ``[low, high]``.

    Example:
        >>> Uniform(0.0, 0.2).value([0.25]), Uniform(0.0, 0.2).text
        (0.05, 'uniform [0, 0.2]')
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        _bounds("Uniform", self.low, self.high)

    def value(self, u: Sequence[float]) -> float:
        """``low + u (high − low)``."""
        return self.low + _unit(u[0]) * (self.high - self.low)

    def ends(self) -> tuple[float, ...]:
        """``(low, high)``."""
        return (float(self.low), float(self.high))

    @property
    def text(self) -> str:
        """``uniform [low, high]``."""
        return f"uniform [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class OneMinusLogUniform(Space):
    """``x = 1 − y`` with ``y`` log-uniform on ``[low, high]``: coefficients close to 1.

    Momentum and EMA coefficients matter through ``1 − β`` (the averaging
    horizon ``1/(1 − β)``), so AlgoPerf tunes ``one_minus_beta1``
    log-uniformly. ``0 < low < high ≤ 1``; ``x`` lies in ``[1 − high, 1 − low]``.

    Example:
        >>> s = OneMinusLogUniform(0.01, 0.1)
        >>> round(s.value([0.0]), 6), round(s.value([0.5]), 6), s.text
        (0.99, 0.968377, '1 - log-uniform [0.01, 0.1]')
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        _bounds("OneMinusLogUniform", self.low, self.high, positive=True)
        if self.high > 1:
            raise ValueError(f"OneMinusLogUniform needs high <= 1, got {self.high!r}")

    def value(self, u: Sequence[float]) -> float:
        """``1 − low · (high/low)^u``."""
        return 1.0 - LogUniform(self.low, self.high).value(u)

    def ends(self) -> tuple[float, ...]:
        """``(1 − high, 1 − low)``."""
        return (1.0 - self.high, 1.0 - self.low)

    @property
    def text(self) -> str:
        """``1 - log-uniform [low, high]``."""
        return f"1 - log-uniform [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Choice(Space):
    """A list of feasible points; ``u`` picks ``points[⌊u · k⌋]`` (``k`` points, equal weights).

    Example:
        >>> s = Choice(("pi", "equal"))
        >>> s.value([0.2]), s.value([0.7]), s.text
        ('pi', 'equal', "one of ['pi', 'equal']")
    """

    points: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.points, (tuple, list)) or not self.points:
            raise ValueError(f"Choice needs a non-empty tuple of points, got {self.points!r}")
        object.__setattr__(self, "points", tuple(self.points))

    def value(self, u: Sequence[float]) -> Any:
        """The point ``⌊u k⌋`` (``u = 1`` picks the last)."""
        k = len(self.points)
        return self.points[min(int(_unit(u[0]) * k), k - 1)]

    def ends(self) -> tuple[Any, ...]:
        """Every point."""
        return self.points

    @property
    def text(self) -> str:
        """``one of [...]``."""
        return f"one of {list(self.points)!r}"


@dataclass(frozen=True)
class Entries(Space):
    """A space for a tuple value: one :class:`Space` or a fixed number per entry.

    Each entry that is a space consumes its coordinates, in order; fixed
    entries consume none.

    Example:
        >>> s = Entries((OneMinusLogUniform(0.02, 0.5), 0.999))
        >>> s.dims, tuple(round(v, 4) for v in s.value([0.0])), s.text
        (1, (0.98, 0.999), '(1 - log-uniform [0.02, 0.5], 0.999)')
    """

    parts: tuple[Space | float, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.parts, (tuple, list)) or not self.parts:
            raise ValueError(f"Entries needs a non-empty tuple of parts, got {self.parts!r}")
        for part in self.parts:
            if isinstance(part, Entries) or not isinstance(part, (Space, int, float)) or \
                    isinstance(part, bool):
                raise ValueError(f"Entries parts must be scalar spaces or numbers, got {part!r}")
        object.__setattr__(self, "parts", tuple(self.parts))

    @property
    def dims(self) -> int:
        """Coordinates of the space entries."""
        return sum(p.dims for p in self.parts if isinstance(p, Space))

    def value(self, u: Sequence[float]) -> tuple[float, ...]:
        """The tuple at ``u``."""
        out, i = [], 0
        for part in self.parts:
            if isinstance(part, Space):
                out.append(float(part.value(u[i : i + part.dims])))
                i += part.dims
            else:
                out.append(float(part))
        return tuple(out)

    def ends(self) -> tuple[tuple[float, ...], ...]:
        """The tuples of all lower ends and of all upper ends."""
        lo = tuple(float(p.ends()[0]) if isinstance(p, Space) else float(p) for p in self.parts)
        hi = tuple(float(p.ends()[-1]) if isinstance(p, Space) else float(p) for p in self.parts)
        return (lo, hi)

    @property
    def text(self) -> str:
        """``(space, value, ...)``."""
        return "(" + ", ".join(p.text if isinstance(p, Space) else f"{p:g}" for p in self.parts) + ")"


@dataclass(frozen=True)
class HParam:
    """Declaration of one hyper-parameter.

    A value ``v`` is valid when it has type :attr:`type` (ints are accepted
    for floats), is finite (unless :attr:`finite` is false), lies in the
    interval given by :attr:`low`/:attr:`high` (closed or open ends as set by
    :attr:`low_open`/:attr:`high_open`), is one of :attr:`choices` when those
    are given, or is ``None`` when :attr:`optional` is set.

    Args:
        name: Keyword the optimizer accepts.
        type: One of ``float``, ``int``, ``bool``, ``str`` or ``tuple``
            (a tuple of floats, e.g. Adam's betas; bounds apply per entry).
        default: Value used when the keyword is omitted (from the paper).
        doc: One-line description (shown by ``curvlab info`` and the docs).
        low: Smallest allowed value (``None``: unbounded).
        high: Largest allowed value (``None``: unbounded).
        low_open: Exclude ``low`` itself (``x > low`` instead of ``x >= low``).
        high_open: Exclude ``high`` itself.
        choices: Allowed values for string options (validated strings).
        optional: ``None`` is allowed (feature switched off).
        grid: Legacy: feasible points for tuning when no ``space`` is
            declared (tuned as ``Choice(grid)``); prefer ``space``.
        length: Required length for ``tuple`` parameters.
        scope: :data:`GROUP` (default: each param group may override it) or
            :data:`OPTIMIZER` (one value for the whole optimizer).
        finite: Refuse ``inf``/``-inf`` (default). ``nan`` is always refused.
        space: The search space the harness tunes this knob in (``None``:
            not tuned); every value it can produce must pass :meth:`check`.

    Example:
        >>> lr = HParam("lr", float, 0.1, "step size", low=0.0, low_open=True)
        >>> lr.check(0.5)
        0.5
        >>> lr.check(-1.0)
        Traceback (most recent call last):
        ...
        ValueError: lr must be in (0.0, inf), got -1.0
        >>> lr.check(float("inf"))
        Traceback (most recent call last):
        ...
        ValueError: lr must be in (0.0, inf), got inf
    """

    name: str
    type: type
    default: Any
    doc: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None
    optional: bool = False
    grid: tuple[Any, ...] = ()
    length: int | None = None
    scope: str = GROUP
    finite: bool = True
    space: Space | None = None

    def __post_init__(self) -> None:
        if self.type not in (*_SCALARS, tuple):
            raise TypeError(f"HParam {self.name}: unsupported type {self.type!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"HParam {self.name}: scope must be one of {SCOPES}, got {self.scope!r}")
        if self.default is not None or not self.optional:
            self.check(self.default)
        for value in self.grid:
            self.check(value)
        if self.space is not None:
            self._check_space(self.space)

    def _check_space(self, space: Space) -> None:
        if not isinstance(space, Space):
            raise TypeError(f"HParam {self.name}: space must be a curvlab.hparams.Space, "
                            f"got {space!r}")
        if isinstance(space, Entries) != (self.type is tuple) and not isinstance(space, Choice):
            raise ValueError(f"HParam {self.name}: a {self.type.__name__} hyper-parameter takes "
                             f"{'Entries or Choice' if self.type is tuple else 'a scalar space'}, "
                             f"got {space.text}")
        if isinstance(space, (LogUniform, Uniform, OneMinusLogUniform)) and \
                self.type not in (int, float):
            raise ValueError(f"HParam {self.name}: a {self.type.__name__} hyper-parameter takes a "
                             f"Choice, got {space.text}")
        for end in space.ends():
            try:
                self._cast(end)
            except ValueError as err:
                raise ValueError(f"HParam {self.name}: search space {space.text} leaves the "
                                 f"allowed range: {err}") from None

    def _cast(self, value: Any) -> Any:
        if self.type is int and isinstance(value, float):
            value = int(round(value))
        return self.check(value)

    @property
    def search_space(self) -> Space | None:
        """The space the harness tunes in: :attr:`space`, else ``Choice(grid)``, else ``None``.

        Example:
            >>> HParam("lr", float, 0.1, "step", low=0.0, grid=(0.1, 0.01)).search_space.text
            'one of [0.1, 0.01]'
        """
        if self.space is not None:
            return self.space
        return Choice(self.grid) if self.grid else None

    def draw(self, u: Sequence[float]) -> Any:
        """The value of :attr:`search_space` at unit-cube point ``u``, typed and checked.

        Integers are rounded to the nearest integer.

        Raises:
            ValueError: no search space is declared.

        Example:
            >>> p = HParam("every", int, 10, "period", low=1, space=LogUniform(1, 100))
            >>> p.draw([0.5]), p.draw([0.0]), p.draw([1.0])
            (10, 1, 100)
        """
        space = self.search_space
        if space is None:
            raise ValueError(f"{self.name} declares no search space")
        if len(u) != space.dims:
            raise ValueError(f"{self.name}: its space takes {space.dims} coordinate(s), "
                             f"got {len(u)}")
        return self._cast(space.value(u))

    @property
    def range_text(self) -> str:
        """Human-readable allowed range, e.g. ``(0, inf)`` or ``{'pi', 'equal'}``."""
        if self.choices is not None:
            text = "{" + ", ".join(repr(c) for c in self.choices) + "}"
        elif self.type is bool:
            text = "{True, False}"
        elif self.type is str:
            text = "any str"
        else:
            lo = -math.inf if self.low is None else self.low
            hi = math.inf if self.high is None else self.high
            # an infinite end is included only where infinities are allowed
            infinite_ok = not self.finite and self.type is not int
            left = "(" if (self.low_open or (self.low is None and not infinite_ok)) else "["
            right = ")" if (self.high_open or (self.high is None and not infinite_ok)) else "]"
            text = f"{left}{lo}, {hi}{right}"
        return text + (" or None" if self.optional else "")

    def _in_range(self, x: float) -> bool:
        if isinstance(x, float) and (math.isnan(x) or (self.finite and math.isinf(x))):
            return False
        if self.low is not None and (x < self.low or (self.low_open and x == self.low)):
            return False
        if self.high is not None and (x > self.high or (self.high_open and x == self.high)):
            return False
        return True

    def check(self, value: Any) -> Any:
        """Validate ``value`` and return it normalised (ints become floats for floats).

        Raises:
            ValueError: the value has the wrong type or lies outside the range;
                the message names the parameter, the value and the rule.
        """
        if value is None and self.optional:
            return None
        bad = ValueError(f"{self.name} must be in {self.range_text}, got {value!r}")
        if self.type is tuple:
            if not isinstance(value, (tuple, list)) or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) for v in value
            ):
                raise ValueError(f"{self.name} must be a tuple of numbers, got {value!r}")
            if self.length is not None and len(value) != self.length:
                raise ValueError(
                    f"{self.name} must have {self.length} entries, got {len(value)}: {value!r}"
                )
            if not all(self._in_range(float(v)) for v in value):
                raise ValueError(
                    f"every entry of {self.name} must be in {self.range_text}, got {value!r}"
                )
            return tuple(float(v) for v in value)
        if self.type is bool:
            if not isinstance(value, bool):
                raise bad
            return value
        if self.type is str:
            if not isinstance(value, str):
                raise bad
            if self.choices is not None and value not in self.choices:
                close = difflib.get_close_matches(value, [str(c) for c in self.choices], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"{self.name} must be one of {self.range_text}, got {value!r}{hint}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if self.type is int:
            if isinstance(value, float):
                if not value.is_integer():
                    raise bad
                value = int(value)
        else:
            value = float(value)
        if self.choices is not None and value not in self.choices:
            raise bad
        if not self._in_range(value):
            raise bad
        return value


@dataclass(frozen=True)
class Schema(Sequence):
    """An ordered, immutable collection of :class:`HParam` declarations.

    Args:
        params: The declarations, in the order they are documented.

    Example:
        >>> schema = Schema([
        ...     HParam("lr", float, 0.1, "step size", low=0.0, low_open=True),
        ...     HParam("momentum", float, 0.9, "heavy-ball coefficient", low=0.0, high=1.0,
        ...            high_open=True),
        ... ])
        >>> schema.validate({"lr": 0.5})
        {'lr': 0.5, 'momentum': 0.9}
        >>> schema.validate({"lrr": 0.5})
        Traceback (most recent call last):
        ...
        ValueError: unknown hyper-parameter 'lrr' (did you mean 'lr'?); allowed: lr, momentum
    """

    params: tuple[HParam, ...] = field(default_factory=tuple)

    def __init__(self, params: Iterable[HParam] = ()) -> None:
        params = tuple(params)
        names = [p.name for p in params]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate hyper-parameter declarations: {', '.join(dupes)}")
        object.__setattr__(self, "params", params)

    def __getitem__(self, key):  # type: ignore[override]
        """Look a declaration up by position or by name."""
        if isinstance(key, str):
            for p in self.params:
                if p.name == key:
                    return p
            raise KeyError(key)
        return self.params[key]

    def __len__(self) -> int:
        return len(self.params)

    def __iter__(self) -> Iterator[HParam]:
        return iter(self.params)

    def __contains__(self, name: object) -> bool:
        return any(p.name == name for p in self.params)

    @property
    def names(self) -> tuple[str, ...]:
        """Declared names, in order."""
        return tuple(p.name for p in self.params)

    def defaults(self) -> dict[str, Any]:
        """All defaults as a new dict."""
        return {p.name: p.default for p in self.params}

    def validate(self, values: Mapping[str, Any], *, partial: bool = False) -> dict[str, Any]:
        """Check ``values`` and return them completed with defaults.

        Args:
            values: User-supplied keyword values.
            partial: Only check and return the given keys (used for
                ``add_param_group`` overrides), without filling defaults.

        Returns:
            A new dict, in declaration order.

        Raises:
            ValueError: an unknown name (with a close match and the allowed
                names) or a value outside its declared range.
        """
        for key in values:
            if key not in self:
                close = difflib.get_close_matches(key, self.names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(
                    f"unknown hyper-parameter {key!r}{hint}; allowed: {', '.join(self.names)}"
                )
        out: dict[str, Any] = {}
        for p in self.params:
            if p.name in values:
                out[p.name] = p.check(values[p.name])
            elif not partial:
                out[p.name] = p.default
        return out

    def scoped(self, scope: str) -> tuple[str, ...]:
        """Names declared with ``scope`` (:data:`GROUP` or :data:`OPTIMIZER`), in order.

        Example:
            >>> Schema([HParam("lr", float, 0.1, "step"),
            ...         HParam("every", int, 5, "period", low=1, scope=OPTIMIZER)]).scoped(OPTIMIZER)
            ('every',)
        """
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        return tuple(p.name for p in self.params if p.scope == scope)

    def validate_group(
        self, overrides: Mapping[str, Any], optimizer_values: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Check a param group's overrides; per-optimizer hyper-parameters may not differ.

        A param group may set any :data:`GROUP` hyper-parameter. Setting an
        :data:`OPTIMIZER` one is allowed only to the optimizer's own value
        (e.g. groups copied from another optimizer's ``param_groups``).

        Args:
            overrides: The group's keys other than ``params`` (and ``name``).
            optimizer_values: The optimizer's validated values (its ``defaults``).

        Returns:
            The validated overrides.

        Raises:
            ValueError: an unknown name or invalid value (as :meth:`validate`),
                or per-optimizer hyper-parameters set to another value (names
                them all and says they are optimizer-wide).

        Example:
            >>> schema = Schema([HParam("lr", float, 0.1, "step", low=0.0),
            ...                  HParam("every", int, 5, "period", low=1, scope=OPTIMIZER)])
            >>> schema.validate_group({"lr": 0.5}, {"lr": 0.1, "every": 5})
            {'lr': 0.5}
            >>> schema.validate_group({"every": 2}, {"lr": 0.1, "every": 5})
            Traceback (most recent call last):
            ...
            ValueError: every is optimizer-wide (one value for all param groups): set it when the optimizer is built, not in a param group (the group sets every=2, the optimizer has every=5)
        """
        checked = self.validate(overrides, partial=True)
        clashes = [
            (k, v) for k, v in checked.items()
            if self[k].scope == OPTIMIZER and v != optimizer_values.get(k)
        ]
        if clashes:
            names = ", ".join(k for k, _ in clashes)
            verb = "is" if len(clashes) == 1 else "are"
            got = ", ".join(f"{k}={v!r}" for k, v in clashes)
            has = ", ".join(f"{k}={optimizer_values.get(k)!r}" for k, _ in clashes)
            raise ValueError(
                f"{names} {verb} optimizer-wide (one value for all param groups): set "
                f"{'it' if len(clashes) == 1 else 'them'} when the optimizer is built, not in a "
                f"param group (the group sets {got}, the optimizer has {has})"
            )
        return checked

    def parse(self, name: str, text: str) -> Any:
        """Parse command-line ``text`` into the typed value of hyper-parameter ``name``, validated.

        The text is read by the declared type, then checked like
        :meth:`validate` checks a value (range, choices, length):

        - ``float``: a decimal or exponent literal (``0.1``, ``1e-3``);
        - ``int``: an integer literal; ``2.0`` or ``1e3`` are accepted as
          whole numbers, ``2.5`` is refused (never truncated);
        - ``bool``: ``true``/``false``, ``yes``/``no``, ``on``/``off``, ``1``/``0``
          (any case);
        - ``tuple``: comma-separated numbers, optionally in parentheses
          (``0.9,0.999`` or ``(0.9, 0.999)``);
        - ``str``: the text itself;
        - ``none`` (any case) is ``None`` where the hyper-parameter is optional.

        Args:
            name: A declared hyper-parameter.
            text: Its value as typed on a command line.

        Returns:
            The value, as :meth:`validate` would return it.

        Raises:
            ValueError: ``name`` is not declared (with a close match and the
                declared names), or ``text`` is not of the declared type or
                lies outside its range; the message names the
                hyper-parameter and its allowed range.

        Example:
            >>> schema = Schema([HParam("every", int, 10, "period", low=1),
            ...                  HParam("betas", tuple, (0.9, 0.99), "pair", low=0.0, high=1.0,
            ...                         high_open=True, length=2)])
            >>> schema.parse("every", "20"), schema.parse("betas", "0.8,0.9")
            (20, (0.8, 0.9))
            >>> schema.parse("every", "2.5")
            Traceback (most recent call last):
            ...
            ValueError: every must be an integer in [1, inf), got '2.5'
        """
        if name not in self:
            self.validate({name: text}, partial=True)  # raises: unknown name, close match, allowed
        p = self[name]
        raw = text.strip()
        if p.optional and raw.lower() == "none" and not (p.choices and raw in p.choices):
            return None
        value: Any = raw
        if p.type is bool:
            words = {"true": True, "yes": True, "on": True, "1": True,
                     "false": False, "no": False, "off": False, "0": False}
            if raw.lower() not in words:
                raise ValueError(f"{name} must be true or false, got {text!r}")
            value = words[raw.lower()]
        elif p.type is tuple:
            items = raw.strip("()[] ").split(",")
            try:
                value = tuple(float(v) for v in items)
            except ValueError:
                count = f"{p.length} " if p.length is not None else ""
                raise ValueError(
                    f"{name} must be {count}comma-separated numbers, each in {p.range_text}, "
                    f"got {text!r}"
                ) from None
        elif p.type is int:
            try:
                value = int(raw)
            except ValueError:
                try:
                    number = float(raw)
                except ValueError:
                    number = math.nan
                if not number.is_integer():
                    raise ValueError(
                        f"{name} must be an integer in {p.range_text}, got {text!r}"
                    ) from None
                value = int(number)
        elif p.type is float:
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{name} must be a number in {p.range_text}, got {text!r}") from None
        return p.check(value)

    def table(self) -> list[dict[str, str]]:
        """Rows (name, type, default, range, scope, space, doc) for docs and ``curvlab info``.

        Example:
            >>> Schema([HParam("lr", float, 0.1, "step size", low=0.0)]).table()[0]["range"]
            '[0.0, inf)'
        """
        return [
            {
                "name": p.name,
                "type": p.type.__name__,
                "default": repr(p.default),
                "range": p.range_text,
                "scope": p.scope,
                "space": p.search_space.text if p.search_space is not None else "",
                "doc": p.doc,
            }
            for p in self.params
        ]
