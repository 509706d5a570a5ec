"""What update each parameter gets: the table ``optimizer.coverage()`` returns.

One :class:`CoverageRow` per parameter of the model (in
``named_parameters()`` order, a shared parameter once) and per parameter
given to the optimizer from outside the model, with its kind:

==================== ==============================================================
kind                 update
==================== ==============================================================
``kronecker-expand`` a Kronecker block (``Linear``, ``Conv2d``, ``Embedding``),
                     weight-sharing positions as extra samples
``kronecker-reduce`` the same with positions aggregated first
``unit-wise``        one 2×2 block per unit (affine norm layer: γ and β)
``diagonal``         one 1×1 block per unit (a norm layer with one trainable vector)
``fallback-adam``    no curvature block: Adam (:mod:`~curvlab.curvature.fallback`)
``fallback-sgd``     no curvature block: SGD with the group's momentum
``frozen``           not trained (``requires_grad=False`` or not given to the optimizer)
``generic``          an optimizer without per-layer blocks (first-order methods,
                     GroupedNewton, peers) treats it like every other parameter
==================== ==============================================================

``str(table)`` prints it aligned (``curvlab info NAME --problem P`` does);
:meth:`CoverageTable.records` gives plain dicts (for JSON or a DataFrame).

Example:
    >>> table = CoverageTable([CoverageRow("0.weight", (3, 2), "kronecker-expand", "0")])
    >>> print(table)
    parameter  shape   kind              block
    0.weight   (3, 2)  kronecker-expand  0
    >>> table.kinds()
    {'0.weight': 'kronecker-expand'}
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor, nn

__all__ = ["KINDS", "CoverageRow", "CoverageTable", "generic_coverage", "outside_name"]

#: Every kind a row may have (module docstring).
KINDS = ("kronecker-expand", "kronecker-reduce", "unit-wise", "diagonal", "fallback-adam",
         "fallback-sgd", "frozen", "generic")


@dataclass(frozen=True)
class CoverageRow:
    """One parameter's row.

    Attributes:
        name: Qualified parameter name (``outside_name`` for a parameter not in the model).
        shape: Its shape.
        kind: One of :data:`KINDS`.
        block: Key of the curvature block covering it (``None`` otherwise).
        reason: Why it has no block (fallback rows) or why it is frozen.
    """

    name: str
    shape: tuple[int, ...]
    kind: str
    block: str | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"coverage kind must be one of {KINDS}, got {self.kind!r}")


class CoverageTable(Sequence[CoverageRow]):
    """The rows of one optimizer (a read-only sequence; ``str()`` prints it).

    Args:
        rows: The rows.
        note: A line printed under the table (e.g. which factor engine serves the blocks).
    """

    def __init__(self, rows: Iterable[CoverageRow], note: str = "") -> None:
        self._rows = tuple(rows)
        self.note = note

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index):  # type: ignore[override]
        return self._rows[index]

    def __iter__(self) -> Iterator[CoverageRow]:
        return iter(self._rows)

    def __repr__(self) -> str:
        return f"CoverageTable({len(self)} rows)"

    def kinds(self) -> dict[str, str]:
        """``{parameter name: kind}``."""
        return {r.name: r.kind for r in self._rows}

    def where(self, *kinds: str) -> list[CoverageRow]:
        """The rows of the given kinds.

        Example:
            >>> CoverageTable([CoverageRow("w", (2,), "frozen")]).where("frozen")[0].name
            'w'
        """
        return [r for r in self._rows if r.kind in kinds]

    def records(self) -> list[dict[str, Any]]:
        """The rows as plain dicts (``name``, ``shape``, ``kind``, ``block``, ``reason``)."""
        return [asdict(r) for r in self._rows]

    def __str__(self) -> str:
        header = ("parameter", "shape", "kind", "block", "reason")
        body = [(r.name, str(r.shape), r.kind, r.block or "", r.reason) for r in self._rows]
        keep = [i for i in range(len(header)) if i < 3 or any(row[i] for row in body)]
        widths = [max(len(str(row[i])) for row in [header, *body]) for i in keep]
        lines = ["  ".join(str(row[i]).ljust(w) for i, w in zip(keep, widths)).rstrip()
                 for row in [header, *body]]
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)


def outside_name(index: int, p: Tensor) -> str:
    """Row name of the ``index``-th optimizer parameter that is not in the model.

    Example:
        >>> import torch
        >>> outside_name(3, torch.zeros(2, 1))
        '<parameter 3, not in the model>'
    """
    return f"<parameter {index}, not in the model>"


def generic_coverage(model: nn.Module | None, param_groups: Sequence[Mapping[str, Any]]) -> CoverageTable:
    """The table of an optimizer without per-layer blocks: ``generic`` or ``frozen`` rows.

    Args:
        model: The network (``None``: only the optimizer's parameters are listed).
        param_groups: The optimizer's param groups.

    Example:
        >>> import torch
        >>> net = nn.Linear(2, 1)
        >>> _ = net.bias.requires_grad_(False)
        >>> generic_coverage(net, [{"params": list(net.parameters())}]).kinds()
        {'weight': 'generic', 'bias': 'frozen'}
    """
    params = [p for g in param_groups for p in g["params"]]
    ours = {id(p) for p in params}
    rows, seen = [], set()
    for name, p in (model.named_parameters() if model is not None else ()):
        seen.add(id(p))
        if id(p) not in ours:
            rows.append(CoverageRow(name, tuple(p.shape), "frozen", reason="not given to the optimizer"))
        elif not p.requires_grad:
            rows.append(CoverageRow(name, tuple(p.shape), "frozen", reason="requires_grad=False"))
        else:
            rows.append(CoverageRow(name, tuple(p.shape), "generic"))
    for i, p in enumerate(params):
        if id(p) not in seen:
            kind = "generic" if p.requires_grad else "frozen"
            rows.append(CoverageRow(outside_name(i, p), tuple(p.shape), kind))
    return CoverageTable(rows)
