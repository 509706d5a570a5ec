r"""Which curvature block covers each parameter of a model, decided once, kept as data.

:func:`plan_blocks` walks a model and sorts every parameter into one of

==================== ==============================================================
kind                 meaning
==================== ==============================================================
``kronecker-expand`` ``Linear``/``Conv2d``/``Embedding`` weight (and bias): :math:`A\otimes G`,
                     weight-sharing positions treated as extra samples
``kronecker-reduce`` the same with positions aggregated first (Eschenhagen et al. 2023)
``unit-wise``        affine norm layer with weight and bias: one 2×2 block per unit
                     :math:`(\gamma_i, \beta_i)`
``diagonal``         affine norm layer with only one trainable vector: 1×1 blocks
``uncovered``        no block (the reason says why); a backend routes it to its fallback
``frozen``           ``requires_grad=False``: ignored, never updated
==================== ==============================================================

A :class:`LayerGroup` is one block owner: usually one module; several modules
when they share their parameters *in the same role* (two ``Linear`` modules
holding the same ``weight`` and ``bias`` objects). A parameter shared in
different roles (an ``Embedding`` weight tied to a ``Linear`` ``lm_head``,
whose :math:`V\times D` matrix is the input side of one use and the output side
of the other) has no single Kronecker product: it is ``uncovered`` and the
reason names both uses. A module *called* several times per forward pass is
handled at capture time (its calls are extra weight-sharing positions).

``nn.MultiheadAttention`` calls its fused ``in_proj_weight`` and its
``out_proj`` functionally (no hookable ``Linear`` call), so all four of its
parameters are ``uncovered``. So are parameters owned directly by a container
(``nn.Parameter`` attributes used in a custom ``forward``), other layer types,
grouped or non-zero-padded convolutions, and ``Embedding`` with ``max_norm``,
``scale_grad_by_freq`` or ``sparse``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import Tensor, nn

__all__ = [
    "COVERED_KINDS",
    "KFAC_APPROX",
    "KINDS",
    "BlockPlan",
    "LayerGroup",
    "ParamCoverage",
    "plan_blocks",
]

KINDS = ("kronecker-expand", "kronecker-reduce", "unit-wise", "diagonal", "uncovered", "frozen")
COVERED_KINDS = KINDS[:4]
KFAC_APPROX = ("expand", "reduce")
NORMS: tuple[type[nn.Module], ...] = (
    nn.LayerNorm, nn.RMSNorm, nn.BatchNorm1d, nn.BatchNorm2d,
)


@dataclass(frozen=True)
class ParamCoverage:
    """One row of the coverage table.

    Attributes:
        name: Qualified parameter name (first one in ``named_parameters()``).
        shape: Its shape.
        kind: One of :data:`KINDS`.
        block: Key of the block covering it (the :class:`LayerGroup` name), or ``None``.
        uses: Paths of the modules that own it (``"model.<name>"``).
        reason: Why it is ``uncovered`` (empty otherwise).
    """

    name: str
    shape: tuple[int, ...]
    kind: str
    block: str | None
    uses: tuple[str, ...]
    reason: str = ""


@dataclass(frozen=True)
class LayerGroup:
    """Modules whose parameters form one block (one module, or several sharing all params).

    Attributes:
        name: Block key: the first module's qualified name.
        family: ``"linear"``, ``"conv2d"``, ``"embedding"`` or ``"norm"``.
        modules: The modules (same class, same parameter objects).
        paths: Their ``"model.<name>"`` paths.
        weight: The trainable weight, or ``None`` (absent or frozen).
        bias: The trainable bias, or ``None``.
        weight_name: Qualified name of ``weight`` (``None`` if absent/frozen).
        bias_name: Qualified name of ``bias`` (``None`` if absent/frozen).
    """

    name: str
    family: str
    modules: tuple[nn.Module, ...]
    paths: tuple[str, ...]
    weight: nn.Parameter | None
    bias: nn.Parameter | None
    weight_name: str | None
    bias_name: str | None

    @property
    def params(self) -> tuple[nn.Parameter, ...]:
        """Trainable parameters of the block, weight first."""
        return tuple(p for p in (self.weight, self.bias) if p is not None)

    def kind(self, kfac_approx: str = "expand") -> str:
        """Block kind of this group for ``kfac_approx`` (see :data:`KINDS`)."""
        if self.family == "norm":
            return "unit-wise" if len(self.params) == 2 else "diagonal"
        return f"kronecker-{kfac_approx}"


@dataclass
class BlockPlan:
    """The covered layer groups and one :class:`ParamCoverage` row per parameter.

    Attributes:
        groups: ``{block name: LayerGroup}`` in model order.
        rows: Coverage rows in ``named_parameters()`` order, kinds for ``"expand"``.
    """

    groups: dict[str, LayerGroup] = field(default_factory=dict)
    rows: list[ParamCoverage] = field(default_factory=list)

    def coverage(
        self, kfac_approx: str = "expand", *, families: tuple[str, ...] | None = None,
        who: str = "this optimizer",
    ) -> list[ParamCoverage]:
        """The coverage rows with Kronecker kinds for ``kfac_approx`` (``"expand"``/``"reduce"``).

        Args:
            kfac_approx: ``"expand"`` or ``"reduce"``.
            families: Block families the backend preconditions (``None``: all
                of them); the parameters of other groups become ``uncovered``
                with a reason naming ``who`` (a backend with fewer block types,
                e.g. one for ``"linear"`` only, routes them to its fallback).
            who: Backend name for those reasons.

        Raises:
            ValueError: ``kfac_approx`` not in ``("expand", "reduce")``.

        Example:
            >>> net = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
            >>> [(r.name, r.kind) for r in plan_blocks(net).coverage(families=("linear",))]
            [('0.weight', 'kronecker-expand'), ('0.bias', 'kronecker-expand'), ('1.weight', 'uncovered'), ('1.bias', 'uncovered')]
        """
        check_kfac_approx(kfac_approx)
        out = []
        for r in self.rows:
            group = self.groups.get(r.block) if r.block is not None else None
            if group is None:
                out.append(r)
            elif families is not None and group.family not in families:
                module = type(group.modules[0]).__name__
                out.append(ParamCoverage(r.name, r.shape, "uncovered", None, r.uses,
                                         f"{who} has no block for {module} ({group.paths[0]})"))
            else:
                out.append(ParamCoverage(r.name, r.shape, group.kind(kfac_approx), r.block, r.uses))
        return out

    def uncovered(self) -> list[ParamCoverage]:
        """Rows of kind ``"uncovered"`` (what a backend routes to its fallback)."""
        return [r for r in self.rows if r.kind == "uncovered"]


def check_kfac_approx(kfac_approx: str) -> None:
    """Raise a ValueError unless ``kfac_approx`` is ``"expand"`` or ``"reduce"``.

    Example:
        >>> check_kfac_approx("reduced")
        Traceback (most recent call last):
        ...
        ValueError: kfac_approx must be one of ('expand', 'reduce'); got 'reduced' (did you mean 'reduce'?)
    """
    if kfac_approx not in KFAC_APPROX:
        import difflib

        close = difflib.get_close_matches(str(kfac_approx), KFAC_APPROX, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"kfac_approx must be one of {KFAC_APPROX}; got {kfac_approx!r}{hint}")


def _path(name: str) -> str:
    return f"model.{name}" if name else "model"


def _family(module: nn.Module, parent: nn.Module | None) -> tuple[str | None, str]:
    """``(family, reason)``: the block family of a module, or ``None`` and why not."""
    kind = type(module).__name__
    if isinstance(parent, nn.MultiheadAttention):
        return None, f"{kind} inside nn.MultiheadAttention is called functionally (no hook fires)"
    if isinstance(module, nn.MultiheadAttention):
        return None, (
            "nn.MultiheadAttention uses its fused in_proj_weight and out_proj functionally "
            "(no hookable Linear); build attention from nn.Linear projections to cover it"
        )
    if isinstance(module, nn.Linear):
        return "linear", ""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
            return None, (
                "Conv2d needs groups=1, numeric padding and padding_mode='zeros' "
                f"(got groups={module.groups}, padding={module.padding!r}, "
                f"padding_mode={module.padding_mode!r})"
            )
        return "conv2d", ""
    if isinstance(module, nn.Embedding):
        if module.max_norm is not None or module.scale_grad_by_freq or module.sparse:
            return None, "Embedding with max_norm, scale_grad_by_freq or sparse=True is not covered"
        return "embedding", ""
    if isinstance(module, NORMS):
        return "norm", ""
    if next(module.children(), None) is not None:
        return None, (f"a parameter of the container {kind} itself (used in its own forward, not "
                      "by a layer whose call can be hooked)")
    return None, f"{kind} has no curvature block (supported: Linear, Conv2d, Embedding, " \
                 "LayerNorm, RMSNorm, BatchNorm1d/2d)"


def plan_blocks(model: nn.Module, *, trainable: Iterable[Tensor] | None = None) -> BlockPlan:
    """Sort every parameter of ``model`` into a block kind (see the module docstring).

    Args:
        model: The network.
        trainable: The parameters the optimizer updates (default: those with
            ``requires_grad``); any other parameter is ``frozen``.

    Returns:
        The :class:`BlockPlan` (kinds for ``kfac_approx="expand"``; use
        :meth:`BlockPlan.coverage` for ``"reduce"``).

    Example:
        >>> net = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 10))
        >>> _ = net[2].bias.requires_grad_(False)
        >>> [(r.name, r.kind) for r in plan_blocks(net).rows]  # doctest: +NORMALIZE_WHITESPACE
        [('0.weight', 'kronecker-expand'), ('1.weight', 'unit-wise'), ('1.bias', 'unit-wise'),
         ('2.weight', 'kronecker-expand'), ('2.bias', 'frozen')]
    """
    train_ids = (
        {id(p) for p in trainable} if trainable is not None
        else {id(p) for p in model.parameters() if p.requires_grad}
    )
    parents: dict[int, nn.Module] = {}
    for m in model.modules():
        for child in m.children():
            parents.setdefault(id(child), m)
    # owners of every parameter: (module name, module, attribute)
    owners: dict[int, list[tuple[str, nn.Module, str]]] = {}
    names: dict[int, str] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for attr, p in module.named_parameters(recurse=False):
            full = f"{mname}.{attr}" if mname else attr
            names.setdefault(id(p), full)
            entry = owners.setdefault(id(p), [])
            if all(o[1] is not module for o in entry):
                entry.append((mname, module, attr))
    reasons: dict[int, str] = {}
    groups: dict[str, LayerGroup] = {}
    block_of: dict[int, str] = {}
    seen: set[int] = set()
    for mname, module in model.named_modules():
        own = dict(module.named_parameters(recurse=False))
        if not own or id(module) in seen:
            continue
        seen.add(id(module))
        family, reason = _family(module, parents.get(id(module)))
        if family is None:
            for p in own.values():
                reasons.setdefault(id(p), f"{reason} ({type(module).__name__} at {_path(mname)})")
            continue
        # every module sharing one of these parameters
        sharers = {id(o[1]): (o[0], o[1]) for p in own.values() for o in owners[id(p)]}
        if len(sharers) > 1:
            same = all(
                type(m) is type(module)
                and dict(m.named_parameters(recurse=False)).keys() == own.keys()
                and all(a is b for a, b in zip(dict(m.named_parameters(recurse=False)).values(),
                                               own.values()))
                for _, m in sharers.values()
            )
            if not same:
                uses = " and ".join(
                    f"{o[1].__class__.__name__}.{o[2]} at {_path(o[0])}"
                    for p in own.values() for o in owners[id(p)]
                )
                for p in own.values():
                    reasons.setdefault(id(p), (
                        f"parameter shared in different roles by {uses}; "
                        "no single Kronecker product covers it"
                    ))
                continue
        members = sorted(sharers.values(), key=lambda t: t[0])
        seen.update(id(m) for _, m in members)
        w, b = own.get("weight"), own.get("bias")
        w = w if w is not None and id(w) in train_ids else None
        b = b if b is not None and id(b) in train_ids else None
        if w is None and b is None:
            continue
        group = LayerGroup(
            name=mname, family=family, modules=tuple(m for _, m in members),
            paths=tuple(_path(n) for n, _ in members), weight=w, bias=b,
            weight_name=names[id(w)] if w is not None else None,
            bias_name=names[id(b)] if b is not None else None,
        )
        if family == "embedding" and w is None:
            continue
        groups[mname] = group
        for p in group.params:
            block_of[id(p)] = mname
        for attr, p in own.items():
            if attr not in ("weight", "bias") and id(p) in train_ids:
                reasons.setdefault(id(p), f"{type(module).__name__}.{attr} at {_path(mname)} "
                                           "is not part of a block")
    plan = BlockPlan(groups=groups)
    for name, p in model.named_parameters():
        pid = id(p)
        uses = tuple(_path(o[0]) for o in owners[pid])
        if pid not in train_ids:
            plan.rows.append(ParamCoverage(name, tuple(p.shape), "frozen", None, uses))
        elif pid in block_of:
            g = groups[block_of[pid]]
            plan.rows.append(ParamCoverage(name, tuple(p.shape), g.kind(), g.name, uses))
        else:
            reason = reasons.get(pid, "not owned by a covered layer")
            plan.rows.append(ParamCoverage(name, tuple(p.shape), "uncovered", None, uses, reason))
    return plan
