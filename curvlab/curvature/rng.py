r"""Private random streams for code that draws from torch's global generators.

Library code (BackPACK's Monte-Carlo targets, pytorch-optimizer's
Hutchinson probes and PSGD's probe vectors) draws from torch's *global*
generators, which ``state_dict`` cannot save and which the user's own code
(dropout, data order) advances too. :func:`lend_rng` runs such code with
the default generators of the devices involved set to a private state,
puts the caller's global state back afterwards (``torch.random.fork_rng``)
and hands out the advanced private state, which the optimizer keeps in its
``curv_state``: a resumed run draws exactly the same numbers, and the global
stream is untouched. :func:`derive_seed` seeds a new private stream from the
global generator, so ``torch.manual_seed`` before construction fixes it and
two optimizers built one after the other get different streams.

States are ``{device key: ByteTensor}`` with keys ``"cpu"`` and
``"cuda:<index>"`` (other device types are not forked).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

__all__ = ["derive_seed", "device_keys", "lend_rng"]


def derive_seed() -> int:
    """A 62-bit seed drawn from torch's global CPU generator (one draw).

    Example:
        >>> _ = torch.manual_seed(0); a = derive_seed()
        >>> _ = torch.manual_seed(0); a == derive_seed()
        True
    """
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


def device_keys(tensors: Iterable[Tensor]) -> list[str]:
    """Sorted generator keys (``"cpu"``, ``"cuda:i"``) of the tensors' devices; ``"cpu"`` always.

    Example:
        >>> device_keys([torch.ones(1)])
        ['cpu']
    """
    keys = {"cpu"}
    for t in tensors:
        if t.device.type == "cuda":
            index = t.device.index if t.device.index is not None else torch.cuda.current_device()
            keys.add(f"cuda:{index}")
    return sorted(keys)


def _seed(key: str, seed: int) -> None:
    if key == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        with torch.cuda.device(int(key.split(":")[1])):
            torch.cuda.manual_seed(seed)


def _set(key: str, state: Tensor) -> None:
    if key == "cpu":
        torch.set_rng_state(state)
    else:
        torch.cuda.set_rng_state(state, int(key.split(":")[1]))


def _get(key: str) -> Tensor:
    return torch.get_rng_state() if key == "cpu" else torch.cuda.get_rng_state(int(key.split(":")[1]))


@contextmanager
def lend_rng(
    state: Mapping[str, Tensor] | None, *, seed: int, keys: Iterable[str] = ("cpu",)
) -> Iterator[dict[str, Any]]:
    """Run the block with the global generators of ``keys`` set to a private stream.

    Args:
        state: Private states by device key (``None``, or a key missing:
            start that device's stream from ``seed``); not modified.
        seed: Seed of streams that have no state yet.
        keys: Device keys whose generators the block may draw from
            (:func:`device_keys`).

    Yields:
        A dict whose ``"state"`` entry, on exit (also on error), holds the
        advanced private states; commit it only if the step is kept.

    Example:
        >>> _ = torch.manual_seed(5); before = torch.get_rng_state()
        >>> with lend_rng(None, seed=1) as out:
        ...     a = torch.rand(2)
        >>> with lend_rng(None, seed=1):
        ...     b = torch.rand(2)
        >>> torch.equal(a, b), torch.equal(torch.get_rng_state(), before)
        (True, True)
        >>> with lend_rng(out["state"], seed=1):   # continues the stream
        ...     c = torch.rand(2)
        >>> torch.equal(a, c)
        False
    """
    keys = sorted(set(keys) | {"cpu"})
    cuda = [int(k.split(":")[1]) for k in keys if k.startswith("cuda:")]
    out: dict[str, Any] = {}
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        for key in keys:
            saved = None if state is None else state.get(key)
            if saved is None:
                _seed(key, seed)
            else:
                _set(key, saved)
        try:
            yield out
        finally:
            out["state"] = {key: _get(key) for key in keys}
