r"""Compute floor of an optimizer step: the FLOPs its algorithm needs, from layer shapes and schedule.

A measured step time says little on its own: 2× SGD is slow for FOOF and
fast for K-BFGS. The *floor* of a step is the arithmetic the method cannot
avoid, counted in floating-point operations (a multiply-add is 2 FLOPs) and
amortised over the optimizer's schedule:

.. math::

    F = F_\text{passes} + F_\text{statistics} + F_\text{inverse} + F_\text{precondition},

converted to seconds at a FLOP rate :math:`r` of the machine's matrix
product measured in the same run (:func:`matmul_rate`): floor :math:`= F / r`.
Element-wise work (activations, losses, moment updates) is left out: it is
memory-bound and small against the matrix products of the widths this is
meant for, so SGD's own measured/floor shows what the model's non-matrix
work and the framework cost on top.

Ingredients (:class:`ModelCost`, :func:`model_cost`):

* the model's forward and backward FLOPs, counted by
  :class:`torch.utils.flop_counter.FlopCounterMode` on one real
  ``loss_fn(model(x), y).backward()`` (matrix products, convolutions and
  attention of any model), and a Hessian-vector product's (reverse over
  reverse);
* per ``Linear``/``Conv2d`` layer (:class:`LayerShape`, recorded by
  forward hooks on the same batch): fan-in :math:`d_i` (``C_in·k_h·k_w`` for a
  convolution), fan-out :math:`d_o`, rows :math:`n` (batch × positions),
  bias. The weight-gradient products :math:`2 n d_i d_o` per layer give
  the *partial* backward pass (gradients w.r.t. the layer outputs only, no
  weight gradients: K-FAC's sampled backward, K-BFGS's second one) as the
  backward FLOPs minus these.

Per method (:func:`step_floor`; :math:`d_h = d_i + 1` with a bias folded
in, Cholesky inverse :math:`(M+\lambda I)^{-1}` of an :math:`m \times m`
matrix: :math:`m^3` FLOPs, :math:`m^3/3` factorisation + :math:`2m^3/3`
``cholesky_inverse``; symmetric eigendecomposition with vectors
:math:`9 m^3` (Golub & Van Loan, symmetric QR)):

==============  ==================================================================
sgd, adam, …    forward + backward
kfac            \+ :math:`\frac1{T_f}` [MC-sample partial backward × samples,
                :math:`2 n d_i^2` (A), :math:`2 n s\, d_o^2` (G)]
                \+ :math:`\frac1{T_i}` [:math:`d_i^3 + d_o^3` per weight, :math:`d_o^3` per bias]
                \+ :math:`2 d_o^2 d_i + 2 d_o d_i^2` (+ :math:`2 d_o^2` bias) per step
foof            \+ :math:`\frac{S}{T}\, 2 n d_h^2` + :math:`\frac1T d_h^3` + :math:`2 d_o d_h^2`
kbfgs           \+ forward + partial backward (second evaluation at θ⁺)
                \+ :math:`2 n d_h^2` (A) + :math:`12 d_h^2` (H_a BFGS) + :math:`2 d_o d_h^2 + 2 d_o^2 d_h`
                (P = H_g M H_a) + :math:`8 d_o^2` (H_g BFGS)
kbfgsl          kbfgs without H_g, with the compact L-BFGS product on the
                :math:`d_o \times d_h` matrix for :math:`k` pairs:
                :math:`8 k d_o d_h + 4 k^2 d_h + 4 k^2 d_o`
groupednewton   \+ :math:`\frac1p` [forward + backward with graph (a fresh
                batch), S HVPs (order 2) or 2S (order 3) over the double-backward
                graph, one forward (safeguard)]; S = subsets (``tensor``: one per
                parameter tensor)
adahessian      \+ :math:`\frac{1}{T}` × samples × (HVP − gradient)
sophiah         same with its ``update_period``
soap            per weight :math:`(m, n)`: :math:`6(m^2 n + m n^2)` (L, R, rotate, rotate back)
                \+ :math:`\frac1f` [:math:`\frac{10}3 (m^3+n^3) + 4(m^2 n + m n^2)`]
                (power step + QR, moments re-projected)
shampoo         :math:`4(m^2 n + m n^2)` + :math:`\frac1f\, 9 (m^3 + n^3)` (inverse 4th roots)
kron            :math:`10(m^2 n + m n^2) + 2(m^3+n^3)` (precondition and update
                every step in the first 500 steps, the library's schedule)
muon            per hidden weight, ``ns_steps`` × :math:`(4 m^2 n + 2 m^3)`, :math:`m \le n`
natgrad         K columns per example (K outputs, or ``mc_samples``):
                K partial backward passes, the Gram
                :math:`\sum_l 2 (nK)^2 d_o + 2 n^2 d_i`, its Cholesky :math:`(nK)^3/3`,
                and :math:`4 nK P` to form and apply :math:`J^\top`
==============  ==================================================================

The peers' rows are the arithmetic of their published algorithms as
``pytorch_optimizer`` implements them at the benchmark's horizon, not a
count of that code. A method not in the table raises :class:`KeyError`.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> cost = model_cost(net, nn.MSELoss(), torch.randn(5, 4), torch.randn(5, 2))
    >>> cost.forward, cost.backward   # 2·5·(4·3 + 3·2); weight grads + one input grad
    (180, 240)
    >>> floor = step_floor("foof", cost, {"inverse_every": 10, "stats_steps": 1})
    >>> floor.passes, floor.precondition   # 2·3·5² + 2·2·4²
    (420, 214)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["Floor", "LayerShape", "ModelCost", "layer_shapes", "matmul_rate", "model_cost",
           "step_floor"]

#: FLOPs of a symmetric eigendecomposition with eigenvectors, per m³.
EIGH_PER_CUBE = 9.0


@dataclass(frozen=True)
class LayerShape:
    """One ``Linear``/``Conv2d`` layer as its matrix product ``(n, d_in) @ (d_in, d_out)``.

    Attributes:
        name: Qualified module name.
        d_in: Fan-in (``in_features``; ``C_in/groups · k_h · k_w``).
        d_out: Fan-out (``out_features``; ``C_out``).
        rows: Rows of the product in the recorded forward pass (batch × positions).
        bias: Whether the layer has a bias.
    """

    name: str
    d_in: int
    d_out: int
    rows: int
    bias: bool

    @property
    def d_h(self) -> int:
        """Fan-in with the bias folded in (homogeneous input)."""
        return self.d_in + int(self.bias)


@dataclass(frozen=True)
class ModelCost:
    """FLOPs of one training pass of a model on one batch.

    Attributes:
        forward: FLOPs of ``model(x)``.
        backward: FLOPs of ``loss.backward()`` (weight and input gradients).
        hvp: FLOPs of one Hessian-vector product including its gradient
            (forward, backward with graph, reverse pass over it).
        layers: The ``Linear``/``Conv2d`` layers.
        params: Shapes of the trainable parameters.
        outputs: Output entries per example (``K`` of natgrad's columns).
    """

    forward: int
    backward: int
    hvp: int
    layers: tuple[LayerShape, ...]
    params: tuple[tuple[int, ...], ...]
    outputs: int

    @property
    def weight_grad(self) -> int:
        """FLOPs of the weight-gradient products ``2 n d_in d_out`` summed over layers."""
        return sum(2 * layer.rows * layer.d_in * layer.d_out for layer in self.layers)

    @property
    def partial_backward(self) -> int:
        """FLOPs of a backward pass to the layer outputs only (no weight gradients)."""
        return max(self.backward - self.weight_grad, 0)


@dataclass(frozen=True)
class Floor:
    """Amortised FLOPs of one step, by kind of work (see the module docstring).

    Attributes:
        passes: Forward and backward passes through the model.
        statistics: Curvature statistics (factors, pairs' EMAs, Grams).
        inverse: Inverses, roots and eigendecompositions.
        precondition: Applying the preconditioner to the gradient.
    """

    passes: float
    statistics: float = 0.0
    inverse: float = 0.0
    precondition: float = 0.0

    @property
    def total(self) -> float:
        """All FLOPs of the step."""
        return self.passes + self.statistics + self.inverse + self.precondition

    def seconds(self, rate: float) -> float:
        """The floor in seconds at ``rate`` FLOP/s."""
        return self.total / rate


def layer_shapes(model: nn.Module, x: Any) -> tuple[LayerShape, ...]:
    """Record every ``Linear``/``Conv2d`` call of ``model(x)`` (a module called twice counts twice).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 1))
        >>> [(s.d_in, s.d_out, s.rows) for s in layer_shapes(net, torch.zeros(5, 1, 4, 4))]
        [(9, 2, 20), (8, 1, 5)]
    """
    shapes: list[LayerShape] = []

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if isinstance(module, nn.Linear):
                d_in, d_out = module.in_features, module.out_features
                rows = output.numel() // d_out
            else:
                kh, kw = module.kernel_size
                d_in, d_out = module.in_channels // module.groups * kh * kw, module.out_channels
                rows = output.numel() // d_out
            shapes.append(LayerShape(name, d_in, d_out, rows, module.bias is not None))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return tuple(shapes)


def _count(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def model_cost(model: nn.Module, loss_fn: Callable[[Tensor, Any], Tensor], x: Any,
               y: Any) -> ModelCost:
    """Count the FLOPs of a forward, a backward and a Hessian-vector product on ``(x, y)``.

    Gradients already in ``.grad`` are left as they were.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 2))
        >>> c = model_cost(net, nn.MSELoss(), torch.randn(4, 3), torch.randn(4, 2))
        >>> c.forward, c.backward, c.partial_backward, c.outputs
        (48, 48, 0, 2)
    """
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [None if p.grad is None else p.grad.clone() for p in params]
    out_holder: list[Tensor] = []
    forward = _count(lambda: out_holder.append(model(x)))
    loss = loss_fn(out_holder[0], y)
    backward = _count(lambda: torch.autograd.grad(loss, params))

    def hvp() -> None:
        grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
        dot = sum((g * torch.ones_like(g)).sum() for g in grads)
        torch.autograd.grad(dot, params)

    hv = _count(hvp)
    for p, g in zip(params, saved):
        p.grad = g
    outputs = out_holder[0].numel() // out_holder[0].shape[0]
    return ModelCost(forward, backward, hv, layer_shapes(model, x),
                     tuple(tuple(p.shape) for p in params), outputs)


def matmul_rate(size: int = 1024, repeats: int = 3, *, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of a ``size × size`` matrix product here (best of ``repeats``; threads as set).

    Example:
        >>> matmul_rate(64, 2) > 0
        True
    """
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    cuda = str(device).startswith("cuda")
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        if cuda:
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best


