"""What the BackPACK-based K-FAC handles, checked once at construction.

BackPACK propagates Kronecker factors through a chain of modules it knows.
:func:`check_model` accepts models built from ``nn.Sequential`` containers
whose leaves are

* preconditioned layers: ``Linear``, ``Conv2d`` (``groups = 1``, numeric
  ``padding``, ``padding_mode="zeros"``);
* parameter-free modules BackPACK passes factors through: ``ReLU``,
  ``Sigmoid``, ``Tanh`` (not in place), ``Flatten``, ``MaxPool2d``,
  ``AvgPool2d``, ``ZeroPad2d``, ``Dropout``, ``Identity``;

and :func:`check_loss` accepts ``MSELoss``, ``CrossEntropyLoss`` (no class
weights, default ``ignore_index``, no label smoothing) and
``BCEWithLogitsLoss`` (no ``weight``/``pos_weight``; soft targets and many
outputs via :mod:`curvlab_plugins.kfac.backpack_bce`), each with reduction
``"mean"`` or ``"sum"``. Anything else raises a :class:`ValueError` naming
the module (its path) or the loss and what is supported. A parameter that
does not require gradients is ignored; there are no uncovered parameters.
"""

from __future__ import annotations

from torch import nn

from curvlab.curvature.layers import conv_problem, describe_supported, find_layers

__all__ = ["LAYERS", "LOSSES", "PASS_THROUGH", "check_loss", "check_model"]

LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
PASS_THROUGH: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.Sigmoid, nn.Tanh, nn.Flatten, nn.MaxPool2d, nn.AvgPool2d, nn.ZeroPad2d,
    nn.Dropout, nn.Identity,
)
LOSSES: tuple[type[nn.Module], ...] = (nn.MSELoss, nn.CrossEntropyLoss, nn.BCEWithLogitsLoss)


def check_model(model: nn.Module, who: str = "kfac") -> dict[str, nn.Module]:
    """The preconditioned layers of ``model``; raise if BackPACK's K-FAC cannot handle it.

    Args:
        model: The network.
        who: Backend name for messages.

    Returns:
        ``{qualified_name: layer}`` of the ``Linear``/``Conv2d`` layers.

    Raises:
        ValueError: a container other than ``nn.Sequential``, an unsupported
            module (e.g. ``BatchNorm2d``), an in-place activation or a grouped
            convolution; the message names its path.

    Example:
        >>> list(check_model(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))))
        ['0', '2']
        >>> check_model(nn.Sequential(nn.Linear(2, 3), nn.ReLU(inplace=True)))
        Traceback (most recent call last):
        ...
        ValueError: kfac: in-place ReLU at model.1 breaks BackPACK's hooks; use ReLU(inplace=False)
    """
    layers = find_layers(model, LAYERS, who=who, check=conv_problem)
    for name, module in model.named_modules():
        path = f"model.{name}" if name else "model"
        if next(module.children(), None) is not None:
            if not isinstance(module, nn.Sequential):
                raise ValueError(
                    f"{who} (BackPACK) supports nn.Sequential models; got container "
                    f"{type(module).__name__} at {path} (its forward is opaque to BackPACK)"
                )
            continue
        if isinstance(module, LAYERS):
            continue
        if not isinstance(module, PASS_THROUGH):
            raise ValueError(
                f"{who} supports {describe_supported(LAYERS)} layers and the parameter-free "
                f"modules {describe_supported(PASS_THROUGH)}; got {type(module).__name__} at {path}"
            )
        if getattr(module, "inplace", False):
            raise ValueError(
                f"{who}: in-place {type(module).__name__} at {path} breaks BackPACK's hooks; "
                f"use {type(module).__name__}(inplace=False)"
            )
    return layers


def check_loss(loss_fn: object, who: str = "kfac") -> None:
    """Raise unless ``loss_fn`` is a loss module K-FAC (BackPACK) supports.

    Raises:
        ValueError: other loss types or functions, ``reduction="none"``,
            class weights, ``ignore_index``, label smoothing, ``pos_weight``.

    Example:
        >>> check_loss(nn.CrossEntropyLoss())
        >>> check_loss(nn.L1Loss())
        Traceback (most recent call last):
        ...
        ValueError: kfac supports the losses MSELoss, CrossEntropyLoss, BCEWithLogitsLoss; got L1Loss
    """
    if not isinstance(loss_fn, LOSSES):
        raise ValueError(
            f"{who} supports the losses {describe_supported(LOSSES)}; got {type(loss_fn).__name__}"
        )
    name = type(loss_fn).__name__
    problems = []
    if loss_fn.reduction not in ("mean", "sum"):
        problems.append(f"reduction must be 'mean' or 'sum' (got {loss_fn.reduction!r})")
    if getattr(loss_fn, "weight", None) is not None:
        problems.append("weight must be None")
    if getattr(loss_fn, "pos_weight", None) is not None:
        problems.append("pos_weight must be None")
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        if loss_fn.ignore_index != -100:
            problems.append(f"ignore_index must be -100 (got {loss_fn.ignore_index})")
        if loss_fn.label_smoothing != 0:
            problems.append(f"label_smoothing must be 0 (got {loss_fn.label_smoothing})")
    if problems:
        raise ValueError(f"{who}: unsupported {name}: " + "; ".join(problems))
