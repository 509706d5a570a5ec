r"""One generic bridge from ``pytorch_optimizer`` optimizers to curvlab: :class:`PeerOptimizer`.

A bridged optimizer is a :class:`~curvlab.optimizer.CurvatureOptimizer`
that owns an *inner* ``pytorch_optimizer`` instance over the same
parameters. Per step :math:`t`:

1. the base class evaluates the closure (with ``create_graph=True`` when
   ``meta.closure_options`` asks for it) and skips the step if the loss or a
   gradient is not finite;
2. the outer ``param_groups`` (the source of truth, which LR schedulers
   and users edit) are copied into the inner groups (:meth:`PeerOptimizer._translate`);
3. parameters and inner state :math:`(\theta_t, s_t)` are snapshotted and
   ``inner.step()`` computes :math:`(\theta_{t+1}, s_{t+1})` from the
   gradients already in ``.grad``;
4. if any entry of :math:`\theta_{t+1}` or :math:`s_{t+1}` is NaN/Inf (or the
   library fails with a linear-algebra error or an overflowing scalar) the
   snapshot is put back and the step is counted as skipped.

The inner optimizer's complete state (per-parameter tensors, group
counters such as ``step``, and private random streams) is exported to
``curv_state["inner"]`` by :meth:`PeerOptimizer.state_dict` and restored
verbatim, so a resumed run is bitwise identical without restoring any
global generator: random draws the library makes from torch's global
generators (Hutchinson probes, PSGD's probe vectors) come from a private
torch stream (:func:`curvlab.curvature.rng.lend_rng`, seeded at
construction from the global generator), those from ``np.random`` from a
private NumPy stream (:mod:`curvlab_plugins.peers.numpy_rng`).

Scopes: a hyper-parameter the library keeps on the optimizer object (not
per group) is declared ``scope=OPTIMIZER`` and passed to the inner
constructor; the base class refuses per-group overrides of it. All others
are copied into the inner groups at every step.

``fixed_decay`` (decoupled weight decay "not scaled by lr" in the library)
follows the LR schedule here: the decay is :math:`w \cdot \alpha/\alpha_0`
(:math:`\alpha_0`: the group's lr at construction), the library's value at
the constructed lr, and no decay at ``lr = 0`` (a zero lr never moves a
weight, for every curvlab optimizer).

``pytorch_optimizer`` is imported only when an optimizer is built, so this
module imports without it.
"""

from __future__ import annotations

import importlib
from collections import defaultdict
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any, ClassVar

import torch
from torch import Tensor

from curvlab.curvature.finite import all_finite
from curvlab.curvature.rng import derive_seed, device_keys, lend_rng
from curvlab.hparams import GROUP
from curvlab.optimizer import CurvatureOptimizer, Evaluation, Skip, Step
from curvlab_plugins.peers.numpy_rng import lend_numpy_rng, seeded_state

__all__ = ["LIBRARY", "PeerOptimizer", "load_inner_class"]

#: Import name of the bridged library (the ``curvlab[peers]`` extra).
LIBRARY = "pytorch_optimizer"


def load_inner_class(attr: str, who: str) -> type[torch.optim.Optimizer]:
    """Import ``pytorch_optimizer.<attr>``.

    Args:
        attr: Class name in ``pytorch_optimizer`` (e.g. ``"SOAP"``).
        who: curvlab name for the error message.

    Returns:
        The optimizer class.

    Raises:
        ImportError: ``pytorch_optimizer`` is not installed (says what to
            install) or lacks ``attr`` (names the installed version).

    Example:
        >>> import importlib.util
        >>> if importlib.util.find_spec("pytorch_optimizer"):  # the optional extra
        ...     print(load_inner_class("SOAP", "soap").__name__)
        ... else:
        ...     print("SOAP")
        SOAP
    """
    try:
        module = importlib.import_module(LIBRARY)
    except ImportError as err:
        raise ImportError(
            f"{who} bridges {LIBRARY}.{attr}, which is not installed: "
            "pip install 'curvlab[peers]' (or pytorch-optimizer>=4.1)"
        ) from err
    cls = getattr(module, attr, None)
    if cls is None:
        version = getattr(module, "__version__", "?")
        raise ImportError(f"{who}: {LIBRARY} {version} has no {attr}; need pytorch-optimizer>=4.1")
    return cls


