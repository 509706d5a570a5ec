r"""Per-example Jacobian-transpose products :math:`u_{n,k} = J_n^\top v_{n,k}` by ``torch.func``.

The Fisher of one observed call (:class:`~curvlab_plugins.natgrad.observation.ObservedCall`)
is :math:`F = \sum_n J_n^\top H_n J_n = U U^\top` with the columns
:math:`u_{n,k} = J_n^\top v_{n,k}` (:math:`H_n = \sum_k v_{n,k} v_{n,k}^\top`,
:mod:`~curvlab_plugins.natgrad.output_roots`). :func:`fisher_columns`
computes them without forming :math:`J_n` or :math:`F`: the model is
re-run example by example with ``torch.func.functional_call`` (each example as
a batch of one), one reverse-mode pass ``torch.func.vjp`` per example gives
the pull-back :math:`v \mapsto J_n^\top v`, and ``torch.func.vmap`` batches it
over the :math:`K` roots and the :math:`N` examples. Cost: about :math:`K`
backward passes of the batch, memory :math:`N K P` numbers for the result.

Only the parameters given in ``params`` are differentiated; every other
parameter and buffer of the model is read as a constant. The recomputed
outputs are returned too, so that the caller can check they equal what the
closure computed (a layer with hidden randomness or state would differ).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from curvlab_plugins.natgrad.observation import ObservedCall

__all__ = ["fisher_columns"]


def fisher_columns(
    model: nn.Module, params: Mapping[str, Tensor], call: ObservedCall, roots: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""Columns :math:`u_{n,k} = J_n^\top v_{n,k}` per parameter, and the recomputed outputs.

    Args:
        model: The network.
        params: ``{qualified name: tensor}`` of the parameters to differentiate
            (their current values; detached inside).
        call: The observed inputs (every tensor argument has the batch in
            dimension 0; non-tensor arguments are passed unchanged).
        roots: :math:`v`, shape ``(N, K, *call.outputs.shape[1:])``.

    Returns:
        ``(outputs, columns)``: the outputs recomputed example by example,
        shaped like ``call.outputs``, and ``{name: (N, K, *param.shape)}``.

    Example:
        >>> import torch
        >>> lin = nn.Linear(2, 1, bias=False)
        >>> x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        >>> call = ObservedCall((x,), {}, lin(x).detach(), None)
        >>> _, cols = fisher_columns(lin, {"weight": lin.weight}, call, torch.ones(2, 1, 1))
        >>> cols["weight"][:, 0, 0].tolist()   # J_nᵀ 1 = x_n for a linear model
        [[1.0, 2.0], [3.0, 4.0]]
    """
    primals = {k: v.detach() for k, v in params.items()}
    slots = [i for i, a in enumerate(call.args) if isinstance(a, Tensor)]
    keys = [k for k, v in call.kwargs.items() if isinstance(v, Tensor)]
    batched = [call.args[i] for i in slots] + [call.kwargs[k] for k in keys]

    def forward(p: Mapping[str, Tensor], rows: tuple[Tensor, ...]) -> Tensor:
        args: list[Any] = list(call.args)
        kwargs = dict(call.kwargs)
        for i, r in zip(slots, rows[: len(slots)]):
            args[i] = r.unsqueeze(0)
        for k, r in zip(keys, rows[len(slots):]):
            kwargs[k] = r.unsqueeze(0)
        out = functional_call(model, p, tuple(args), kwargs)
        return out.squeeze(0)

    def one_example(rows: tuple[Tensor, ...], v: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        out, pullback = vjp(lambda p: forward(p, rows), primals)
        (cols,) = vmap(pullback)(v)
        return out, cols

    return vmap(one_example)(tuple(batched), roots)
