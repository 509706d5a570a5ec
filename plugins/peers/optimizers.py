r"""The table of bridged ``pytorch_optimizer`` optimizers.

Each class below is a row: curvlab name, the library class it wraps, its
hyper-parameters (the library's keyword names, defaults copied from the
signatures of ``pytorch_optimizer`` 4.1, ranges the library accepts, a tuning
search space for ``lr``) and its description. All behaviour lives in
:class:`~curvlab_plugins.peers.bridge.PeerOptimizer`; only Muon adds code
(the Muon/AdamW parameter split).

Notation: gradient :math:`G` (a matrix for a 2-D weight), :math:`g` its
vector form, step size :math:`\alpha`, Hutchinson probe :math:`z`
(:math:`\mathbb E[zz^\top] = I`), Hessian :math:`H`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from curvlab.curvature.coverage import parameter_names
from curvlab.hparams import OPTIMIZER, HParam, LogUniform, Schema
from curvlab.optimizer import OptimizerMeta
from curvlab_plugins.peers.bridge import PeerOptimizer
from curvlab_plugins.peers.muon_split import SCOPES, muon_mask

__all__ = ["SOAP", "AdaHessian", "Kron", "Muon", "Shampoo", "SophiaH"]


def _lr(default: float, low: float, high: float) -> HParam:
    return HParam("lr", float, default, "step size α", low=0.0, space=LogUniform(low, high))


def _betas(default: tuple[float, float], doc: str, name: str = "betas") -> HParam:
    return HParam(name, tuple, default, doc, low=0.0, high=1.0, high_open=True, length=2)


def _nonneg(name: str, default: float, doc: str) -> HParam:
    return HParam(name, float, default, doc, low=0.0)


def _count(name: str, default: int, doc: str, scope: str = "group") -> HParam:
    return HParam(name, int, default, doc, low=1, scope=scope)


def _weight_decay(*, decouple: bool) -> list[HParam]:
    """``weight_decay``, ``weight_decouple`` and ``fixed_decay`` as the library declares them."""
    return [
        _nonneg("weight_decay", 0.0, "weight decay"),
        HParam("weight_decouple", bool, decouple, "decoupled (AdamW-style) weight decay"),
        HParam("fixed_decay", bool, False,
               "decoupled decay not scaled by lr (here: by lr/lr₀, so lr = 0 stops it)"),
    ]


def _hutchinson(period: int, distribution: str) -> list[HParam]:
    """The Hutchinson estimator's knobs, which the library keeps per optimizer."""
    choices = (distribution, *(d for d in ("gaussian", "rademacher") if d != distribution))
    return [
        _count("update_period", period, "steps between Hessian-diagonal estimates", OPTIMIZER),
        _count("num_samples", 1, "Hutchinson probes per estimate", OPTIMIZER),
        HParam("hessian_distribution", str, distribution, "probe distribution", choices=choices,
               scope=OPTIMIZER),
    ]


