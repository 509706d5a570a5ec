"""Discovery of optimizers (and problems) through Python entry points.

Built-in backends and third-party packages register alike, in
``pyproject.toml``::

    [project.entry-points."curvlab.optimizers"]
    myopt = "mypackage.module:MyOptimizer"

Names are normalised (:func:`normalize`): case, ``-``, ``_``, spaces and
parentheses are ignored, so ``"K-BFGS(L)"``, ``"kbfgs_l"`` and ``"kbfgsl"``
are one name. Listing names never imports a backend; a plugin is imported
only when it is created or described. An entry point whose value carries
extras (``"pkg.mod:Obj [peers]"``) is *unavailable*, not broken, while the
extra's requirements are not installed.

Failure modes are explicit: a plugin that fails to import (or whose
object fails validation) gives a :class:`PluginWarning` naming it and the
others keep working; an entry point whose name is empty after normalisation
(e.g. ``---``) is reported the same way and left out; two plugins claiming
one name raise a :class:`ValueError` naming both when that name is used; an
unknown name raises a :class:`ValueError` listing the available names and
the closest match.

Caching: the entry points are read once and kept until the environment
changes: the key is ``sys.path`` and the modification times of its
folders, which change when a package is installed into (or removed from)
one of them, so a package installed while the process runs is seen at the
next call. :meth:`Registry.refresh` (``curvlab.refresh()``) drops the cache
explicitly, e.g. after changing ``importlib.metadata`` in a test or
installing onto a filesystem with coarse timestamps.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
import os
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PluginWarning", "Registry", "normalize"]

_SEPARATORS = re.compile(r"[\s\-_().]+")


class PluginWarning(UserWarning):
    """A registered plugin could not be loaded (it is skipped)."""


def normalize(name: str) -> str:
    """Canonical form of an optimizer or problem name.

    Args:
        name: Any spelling, e.g. ``"K-BFGS(L)"``.

    Returns:
        Lower-case name without separators and parentheses.

    Raises:
        ValueError: the name is empty after normalisation.

    Example:
        >>> normalize("K-BFGS(L)"), normalize("kbfgs_l"), normalize("ADAM")
        ('kbfgsl', 'kbfgsl', 'adam')
    """
    if not isinstance(name, str):
        raise ValueError(f"name must be a string, got {name!r}")
    out = _SEPARATORS.sub("", name).lower()
    if not out:
        raise ValueError(f"name {name!r} is empty after normalisation")
    return out


@dataclass(frozen=True)
class Entry:
    """One registration: where it came from and how to load it."""

    name: str
    source: str
    loader: Callable[[], Any]
    missing: tuple[str, ...] = ()


def _environment_key() -> tuple[Any, ...]:
    """``sys.path`` and the modification times of its folders (install/uninstall changes them)."""
    stamps = []
    for entry in sys.path:
        try:
            stamps.append(os.stat(entry or ".").st_mtime_ns)
        except OSError:
            stamps.append(None)
    return tuple(sys.path), tuple(stamps)


def _distribution_name(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    try:
        return str(dist.metadata["Name"]) if dist is not None else "?"
    except Exception:  # noqa: BLE001 - a damaged METADATA must not break discovery
        return "?"


def _missing_extra_requirements(ep: md.EntryPoint) -> tuple[str, ...]:
    """Requirements of the entry point's extras that are not installed."""
    extras = getattr(ep, "extras", None) or []
    dist = getattr(ep, "dist", None)
    if not extras or dist is None:
        return ()
    missing = []
    for req in dist.requires or []:
        marker = req.split(";", 1)[1] if ";" in req else ""
        if not any(re.search(rf"extra\s*==\s*['\"]{e}['\"]", marker) for e in extras):
            continue
        pkg = re.split(r"[\s<>=!~\[;(]", req.strip(), maxsplit=1)[0]
        try:
            md.distribution(pkg)
        except md.PackageNotFoundError:
            missing.append(pkg)
    return tuple(missing)