def _mean_pairs(memory: int, horizon: tuple[int, int]) -> float:
    start, end = horizon
    steps = range(start, max(end, start + 1))
    return sum(min(memory, t) for t in steps) / len(steps)


def _kfac(c: ModelCost, hp: Mapping[str, Any], horizon: tuple[int, int]) -> Floor:
    samples = hp.get("mc_samples", 1) if hp.get("fisher_type", "mc") == "mc" else c.outputs
    stats = samples * c.partial_backward
    inverse = precondition = 0.0
    for s in c.layers:
        stats += 2 * s.rows * s.d_in**2 + 2 * s.rows * samples * s.d_out**2
        inverse += s.d_in**3 + s.d_out**3 + (s.d_out**3 if s.bias else 0)
        precondition += 2 * s.d_out**2 * s.d_in + 2 * s.d_out * s.d_in**2
        precondition += 2 * s.d_out**2 if s.bias else 0
    return Floor(c.forward + c.backward, stats / hp["factor_every"],
                 inverse / hp["inverse_every"], precondition)


def _foof(c: ModelCost, hp: Mapping[str, Any], horizon: tuple[int, int]) -> Floor:
    period = hp["inverse_every"]
    stats_steps = hp.get("stats_steps")
    share = 1.0 if stats_steps is None else min(stats_steps, period) / period
    stats = sum(2 * s.rows * s.d_h**2 for s in c.layers) * share
    inverse = sum(s.d_h**3 for s in c.layers) / period
    precondition = sum(2 * s.d_out * s.d_h**2 for s in c.layers)
    return Floor(c.forward + c.backward, stats, inverse, precondition)