class SOAP(PeerOptimizer):
    r"""SOAP (Vyas et al. 2025): Adam in the eigenbasis of Shampoo's preconditioner.

    :math:`L \leftarrow \beta_s L + (1-\beta_s) GG^\top`,
    :math:`R \leftarrow \beta_s R + (1-\beta_s) G^\top G`; eigenbases
    :math:`Q_L, Q_R` (refreshed every ``precondition_frequency`` steps by one
    power-iteration + QR step); Adam moments of the rotated gradient
    :math:`G' = Q_L^\top G Q_R`;
    :math:`\theta \leftarrow \theta - \alpha\, Q_L \frac{\hat m'}{\sqrt{\hat v'}+\epsilon} Q_R^\top`
    and decoupled weight decay. The first step only initialises the factors.

    Example:
        >>> SOAP.schema["lr"].default, SOAP.inner_class
        (0.003, 'SOAP')
    """

    name = "soap"
    inner_class = "SOAP"
    schema = Schema(
        [
            _lr(3e-3, 1e-4, 1e-2),
            _betas((0.95, 0.95), "Adam EMA coefficients (β₁, β₂) in the eigenbasis"),
            HParam("shampoo_beta", float, None, "EMA coefficient β_s of L, R (None: β₂)",
                   low=0.0, high=1.0, high_open=True, optional=True),
            _nonneg("weight_decay", 1e-2, "decoupled weight decay"),
            _count("precondition_frequency", 10, "steps between eigenbasis refreshes"),
            _count("max_precondition_dim", 10000, "larger dimensions are not rotated"),
            HParam("merge_dims", bool, False, "merge small tensor dimensions before factoring"),
            HParam("precondition_1d", bool, False, "also rotate vectors (biases)"),
            HParam("correct_bias", bool, True, "Adam bias correction"),
            HParam("normalize_gradient", bool, False, "normalise the update to unit RMS"),
            _nonneg("eps", 1e-8, "denominator guard ε"),
        ]
    )
    meta = OptimizerMeta(
        summary="SOAP: Adam in Shampoo's eigenbasis (bridged from pytorch-optimizer)",
        paper="Vyas et al., SOAP: Improving and Stabilizing Shampoo using Adam, ICLR 2025, "
        "arXiv 2409.11321",
        conformance={"lr": 0.05},
        tags=("peer", "kronecker", "pytorch-optimizer"),
    )

    def _validate_group(self, group: Mapping[str, Any]) -> None:
        if group["merge_dims"]:
            self._check_merge_dims(group)

    def _check_merge_dims(self, group: Mapping[str, Any]) -> None:
        """Refuse ``merge_dims=True`` where the library's dimension merge breaks.

        ``pytorch_optimizer``'s ``merge_small_dims`` returns the shape ``[1]``
        (instead of ``[numel]``) when all dimensions of a tensor merge into one,
        i.e. for every tensor (biases included) with at most
        ``max_precondition_dim`` entries; SOAP then fails to reshape it. The
        library is probed, so a fixed version is used as is.
        """
        from pytorch_optimizer.optimizer.utils.shape import merge_small_dims

        limit = group["max_precondition_dim"]
        if merge_small_dims([2, 3], 10) == [6]:  # the library merges correctly
            return
        names = parameter_names(self.model, group["params"])
        bad = [names[id(p)] for p in group["params"] if p.numel() <= limit]
        if bad:
            raise ValueError(
                f"soap: merge_dims=True fails in pytorch-optimizer for tensors with at most "
                f"max_precondition_dim={limit} entries (their merged shape comes out as [1]); "
                f"affected: {', '.join(bad[:5])}{' …' if len(bad) > 5 else ''}. Use "
                "merge_dims=False, or a max_precondition_dim below their sizes"
            )


class Shampoo(PeerOptimizer):
    r"""Shampoo (Gupta, Koren & Singer 2018): Kronecker-factored AdaGrad.

    For a matrix gradient: :math:`L \leftarrow L + GG^\top`,
    :math:`R \leftarrow R + G^\top G` (both start at ``matrix_eps`` · I),
    :math:`\theta \leftarrow \theta - \alpha\, L^{-1/4} G R^{-1/4}`; an order-k
    tensor uses one factor per mode with power :math:`-1/(2k)`. Inverse roots
    by SVD every ``preconditioning_compute_steps`` steps; optional momentum.

    Example:
        >>> Shampoo.schema["matrix_eps"].default
        1e-06
    """

    name = "shampoo"
    inner_class = "Shampoo"
    schema = Schema(
        [
            _lr(1e-3, 1e-4, 1e-2),
            HParam("momentum", float, 0.0, "momentum on the gradient", low=0.0, high=1.0,
                   high_open=True),
            *_weight_decay(decouple=False),
            _count("preconditioning_compute_steps", 1, "steps between inverse-root refreshes",
                   OPTIMIZER),
            _nonneg("matrix_eps", 1e-6, "initial ε·I of the factors"),
        ]
    )
    meta = OptimizerMeta(
        summary="Shampoo: Kronecker-factored AdaGrad (bridged from pytorch-optimizer)",
        paper="Gupta, Koren & Singer, Shampoo: Preconditioned Stochastic Tensor Optimization, "
        "ICML 2018, arXiv 1802.09568",
        conformance={"lr": 0.05},
        tags=("peer", "kronecker", "pytorch-optimizer"),
    )