@dataclass
class Registry:
    """Name → loadable object, fed by an entry-point group and :meth:`register`.

    Args:
        group: Entry-point group, e.g. ``"curvlab.optimizers"``.
        kind: Word used in messages (``"optimizer"``, ``"problem"``).
        validate: Called on every loaded object; raises if it is unfit.

    Example:
        >>> reg = Registry("curvlab.nothing-here", kind="widget")
        >>> reg.register("My-Widget", dict)
        >>> reg.names()
        ['mywidget']
        >>> reg.load("MY_WIDGET") is dict
        True
    """

    group: str
    kind: str = "optimizer"
    validate: Callable[[str, Any], None] | None = None
    _manual: dict[str, Entry] = field(default_factory=dict, repr=False)
    _cache: tuple[Any, dict[str, list[Entry]], dict[str, str]] | None = field(
        default=None, repr=False
    )

    # --------------------------------------------------------------- entries
    def refresh(self) -> None:
        """Forget the cached entry points (and the import system's path caches).

        Example:
            >>> Registry("curvlab.nothing-here").refresh()
        """
        self._cache = None
        importlib.invalidate_caches()

    def _scan(self) -> tuple[dict[str, list[Entry]], dict[str, str]]:
        """Entry points by normalised name, and broken ones (raw name → message); cached."""
        key = _environment_key()
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1], self._cache[2]
        found: dict[str, list[Entry]] = {}
        broken: dict[str, str] = {}
        seen: set[tuple[str, str]] = set()
        for ep in md.entry_points(group=self.group):
            dist_name = _distribution_name(ep)
            try:
                name = normalize(ep.name)
            except ValueError as err:
                broken[ep.name] = (
                    f"{self.kind} plugin {ep.name!r} ({ep.value} from distribution "
                    f"{dist_name!r}) is left out: {err}"
                )
                continue
            if (name, ep.value) in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add((name, ep.value))
            entry = Entry(
                name=name,
                source=f"{ep.value} (from distribution {dist_name!r})",
                loader=ep.load,
                missing=_missing_extra_requirements(ep),
            )
            found.setdefault(name, []).append(entry)
        for message in broken.values():
            warnings.warn(message, PluginWarning, stacklevel=4)
        self._cache = (key, found, broken)
        return found, broken

    def _entries(self) -> dict[str, list[Entry]]:
        found = {name: list(entries) for name, entries in self._scan()[0].items()}
        for name, entry in self._manual.items():
            found.setdefault(name, []).append(entry)
        return found

    def broken(self) -> dict[str, str]:
        """Entry points left out because their name is unusable: raw name → message.

        Example:
            >>> Registry("curvlab.nothing-here").broken()
            {}
        """
        return dict(self._scan()[1])

    def register(self, name: str, obj: Any, *, replace: bool = False) -> None:
        """Register ``obj`` under ``name`` for code that is not installed.

        Args:
            name: Any spelling; stored normalised.
            obj: The optimizer class / factory (or problem).
            replace: Allow overriding an earlier :meth:`register` of the name.

        Raises:
            ValueError: the name is taken (by an entry point or an earlier
                registration) or ``obj`` fails validation.
        """
        key = normalize(name)
        if self.validate is not None:
            self.validate(key, obj)
        taken = [e for e in self._entries().get(key, []) if e not in self._manual.values()]
        if taken:
            raise ValueError(
                f"{self.kind} name {key!r} is already provided by {taken[0].source}; "
                "pick another name"
            )
        if key in self._manual and not replace:
            raise ValueError(
                f"{self.kind} name {key!r} is already registered by "
                f"{self._manual[key].source}; pass replace=True to override"
            )
        src = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)!s} (register())"
        self._manual[key] = Entry(name=key, source=src, loader=lambda: obj)

    def unregister(self, name: str) -> None:
        """Remove a :meth:`register` registration (entry points stay)."""
        self._manual.pop(normalize(name), None)

    # --------------------------------------------------------------- queries
    def names(self, *, include_unavailable: bool = False) -> list[str]:
        """Sorted names; those whose extras are missing only if asked."""
        return sorted(
            name
            for name, entries in self._entries().items()
            if include_unavailable or any(not e.missing for e in entries)
        )

    def unavailable(self) -> dict[str, tuple[str, ...]]:
        """Names whose optional requirements are missing → those requirements."""
        return {
            name: entries[0].missing
            for name, entries in self._entries().items()
            if all(e.missing for e in entries)
        }

    def _unknown(self, name: str, key: str) -> ValueError:
        names = self.names()
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return ValueError(
            f"unknown {self.kind} {name!r}{hint} available: {', '.join(names) or '(none)'}"
        )

    def load(self, name: str) -> Any:
        """Import and return the object registered under ``name``.

        Raises:
            ValueError: unknown name (lists available names and the closest
                match), two plugins claim the name (names both), its optional
                requirements are missing (says what to install), or the
                plugin failed to import (names it and the error).
        """
        key = normalize(name)
        entries = self._entries().get(key)
        if not entries:
            raise self._unknown(name, key)
        if len(entries) > 1:
            srcs = " and ".join(e.source for e in entries)
            raise ValueError(f"{self.kind} name {key!r} is claimed by two plugins: {srcs}")
        entry = entries[0]
        if entry.missing:
            raise ValueError(
                f"{self.kind} {key!r} needs {', '.join(entry.missing)}: "
                "pip install 'curvlab[peers]' (or the package named)"
            )
        try:
            obj = entry.loader()
        except Exception as err:  # noqa: BLE001 - any plugin failure is reported
            raise ValueError(f"{self.kind} plugin {key!r} ({entry.source}) failed to load: {err!r}") from err
        if self.validate is not None:
            try:
                self.validate(key, obj)
            except ValueError as err:
                raise ValueError(f"{err} [{entry.source}]") from None
        return obj

    def load_all(self) -> dict[str, Any]:
        """Load every available name; broken plugins warn and are left out."""
        out: dict[str, Any] = {}
        for message in self.broken().values():
            warnings.warn(message, PluginWarning, stacklevel=2)
        for name in self.names():
            try:
                out[name] = self.load(name)
            except ValueError as err:
                warnings.warn(str(err), PluginWarning, stacklevel=2)
        return out
