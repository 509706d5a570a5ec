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


def model_rows() -> list:
    """One case per model row (cross-entropy, or MSE for one output; mean reduction)."""
    out, seen = [], set()
    for c in sorted(backend_cases(), key=lambda c: (c.loss.name != "ce", c.loss.name != "mse",
                                                   c.reduction != "mean")):
        if c.model.name not in seen:
            seen.add(c.model.name)
            out.append(c)
    order = {m: i for i, m in enumerate(dict.fromkeys(c.model.name for c in backend_cases()))}
    return [pytest.param(c, id=c.id) for c in sorted(out, key=lambda c: order[c.model.name])]


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
    """An independent copy (the oracles see the weights before the step).

    A training-mode BatchNorm of the copy keeps no running statistics: its output
    (batch statistics) is the same, and torch.func can differentiate it (no in-place
    buffer update).
    """
    model = copy.deepcopy(problem.model)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return CaseProblem(model, copy.deepcopy(problem.loss_fn), problem.inputs, problem.targets)


def matrix(p_weight: Tensor) -> Tensor:
    """The ``(out, in·k·k)`` matrix view of a Linear/Conv2d weight."""
    return p_weight.reshape(p_weight.shape[0], -1)


# ------------------------------------------------------- modern block types (expand convention)
def module_calls(model: nn.Module, x: Tensor) -> dict[str, list[tuple[Tensor, Tensor]]]:
    """``{module name: [(input, output), ...]}`` of every module call in one forward pass."""
    seen: dict[str, list[tuple[Tensor, Tensor]]] = {}
    handles = [
        m.register_forward_hook(
            lambda mod, args, out, n=n: seen.setdefault(n, []).append(
                (args[0].detach(), out.detach().clone())) if isinstance(out, Tensor) else None)
        for n, m in model.named_modules() if m is not model
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def expand_moment(module: nn.Module, a: Tensor, homogeneous: bool) -> Tensor:
    r""":math:`\frac1{NR} \sum_{n,r} \tilde a_{n,r} \tilde a_{n,r}^\top` (mean over examples and positions)."""
    rows = input_rows(module, a, homogeneous)
    return rows.T @ rows / rows.shape[0]


def token_frequencies(module: nn.Embedding, idx: Tensor) -> Tensor:
    """Token counts / (N·R): the expand A of an ``Embedding`` (as a vector)."""
    counts = torch.bincount(idx.reshape(-1), minlength=module.num_embeddings).to(module.weight.dtype)
    return counts / idx.numel()


def unit_moments(normalised: Tensor, channel_first: bool, k_weight: bool, k_bias: bool) -> Tensor:
    r"""Per-unit :math:`\frac1{NR}\sum (\hat x, 1)(\hat x, 1)^\top` over the trainable entries, ``(U, k, k)``."""
    xh = normalised.transpose(1, -1) if channel_first else normalised
    xh = xh.reshape(-1, xh.shape[-1])  # (N·R, U)
    parts = ([xh] if k_weight else []) + ([torch.ones_like(xh)] if k_bias else [])
    rows = torch.stack(parts, -1)  # (N·R, U, k)
    return torch.einsum("ruk,rul->ukl", rows, rows) / rows.shape[0]


def train_case(case: BackendCase, optimizer: str, steps: int = 20, **hp) -> tuple[list[float], object]:
    """Train the row's model on its own batch for ``steps`` steps; the losses and the optimizer.

    A sum-reduced loss has its ``lr`` divided by the number of loss terms (the same
    steps as the mean-reduced loss for a method without output-side curvature).
    """
    import warnings

    from curvlab.curvature.fallback import FallbackWarning

    problem = case.instantiate(batch=8)
    if case.reduction == "sum" and "lr" in hp and hp.pop("per_term", True):
        with torch.no_grad():
            out = problem.model(problem.inputs)
        terms = out.shape[0] if isinstance(problem.loss_fn, nn.CrossEntropyLoss) else out.numel()
        hp["lr"] = hp["lr"] / terms
    hp.pop("per_term", None)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        opt = curvlab.create(optimizer, problem.model, problem.loss_fn, **hp)
    losses = []
    for _ in range(steps):
        loss = opt.step(curvlab.closure(problem.model, problem.loss_fn, problem.inputs,
                                        problem.targets))
        losses.append(float(loss.detach()))
    with torch.no_grad():
        losses.append(float(problem.loss_fn(problem.model(problem.inputs), problem.targets)))
    return losses, opt