class Kron(PeerOptimizer):
    r"""PSGD-Kron (Li 2018; Kron variant of psgd_jax): a learned Kronecker preconditioner.

    :math:`P = Q^\top Q`, :math:`Q = Q_1 \otimes \dots \otimes Q_k` (upper
    triangular or diagonal factors) is fitted online by a relative gradient
    step on :math:`\mathbb E[h^\top P h + v^\top P^{-1} v]` with random
    :math:`v \sim \mathcal N(0, I)` and :math:`h` the debiased momentum
    (the update is taken with probability ``pre_conditioner_update_probability``);
    :math:`\theta \leftarrow \theta - \alpha\,\mathrm{clip}_{\mathrm{RMS}\le 1.1}(P \hat m)`.
    The probes come from a private torch stream, the factor-balancing coin
    (probability ``balance_prob``) from a private NumPy stream seeded from
    ``torch.initial_seed()``; both are saved in ``curv_state``.

    Example:
        >>> Kron.uses_numpy_rng, Kron.schema["momentum"].default
        (True, 0.9)
    """

    name = "kron"
    inner_class = "Kron"
    uses_numpy_rng = True
    uses_torch_rng = True
    schema = Schema(
        [
            _lr(1e-3, 1e-4, 1e-2),
            HParam("momentum", float, 0.9, "momentum EMA coefficient", low=0.0, high=1.0,
                   high_open=True),
            _nonneg("weight_decay", 0.0, "weight decay (matrices only)"),
            HParam("weight_decouple", bool, True, "decoupled weight decay"),
            HParam("pre_conditioner_update_probability", float, None,
                   "probability of a preconditioner update (None: library's decaying schedule)",
                   low=0.0, high=1.0, low_open=True, optional=True, scope=OPTIMIZER),
            _count("max_size_triangular", 8192, "larger dimensions get a diagonal factor"),
            _count("min_ndim_triangular", 2, "tensors of lower order get diagonal factors"),
            HParam("memory_save_mode", str, None, "which dimensions get diagonal factors",
                   choices=("one_diag", "smart_one_diag", "all_diag"), optional=True),
            HParam("momentum_into_precondition_update", bool, True,
                   "fit P on the momentum (else on the raw gradient)"),
            HParam("balance_prob", float, 0.01, "probability of rebalancing the factors' norms",
                   low=0.0, high=1.0, scope=OPTIMIZER),
        ]
    )
    meta = OptimizerMeta(
        summary="PSGD-Kron: learned Kronecker preconditioner (bridged from pytorch-optimizer)",
        paper="Li, Preconditioned Stochastic Gradient Descent, IEEE TNNLS 2018, "
        "arXiv 1512.04202; Kron variant: E. Walters, psgd_jax",
        conformance={"lr": 0.02},
        tags=("peer", "kronecker", "pytorch-optimizer"),
    )


class AdaHessian(PeerOptimizer):
    r"""AdaHessian (Yao et al. 2021): Adam with a Hutchinson Hessian diagonal.

    :math:`D = z \odot (Hz)` (Rademacher :math:`z`, from a private torch stream,
    averaged over ``num_samples``; refreshed every ``update_period`` steps),
    :math:`m \leftarrow \beta_1 m + (1-\beta_1) g`,
    :math:`v \leftarrow \beta_2 v + (1-\beta_2) D^2`,
    :math:`\theta \leftarrow \theta - \alpha \frac{m/(1-\beta_1^t)}{(v/(1-\beta_2^t))^{k/2} + \epsilon}`
    with ``hessian_power`` :math:`k`. Needs ``backward(create_graph=True)``,
    declared in ``meta.closure_options``.

    Example:
        >>> AdaHessian.meta.closure_options
        ('create_graph',)
    """

    name = "adahessian"
    inner_class = "AdaHessian"
    uses_torch_rng = True
    schema = Schema(
        [
            _lr(0.1, 1e-2, 1.0),
            _betas((0.9, 0.999), "EMA coefficients (β₁, β₂) of g and D²"),
            *_weight_decay(decouple=True),
            HParam("hessian_power", float, 1.0, "exponent k of the denominator", low=0.0,
                   high=1.0, low_open=True),
            *_hutchinson(1, "rademacher"),
            _nonneg("eps", 1e-16, "denominator guard ε"),
        ]
    )
    meta = OptimizerMeta(
        summary="AdaHessian: Adam with a Hutchinson Hessian diagonal (bridged from "
        "pytorch-optimizer)",
        paper="Yao et al., ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning, "
        "AAAI 2021, arXiv 2006.00719",
        requires_closure=True,
        closure_options=("create_graph",),
        conformance={"lr": 0.3},
        tags=("peer", "hessian-diagonal", "pytorch-optimizer"),
    )


class SophiaH(PeerOptimizer):
    r"""Sophia-H (Liu et al. 2024): clipped Newton step with a Hutchinson Hessian diagonal.

    Every ``update_period`` steps :math:`h \leftarrow \beta_2 h + (1-\beta_2)\, z \odot (Hz)`
    (Gaussian :math:`z` from a private torch stream);
    :math:`m \leftarrow \beta_1 m + (1-\beta_1) g`,
    :math:`\theta \leftarrow \theta - \alpha\,\mathrm{clip}(m / \max(h, \epsilon), [-p, p])`.
    Needs ``backward(create_graph=True)``, declared in ``meta.closure_options``.

    Example:
        >>> SophiaH.schema["p"].doc
        'clipping threshold ρ of the per-coordinate step'
    """

    name = "sophiah"
    inner_class = "SophiaH"
    uses_torch_rng = True
    schema = Schema(
        [
            _lr(0.06, 1e-2, 0.3),
            _betas((0.96, 0.99), "EMA coefficients (β₁, β₂) of g and the Hessian diagonal"),
            *_weight_decay(decouple=True),
            _nonneg("p", 0.01, "clipping threshold ρ of the per-coordinate step"),
            *_hutchinson(10, "gaussian"),
            _nonneg("eps", 1e-12, "floor ε of the Hessian diagonal"),
        ]
    )
    meta = OptimizerMeta(
        summary="Sophia-H: clipped diagonal-Hessian Newton step (bridged from pytorch-optimizer)",
        paper="Liu et al., Sophia: A Scalable Stochastic Second-order Optimizer for Language "
        "Model Pre-training, ICLR 2024, arXiv 2305.14342",
        requires_closure=True,
        closure_options=("create_graph",),
        conformance={"lr": 0.1, "p": 1.0, "update_period": 2},
        tags=("peer", "hessian-diagonal", "pytorch-optimizer"),
    )