def _kbfgs(c: ModelCost, hp: Mapping[str, Any], horizon: tuple[int, int],
           limited: bool = False) -> Floor:
    stats = sum(2 * s.rows * s.d_h**2 + 12 * s.d_h**2 for s in c.layers)
    precondition = sum(2 * s.d_out * s.d_h**2 for s in c.layers)
    if limited:
        k = _mean_pairs(hp["memory"], horizon)
        precondition += sum(8 * k * s.d_out * s.d_h + 4 * k * k * (s.d_h + s.d_out)
                            for s in c.layers)
    else:
        precondition += sum(2 * s.d_out**2 * s.d_h for s in c.layers)
        stats += sum(8 * s.d_out**2 for s in c.layers)
    return Floor(2 * c.forward + c.backward + c.partial_backward, stats, 0.0, precondition)


def _groupednewton(c: ModelCost, hp: Mapping[str, Any], horizon: tuple[int, int]) -> Floor:
    partition = hp.get("partition", "tensor")
    subsets = {"tensor": len(c.params), "trivial": 1, "weight-bias": 2,
               "layer": max(len(c.layers), 1)}.get(partition, len(c.params))
    per_pass = c.hvp - c.forward - c.backward  # one reverse pass over the double-backward graph
    passes = (2 if hp.get("order", 3) == 3 else 1) * subsets
    periodic = 2 * c.forward + c.backward + passes * per_pass  # fresh batch, passes, safeguard
    return Floor(c.forward + c.backward + periodic / hp["period"])


def _hessian_diag(c: ModelCost, hp: Mapping[str, Any], horizon: tuple[int, int]) -> Floor:
    extra = hp.get("num_samples", 1) * (c.hvp - c.forward - c.backward)
    return Floor(c.forward + c.backward + extra / hp.get("update_period", 1))


def _matrices(c: ModelCost) -> list[tuple[int, int]]:
    return [shape for shape in c.params if len(shape) == 2]