def _tensors(obj: Any) -> list[Tensor]:
    """Every tensor inside nested dicts/lists/tuples."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def _clone(obj: Any) -> Any:
    """Copy of nested dicts/lists/tuples with every tensor cloned (other leaves shared)."""
    if isinstance(obj, Tensor):
        return obj.clone()
    if isinstance(obj, Mapping):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_clone(v) for v in obj)
    return obj


class PeerOptimizer(CurvatureOptimizer):
    """Base class of the ``pytorch_optimizer`` bridges (see the module docstring).

    A subclass sets :attr:`name`, :attr:`schema` (hyper-parameter names are
    the library's keyword names), :attr:`meta` and :attr:`inner`; it
    overrides :meth:`_inner_groups` / :meth:`_translate` only when one outer
    group maps to several inner groups (Muon).

    Raises:
        ImportError: at construction, when ``pytorch_optimizer`` is missing.
        ValueError: a param group overrides a per-optimizer hyper-parameter.

    Example:
        >>> import importlib.util, torch, curvlab
        >>> if importlib.util.find_spec("pytorch_optimizer"):  # the optional extra
        ...     model = torch.nn.Linear(3, 2)
        ...     opt = curvlab.create("soap", model, lr=1e-2)
        ...     loss = opt.step(curvlab.closure(model, torch.nn.MSELoss(),
        ...                                     torch.randn(4, 3), torch.randn(4, 2)))
        ...     print(type(opt.inner).__module__)
        ... else:
        ...     print("pytorch_optimizer.optimizer.soap")
        pytorch_optimizer.optimizer.soap
    """

    #: Class name in ``pytorch_optimizer``.
    inner_class: ClassVar[str] = ""
    #: Keyword arguments always passed to the inner constructor.
    fixed: ClassVar[Mapping[str, Any]] = {}
    #: The library draws from NumPy's global RNG (lend it a private stream).
    uses_numpy_rng: ClassVar[bool] = False
    #: The library draws from torch's global generators (lend them a private stream).
    uses_torch_rng: ClassVar[bool] = False

    # ------------------------------------------------------------ structure
    def _inner_groups(self, index: int, group: dict[str, Any]) -> list[tuple[str, list[Tensor]]]:
        """Split outer group ``index`` into inner groups ``(kind, params)``; default: one."""
        return [("main", list(group["params"]))]

    def _lr_scale(self, group: Mapping[str, Any], index: int) -> float:
        r""":math:`\alpha/\alpha_0` of outer group ``index`` (:math:`\alpha_0 = 0`: 1 while :math:`\alpha > 0`)."""
        lr, base = group["lr"], self.curv_state["base_lr"][index]
        return lr / base if base > 0 else float(lr > 0)

    def _translate(self, group: Mapping[str, Any], kind: str, index: int) -> dict[str, Any]:
        """Inner group hyper-parameters of ``kind`` from the outer ``group``; default: same names.

        ``fixed_decay`` with decoupled decay: the decay follows the LR
        schedule (module docstring).
        """
        out = {k: group[k] for k in self.schema.scoped(GROUP)}
        if out.get("fixed_decay") and out.get("weight_decouple", True) and out.get("weight_decay"):
            out["weight_decay"] = out["weight_decay"] * self._lr_scale(group, index)
        return out

    def _setup(self) -> None:
        cls = load_inner_class(self.inner_class, self.name)
        self.curv_state["base_lr"] = [g["lr"] for g in self.param_groups]
        self._links: list[tuple[int, str]] = []
        inner_groups = []
        for index, group in enumerate(self.param_groups):
            for kind, params in self._inner_groups(index, group):
                if params:
                    self._links.append((index, kind))
                    inner_groups.append({"params": params, **self._translate(group, kind, index)})
        self.inner: torch.optim.Optimizer = cls(inner_groups, **self.optimizer_hparams, **self.fixed)
        if self.uses_numpy_rng:
            self.curv_state["numpy_rng"] = seeded_state(torch.initial_seed())
        if self.uses_torch_rng:
            self.curv_state["torch_seed"] = derive_seed()
            self.curv_state["torch_rng"] = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group to the outer optimizer and its inner groups to the inner one."""
        super().add_param_group(param_group)
        if not hasattr(self, "inner"):  # still inside __init__: _setup builds the inner optimizer
            return
        index = len(self.param_groups) - 1
        group = self.param_groups[index]
        self.curv_state["base_lr"].append(group["lr"])
        for kind, params in self._inner_groups(index, group):
            if params:
                self._links.append((index, kind))
                self.inner.add_param_group({"params": params, **self._translate(group, kind, index)})

    # ----------------------------------------------------------------- step
    def _sync(self) -> None:
        for (index, kind), inner_group in zip(self._links, self.inner.param_groups):
            inner_group.update(self._translate(self.param_groups[index], kind, index))

    def _inner_params(self) -> list[Tensor]:
        return [p for g in self.inner.param_groups for p in g["params"]]

    def _update(self, closure, evaluation: Evaluation) -> Step | Skip:
        needs_graph = "create_graph" in self.meta.closure_options
        if needs_graph and any(
            p.grad is not None and p.grad.grad_fn is None for p in self._inner_params()
        ):
            raise ValueError(
                f"{self.name} needs gradients with a graph (backward(create_graph=True)); "
                "pass a closure that accepts create_graph=..., e.g. curvlab.closure(...)"
            )
        self._sync()
        params = self._inner_params()
        saved_params = [p.detach().clone() for p in params]
        saved_state = {p: _clone(s) for p, s in self.inner.state.items()}
        saved_groups = [_clone({k: v for k, v in g.items() if k != "params"})
                        for g in self.inner.param_groups]
        numpy_rng = (lend_numpy_rng(self.curv_state["numpy_rng"]) if self.uses_numpy_rng
                     else nullcontext({}))
        torch_rng = (lend_rng(self.curv_state["torch_rng"], seed=self.curv_state["torch_seed"],
                              keys=device_keys(params))
                     if self.uses_torch_rng else nullcontext({}))
        error = None
        with numpy_rng as np_drawn, torch_rng as torch_drawn:
            try:
                self.inner.step()
            except torch.linalg.LinAlgError as err:  # e.g. Shampoo's SVD on an ill-conditioned factor
                error = f"{LIBRARY}.{self.inner_class} failed: {err}"
            except RuntimeError as err:  # a scalar the kernel cannot hold (e.g. a huge lr)
                if "without overflow" not in str(err):
                    raise
                error = f"{LIBRARY}.{self.inner_class} overflowed: {err}"
        if error is None and all_finite([*params, *_tensors(dict(self.inner.state))]):
            if "state" in np_drawn:
                self.curv_state["numpy_rng"] = np_drawn["state"]
            if "state" in torch_drawn:
                self.curv_state["torch_rng"] = torch_drawn["state"]
            return Step()
        with torch.no_grad():
            for p, old in zip(params, saved_params):
                p.copy_(old)
        self.inner.state = defaultdict(dict, saved_state)
        for g, old in zip(self.inner.param_groups, saved_groups):
            g.update(old)
        return Skip(error or f"{LIBRARY}.{self.inner_class} produced a non-finite update")

    # ---------------------------------------------------------- persistence
    def _export_inner(self) -> dict[str, Any]:
        index = {p: i for i, p in enumerate(self._inner_params())}
        return {
            "state": {index[p]: s for p, s in self.inner.state.items() if p in index},
            "groups": [{k: v for k, v in g.items() if k != "params"}
                       for g in self.inner.param_groups],
        }

    def state_dict(self) -> dict[str, Any]:
        """Base state dict, with the inner optimizer's complete state in ``curv_state["inner"]``."""
        self.curv_state["inner"] = self._export_inner()
        return super().state_dict()

    def _after_load(self) -> None:
        saved = self.curv_state.get("inner")
        if saved is None:
            raise ValueError(f"{self.name}: state dict lacks curv_state['inner'] (not a bridge state)")
        params = self._inner_params()
        if len(saved["groups"]) != len(self.inner.param_groups):
            raise ValueError(
                f"{self.name}: saved state has {len(saved['groups'])} inner groups, "
                f"this optimizer has {len(self.inner.param_groups)}"
            )
        self.inner.state = defaultdict(dict, {params[i]: s for i, s in saved["state"].items()})
        for g, old in zip(self.inner.param_groups, saved["groups"]):
            g.update(old)
