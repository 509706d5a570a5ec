"""Which layers a backend handles, and a clear error for those it does not.

Layer-wise curvature methods (K-FAC, FOOF, K-BFGS) handle a fixed set of
parametrised module types. :func:`find_layers` walks a model, returns the
supported layers by qualified name, and raises a :class:`ValueError` that
names the first offending module (type and path) otherwise.
:func:`conv_problem` says why a ``Conv2d`` is outside what the Kronecker
factors handle (grouped, string padding, a padding mode other than zeros).
Which optimizer *parameter* lies in which layer is
:mod:`curvlab.curvature.coverage`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["conv_problem", "describe_supported", "find_layers"]


def conv_problem(name: str, module: nn.Module) -> str | None:
    """Why a ``Conv2d`` cannot be unfolded into patches (``None``: it can, or it is no ``Conv2d``).

    The Kronecker factors of a convolution (Grosse & Martens 2016) use the
    unfolded input patches, which need ``groups=1``, numeric padding and
    ``padding_mode="zeros"``. Usable as ``check=`` of :func:`find_layers`.

    Example:
        >>> conv_problem("0", nn.Conv2d(2, 2, 3)) is None
        True
        >>> conv_problem("0", nn.Conv2d(2, 2, 3, groups=2))
        "Conv2d must have groups=1, numeric padding and padding_mode='zeros' (got groups=2, padding=(0, 0), padding_mode='zeros')"
    """
    if isinstance(module, nn.Conv2d) and (
        module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str)
    ):
        return (
            "Conv2d must have groups=1, numeric padding and padding_mode='zeros' "
            f"(got groups={module.groups}, padding={module.padding!r}, "
            f"padding_mode={module.padding_mode!r})"
        )
    return None


def describe_supported(supported: tuple[type[nn.Module], ...]) -> str:
    """Comma-separated type names, e.g. ``"Linear, Conv2d"``.

    Example:
        >>> describe_supported((nn.Linear, nn.Conv2d))
        'Linear, Conv2d'
    """
    return ", ".join(t.__name__ for t in supported)


def find_layers(
    model: nn.Module,
    supported: tuple[type[nn.Module], ...],
    *,
    who: str,
    check: Callable[[str, nn.Module], str | None] | None = None,
    allow_unsupported: bool = False,
) -> dict[str, nn.Module]:
    """Supported parametrised layers of ``model`` by qualified name.

    A module "has parameters" when it owns at least one parameter directly
    (``recurse=False``) that requires gradients.

    Args:
        model: The network.
        supported: Module types the backend handles.
        who: Backend name used in error messages.
        check: Extra per-layer test returning an error text (or ``None``),
            e.g. to reject grouped convolutions.
        allow_unsupported: Skip (instead of raising for) unsupported
            parametrised modules; the caller handles their parameters.

    Returns:
        ``{qualified_name: module}`` in ``model.named_modules()`` order.

    Raises:
        ValueError: a parametrised module is not supported (names it, its
            path and the supported types), ``check`` rejects a layer, or the
            model has no supported layer at all.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> list(find_layers(net, (nn.Linear,), who="demo"))
        ['0', '2']
        >>> find_layers(nn.Sequential(nn.BatchNorm1d(3)), (nn.Linear,), who="demo")
        Traceback (most recent call last):
        ...
        ValueError: demo supports Linear; got BatchNorm1d at model.0
    """
    layers: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        path = f"model.{name}" if name else "model"
        if not isinstance(module, supported):
            if allow_unsupported:
                continue
            raise ValueError(
                f"{who} supports {describe_supported(supported)}; "
                f"got {type(module).__name__} at {path}"
            )
        problem = check(name, module) if check is not None else None
        if problem:
            raise ValueError(f"{who}: {problem} at {path}")
        layers[name] = module
    if not layers and not allow_unsupported:
        raise ValueError(f"{who} found no supported layer ({describe_supported(supported)})")
    return layers
