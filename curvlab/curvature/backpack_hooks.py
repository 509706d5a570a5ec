r"""BackPACK's hooks, installed only for the passes that compute Kronecker factors.

``backpack.extend(module)`` registers, for good, a forward hook that stores
every module's input/output and a *full* backward hook that runs the active
extensions. A full backward hook costs on every pass, even under
``backpack.disable()`` and with no extension active: each forward wraps the
module's inputs and outputs in autograd ``BackwardHookFunction`` nodes and
each backward calls into BackPACK for every module (the measured cost is in
``docs/backends/kfac.rst``).

K-FAC needs BackPACK only on factor steps (every ``factor_every`` steps), so
:class:`BackpackHooks` installs the same two hooks that ``extend`` installs
(:func:`backpack.hook_store_io`, :func:`backpack.hook_run_extensions`) on
entry and removes them on exit; in between, ``with backpack(ext):`` works as
on an extended model. All other passes run on the untouched model at plain
PyTorch speed, and the user's model is left as it was given. Modules the
user already extended (BackPACK's ``_backpack_extend`` flag) keep their own
hooks and get no second set.
"""

from __future__ import annotations

from types import TracebackType

from backpack import hook_run_extensions, hook_store_io, memory_cleanup
from backpack.utils.module_classification import is_no_op
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["BackpackHooks"]


class BackpackHooks:
    """Context manager: BackPACK's forward/backward hooks on ``modules`` for the ``with`` block.

    Args:
        modules: Roots (e.g. the model and the loss module); every non-container
            submodule gets the hooks ``backpack.extend`` would give it.

    Example:
        >>> import torch
        >>> from backpack import backpack
        >>> from backpack.extensions import KFLR
        >>> model, loss_fn = nn.Sequential(nn.Linear(3, 2)), nn.MSELoss()
        >>> with BackpackHooks(model, loss_fn), backpack(KFLR()):
        ...     loss_fn(model(torch.randn(4, 3)), torch.randn(4, 2)).backward()
        >>> [tuple(f.shape) for f in model[0].weight.kflr]
        [(2, 2), (3, 3)]
        >>> len(model[0]._backward_hooks), len(model[0]._forward_hooks)  # removed again
        (0, 0)
    """

    def __init__(self, *modules: nn.Module) -> None:
        self.targets = [
            m for root in modules for m in root.modules()
            if not is_no_op(m) and not getattr(m, "_backpack_extend", False)
        ]
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> BackpackHooks:
        for m in self.targets:
            self._handles.append(m.register_forward_hook(hook_store_io))
            self._handles.append(m.register_full_backward_hook(hook_run_extensions))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for m in self.targets:  # inputs/outputs of modules the backward did not reach
            memory_cleanup(m)
