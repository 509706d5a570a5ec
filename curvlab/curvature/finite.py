r"""Finiteness checks for lists of tensors: one device sync, exact, sparse-aware.

Every NaN/Inf guard in curvlab (the base optimizer's loss and gradient
check, the Kronecker factors and inverses, K-BFGS's candidates, the bridge's
inner state, the guarded descent step) goes through this module.

Method: the Euclidean norm of every tensor in one fused
``torch._foreach_norm`` call, and a single ``isfinite`` on the stacked
norms. A NaN or an Inf entry makes its tensor's norm non-finite, so finite
norms prove every tensor finite. A non-finite norm can also come from
overflow of the sum of squares of large finite entries (beyond about
:math:`10^{19}` in float32); :func:`all_finite` therefore re-checks such
tensors entry by entry, so its answer is exact, while :func:`finite_flags`
(no sync) is conservative: an overflowing norm counts as non-finite.
Low-precision tensors (``float16``/``bfloat16``) are normed in ``float32``.
Sparse gradients (``nn.Embedding(sparse=True)``) are checked through their
stored values.

Why the fused norm: it is the fastest candidate measured on CPU for
typical parameter lists (per-tensor ``isfinite(t).all()`` is 3-30× slower,
max-abs norms ``_foreach_norm(ts, inf)`` are not vectorised on CPU,
per-tensor sums pay one Python call each); the table and the command that
regenerates it are in ``docs/backends/index.rst``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

__all__ = ["all_finite", "finite_flags"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_SPARSE = (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc)


def _values(t: Tensor) -> Tensor:
    """The stored entries of ``t`` (a sparse tensor's values, a dense tensor itself)."""
    if t.layout == torch.strided:
        return t
    if t.layout == torch.sparse_coo:
        return t._values()  # also for uncoalesced tensors (values() needs coalescing)
    if t.layout in _SPARSE:
        return t.values()
    return t


def _checked(tensors: Iterable[Tensor | None]) -> list[Tensor]:
    """The stored entries of every floating/complex tensor (``None`` and integers dropped)."""
    return [_values(t) for t in tensors
            if t is not None and (t.is_floating_point() or t.is_complex())]


def _norms(tensors: list[Tensor]) -> Tensor:
    """Stacked 2-norms (low precision normed in float32), on the first tensor's device."""
    if any(t.dtype in _LOW_PRECISION for t in tensors):
        norms = torch._foreach_norm(tensors, 2, dtype=torch.float32)
    else:
        norms = torch._foreach_norm(tensors, 2)
    return torch.stack([n.real if n.is_complex() else n for n in norms])


def finite_flags(tensors: Sequence[Tensor]) -> Tensor:
    """``(len(tensors),)`` booleans, true where a tensor's norm is finite (no device sync).

    Conservative: a NaN/Inf entry makes its flag false, and so does (rarely)
    a norm that overflows although every entry is finite. All tensors must
    be floating (or complex) and on one device.

    Args:
        tensors: Floating (or complex) tensors, dense or sparse.

    Returns:
        A bool tensor on the tensors' device (empty input: an empty tensor).

    Example:
        >>> finite_flags([torch.ones(3), torch.tensor([1.0, float("nan")])])
        tensor([ True, False])
    """
    if not tensors:
        return torch.ones(0, dtype=torch.bool)
    return torch.isfinite(_norms([_values(t) for t in tensors]))


def all_finite(tensors: Iterable[Tensor | None]) -> bool:
    """True when no given tensor holds a NaN or an Inf (exact; one sync per device).

    ``None`` entries and integer/bool tensors are ignored (they cannot be
    non-finite). Sparse tensors are checked through their stored values.

    Args:
        tensors: Tensors on any devices, any floating or complex dtypes.

    Returns:
        Whether every entry of every tensor is finite.

    Example:
        >>> all_finite([torch.ones(2), None, torch.arange(3)])
        True
        >>> all_finite([torch.tensor([1.0, float("inf")])])
        False
        >>> big = torch.full((4,), 3e30)   # finite, but its float32 norm overflows
        >>> all_finite([big])
        True
        >>> sparse = torch.sparse_coo_tensor(torch.tensor([[0, 2]]), torch.tensor([1.0, float("nan")]), (4,),
        ...                                  check_invariants=True)
        >>> all_finite([sparse])
        False
    """
    checked = _checked(tensors)
    if not checked:
        return True
    device = checked[0].device
    groups = ([checked] if all(t.device == device for t in checked)
              else [[t for t in checked if t.device == d] for d in {t.device for t in checked}])
    for group in groups:
        flags = torch.isfinite(_norms(group))
        if bool(flags.all()):
            continue
        # a non-finite norm: a NaN/Inf entry, or overflow of a finite norm (re-check exactly)
        for t, ok in zip(group, flags.tolist()):
            if not ok and not bool(torch.isfinite(t).all()):
                return False
    return True
