"""Brute-force helpers the Kronecker backends' case-table tests share (no backend code used)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import curvlab
from curvlab import reference
from curvlab.testing.cases import BackendCase, CaseProblem, backend_cases

LAYERS = (nn.Linear, nn.Conv2d)


def table() -> list:
    """The case table (:mod:`curvlab.testing.cases`) as pytest params with readable ids."""
    return [pytest.param(c, id=c.id) for c in backend_cases()]


def layers(model: nn.Module) -> dict[str, nn.Module]:
    """The Linear/Conv2d layers by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LAYERS)}


def trainable(p: Tensor | None) -> bool:
    """A parameter the optimizer may move (present and ``requires_grad``)."""
    return p is not None and p.requires_grad


def augmented(weight: Tensor, bias: Tensor | None) -> Tensor:
    """``[W | b]``: the weight's matrix view with the bias as last column (if given)."""
    W = matrix(weight)
    return W if bias is None else torch.cat([W, bias[:, None]], 1)


def refused(case: BackendCase, optimizer: str, build) -> bool:
    """If the row says ``optimizer`` refuses it: check that it does (and with that message).

    The refusal may come at construction or at the first step (on the
    row's own batch). A row ``pending`` for ``optimizer`` is skipped with its reason.
    """
    pending = case.pending(optimizer)
    if pending is not None:
        pytest.skip(f"{optimizer} on {case.model.name}: {pending}")
    message = case.refusal(optimizer)
    if message is None:
        return False
    with pytest.raises(ValueError, match=message):
        opt = build()
        p = case.instantiate()
        opt.step(curvlab.closure(opt.model, opt.loss_fn, p.inputs, p.targets))
    return True


def layer_inputs(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Input of every Linear/Conv2d layer in one forward pass (hooks, removed afterwards)."""
    seen: dict[str, Tensor] = {}
    handles = [
        m.register_forward_hook(lambda mod, args, out, n=n: seen.__setitem__(n, args[0].detach()))
        for n, m in model.named_modules() if isinstance(m, LAYERS)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def input_rows(module: nn.Module, a: Tensor, homogeneous: bool) -> Tensor:
    """The layer's inputs as rows ``(N·T, d)``: Linear rows, or unfolded Conv2d patches."""
    if isinstance(module, nn.Conv2d):
        patches = nn.functional.unfold(a, module.kernel_size, module.dilation, module.padding,
                                       module.stride)
        rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    else:
        rows = a.reshape(-1, a.shape[-1])
    if homogeneous:
        rows = torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype)], 1)
    return rows


def second_moment(module: nn.Module, a: Tensor, homogeneous: bool) -> Tensor:
    r""":math:`\frac1N \sum_{n,t} \tilde a_{n,t} \tilde a_{n,t}^\top` (sum over positions, mean over examples)."""
    rows = input_rows(module, a, homogeneous)
    return rows.T @ rows / a.shape[0]


def gradients(problem: CaseProblem) -> dict[str, Tensor]:
    """``{name: ∂L/∂p}`` of every trainable parameter from :func:`curvlab.reference.gradient`."""
    model = problem.model
    flat = reference.gradient(model, problem.loss_fn, problem.inputs, problem.targets)
    return reference.unflatten(flat, reference.param_layout(model))


def snapshot(problem: CaseProblem) -> CaseProblem:
    """An independent copy (the oracles see the weights before the step)."""
    return CaseProblem(copy.deepcopy(problem.model), copy.deepcopy(problem.loss_fn),
                       problem.inputs, problem.targets)


def matrix(p_weight: Tensor) -> Tensor:
    """The ``(out, in·k·k)`` matrix view of a Linear/Conv2d weight."""
    return p_weight.reshape(p_weight.shape[0], -1)