class Muon(PeerOptimizer):
    r"""Muon (Jordan et al. 2024): orthogonalised momentum for hidden weight matrices.

    For a weight matrix :math:`W \in \mathbb R^{a \times b}`:
    :math:`M \leftarrow \mu M + (1-\mu) G`; :math:`O = \mathrm{NS}_k(N)` with
    :math:`N = (1-\mu) G + \mu M` (Nesterov; else :math:`N = M`), ``ns_steps``
    quintic Newton-Schulz iterations, :math:`O \approx UV^\top` for
    :math:`N = U\Sigma V^\top`;
    :math:`W \leftarrow W - \alpha \sqrt{\max(1, a/b)}\, O`. Every other
    parameter (biases, gains, embeddings, and with ``muon_scope="hidden"``
    the output layer; see :mod:`curvlab_plugins.peers.muon_split`) is
    updated by AdamW with ``adamw_*``. LR schedulers act on ``lr``; the AdamW
    step size follows the same schedule:
    :math:`\alpha_{\text{AdamW}} = \text{adamw\_lr} \cdot \alpha / \alpha_0`
    with :math:`\alpha_0` the group's lr at construction (:math:`\alpha_0 = 0`:
    ``adamw_lr`` while :math:`\alpha > 0`, else 0).

    Example:
        >>> Muon.schema["muon_scope"].choices
        ('hidden', 'matrices')
    """

    name = "muon"
    inner_class = "Muon"
    schema = Schema(
        [
            _lr(0.02, 2e-3, 0.2),
            HParam("momentum", float, 0.95, "momentum μ", low=0.0, high=1.0, high_open=True),
            HParam("nesterov", bool, True, "Nesterov momentum"),
            _nonneg("weight_decay", 0.0, "decoupled weight decay of the Muon matrices"),
            _count("ns_steps", 5, "Newton-Schulz iterations"),
            HParam("use_adjusted_lr", bool, False,
                   "Moonlight scale 0.2·√max(a, b) instead of √max(1, a/b)"),
            _nonneg("adamw_lr", 3e-4, "AdamW step size of the fallback parameters (at lr₀)"),
            _betas((0.9, 0.95), "AdamW (β₁, β₂) of the fallback parameters", "adamw_betas"),
            _nonneg("adamw_wd", 0.0, "AdamW weight decay of the fallback parameters"),
            _nonneg("adamw_eps", 1e-10, "AdamW ε of the fallback parameters"),
            HParam("muon_scope", str, "hidden", "which matrices Muon updates (rest: AdamW)",
                   choices=SCOPES),
        ]
    )
    meta = OptimizerMeta(
        summary="Muon: Newton-Schulz orthogonalised momentum with AdamW fallback (bridged from "
        "pytorch-optimizer)",
        paper="Jordan et al., Muon: An optimizer for hidden layers in neural networks, 2024, "
        "kellerjordan.github.io/posts/muon",
        conformance={"lr": 0.05, "adamw_lr": 0.02, "muon_scope": "matrices"},
        tags=("peer", "orthogonal", "pytorch-optimizer"),
    )

    _MUON_KEYS = ("lr", "momentum", "nesterov", "weight_decay", "ns_steps", "use_adjusted_lr")

    def _inner_groups(self, index: int, group: dict[str, Any]) -> list[tuple[str, list[Tensor]]]:
        params = list(group["params"])
        mask = muon_mask(self.model, params, group["muon_scope"])
        return [
            ("muon", [p for p, m in zip(params, mask) if m]),
            ("adamw", [p for p, m in zip(params, mask) if not m]),
        ]

    def _translate(self, group, kind: str, index: int) -> dict[str, Any]:
        if kind == "muon":
            return {"use_muon": True, **{k: group[k] for k in self._MUON_KEYS}}
        return {
            "use_muon": False,
            "lr": group["adamw_lr"] * self._lr_scale(group, index),
            "betas": group["adamw_betas"],
            "eps": group["adamw_eps"],
            "weight_decay": group["adamw_wd"],
        }
