r"""Which parameters Muon orthogonalises and which fall back to AdamW.

Muon's Newton-Schulz update :math:`O = \mathrm{NS}_k(M) \approx U V^\top`
(for the momentum :math:`M = U \Sigma V^\top`) only makes sense for weight
*matrices* of hidden layers. The usual convention (Jordan et al. 2024, and
``pytorch_optimizer``'s own docs: "embeddings, classifier heads, biases, and
gains" go to AdamW) is implemented by :func:`muon_mask`:

``scope="hidden"`` (default)
    Muon for every parameter with ``ndim ≥ 2`` except the weights of
    embeddings (``nn.Embedding``/``nn.EmbeddingBag``), of the *output
    layer* (the last module, in ``model.named_modules()`` order, that owns a
    parameter with ``ndim ≥ 2``) and of any module whose name contains
    ``head``; AdamW for those and for all vectors/scalars (biases, norms).
``scope="matrices"``
    Muon for every ``ndim ≥ 2`` parameter except embeddings (the output
    layer included); AdamW for vectors/scalars.

Without a model (bare parameters) only the ``ndim`` rule applies.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

__all__ = ["SCOPES", "muon_mask"]

SCOPES = ("hidden", "matrices")
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


def muon_mask(model: nn.Module | None, params: Iterable[Tensor], scope: str) -> list[bool]:
    """For each parameter: ``True`` → Muon, ``False`` → AdamW fallback.

    Args:
        model: The network (``None``: classify by ``ndim`` only).
        params: The parameters to classify, in optimiser order.
        scope: ``"hidden"`` or ``"matrices"`` (see the module docstring).

    Returns:
        One flag per parameter, in the order given.

    Raises:
        ValueError: unknown ``scope``.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        >>> muon_mask(net, net.parameters(), "hidden")   # [W0, b0, W2, b2]
        [True, False, False, False]
        >>> muon_mask(net, net.parameters(), "matrices")
        [True, False, True, False]
    """
    if scope not in SCOPES:
        raise ValueError(f"muon_scope must be one of {SCOPES}, got {scope!r}")
    params = list(params)
    excluded: set[int] = set()
    if model is not None:
        owners = [
            (name, module)
            for name, module in model.named_modules()
            if any(p.ndim >= 2 for p in module.parameters(recurse=False))
        ]
        for name, module in owners:
            if isinstance(module, _EMBEDDINGS) or (scope == "hidden" and "head" in name):
                excluded.update(id(p) for p in module.parameters(recurse=False))
        if scope == "hidden" and owners:
            excluded.update(id(p) for p in owners[-1][1].parameters(recurse=False))
    return [p.ndim >= 2 and id(p) not in excluded for p in params]
