"""Hyper-parameter schemas: declare once, validate, document and tune from it.

Every optimizer declares its hyper-parameters exactly once as a
:class:`Schema` of :class:`HParam` entries. Validation (with errors that name
the parameter, the value and the allowed range), :func:`curvlab.info`, the
CLI's ``--help``, the documentation tables and the tuning grids of the
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
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GROUP", "OPTIMIZER", "SCOPES", "HParam", "Schema"]

_SCALARS = (bool, int, float, str)

#: Scope of a hyper-parameter that each param group may set (torch's ``lr``).
GROUP = "group"
#: Scope of a hyper-parameter with one value for the whole optimizer.
OPTIMIZER = "optimizer"
#: The allowed scopes.
SCOPES = (GROUP, OPTIMIZER)


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
        grid: Values the harness tries when tuning this knob (empty: not tuned).
        length: Required length for ``tuple`` parameters.
        scope: :data:`GROUP` (default: each param group may override it) or
            :data:`OPTIMIZER` (one value for the whole optimizer).
        finite: Refuse ``inf``/``-inf`` (default). ``nan`` is always refused.

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

    def __post_init__(self) -> None:
        if self.type not in (*_SCALARS, tuple):
            raise TypeError(f"HParam {self.name}: unsupported type {self.type!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"HParam {self.name}: scope must be one of {SCOPES}, got {self.scope!r}")
        if self.default is not None or not self.optional:
            self.check(self.default)
        for value in self.grid:
            self.check(value)

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
        """Rows (name, type, default, range, scope, doc) for docs and ``curvlab info``.

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
                "doc": p.doc,
            }
            for p in self.params
        ]