def _soap(c: ModelCost, hp: Mapping[str, Any], horizon: tuple[int, int]) -> Floor:
    limit, f = hp.get("max_precondition_dim", 10000), hp.get("precondition_frequency", 10)
    pre = inv = 0.0
    for m, n in _matrices(c):
        rot = (m * m * n if m <= limit else 0) + (m * n * n if n <= limit else 0)
        pre += 6 * rot
        inv += (10 / 3 * ((m**3 if m <= limit else 0) + (n**3 if n <= limit else 0)) + 4 * rot) / f
    return Floor(c.forward + c.backward, 0.0, inv, pre)


def _shampoo(c: ModelCost, hp: Mapping[str, Any], horizon: tuple[int, int]) -> Floor:
    f = hp.get("preconditioning_compute_steps", 1)
    pre = sum(4 * (m * m * n + m * n * n) for m, n in _matrices(c))
    inv = sum(EIGH_PER_CUBE * (m**3 + n**3) for m, n in _matrices(c)) / f
    return Floor(c.forward + c.backward, 0.0, inv, pre)


def _kron(c: ModelCost, hp: Mapping[str, Any], horizon: tuple[int, int]) -> Floor:
    limit = hp.get("max_size_triangular", 8192)
    pre = inv = 0.0
    for m, n in _matrices(c):
        mm_, nn_ = (m if m <= limit else 0), (n if n <= limit else 0)
        pre += 4 * (mm_ * m * n + m * n * nn_)
        inv += 6 * (mm_ * m * n + m * n * nn_) + 2 * (mm_**3 + nn_**3)
    return Floor(c.forward + c.backward, 0.0, inv, pre)


def _muon(c: ModelCost, hp: Mapping[str, Any], horizon: tuple[int, int]) -> Floor:
    mats = _matrices(c)
    if hp.get("muon_scope", "hidden") == "hidden":
        mats = mats[1:-1]
    pre = 0.0
    for a, b in mats:
        m, n = min(a, b), max(a, b)
        pre += hp.get("ns_steps", 5) * (4 * m * m * n + 2 * m**3)
    return Floor(c.forward + c.backward, 0.0, 0.0, pre)


def _natgrad(c: ModelCost, hp: Mapping[str, Any], horizon: tuple[int, int]) -> Floor:
    k = c.outputs if hp.get("fisher_type", "true") == "true" else hp.get("mc_samples", 1)
    n = c.layers[0].rows if c.layers else 1
    cols = n * k
    P = sum(int(torch.Size(s).numel()) for s in c.params)
    stats = k * c.partial_backward + sum(2 * cols**2 * s.d_out + 2 * n * n * s.d_in
                                         for s in c.layers)
    return Floor(c.forward + c.backward, stats, cols**3 / 3, 4 * cols * P)


_FIRST_ORDER = ("sgd", "adam")
_METHODS: dict[str, Callable[[ModelCost, Mapping[str, Any], tuple[int, int]], Floor]] = {
    "kfac": _kfac, "foof": _foof, "kbfgs": _kbfgs,
    "kbfgsl": lambda c, hp, h: _kbfgs(c, hp, h, limited=True),
    "groupednewton": _groupednewton, "adahessian": _hessian_diag, "sophiah": _hessian_diag,
    "soap": _soap, "shampoo": _shampoo, "kron": _kron, "muon": _muon, "natgrad": _natgrad,
}


def step_floor(name: str, cost: ModelCost, hparams: Mapping[str, Any], *,
               horizon: tuple[int, int] = (0, 1000)) -> Floor:
    """Amortised FLOPs of one step of optimizer ``name`` (see the module docstring's table).

    Args:
        name: Registry name (``"sgd"``, ``"kfac"``, …).
        cost: The model's :class:`ModelCost` on the benchmark's batch.
        hparams: The optimizer's resolved hyper-parameters (schedule keys
            such as ``factor_every``, ``inverse_every``, ``period``).
        horizon: ``(first, last)`` step of the timed window: K-BFGS(L)'s
            memory fills over the first ``memory`` steps.

    Raises:
        KeyError: no cost model for ``name``.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2, bias=False))
        >>> c = model_cost(net, nn.MSELoss(), torch.randn(3, 2), torch.randn(3, 2))
        >>> f = step_floor("kfac", c, {"factor_every": 1, "inverse_every": 1})
        >>> f.statistics, f.inverse, f.precondition   # 2·3·4 + 2·3·4; 8 + 8; 2·8 + 2·8
        (48.0, 16.0, 32.0)
    """
    if name in _FIRST_ORDER:
        return Floor(cost.forward + cost.backward)
    if name not in _METHODS:
        raise KeyError(f"no compute floor for {name!r}; known: {sorted((*_FIRST_ORDER, *_METHODS))}")
    return _METHODS[name](cost, hparams, horizon)
