"""A private NumPy random stream lent to library code that draws from ``np.random``.

PSGD-Kron in ``pytorch_optimizer`` decides whether to rebalance its
Kronecker factors with ``np.random.random() < balance_prob``, i.e. from
NumPy's *global* generator, which ``torch.manual_seed`` does not reset and
which ``state_dict`` cannot save. The bridge therefore keeps its own
Mersenne-Twister state (as tensors, so it travels in ``curv_state``) and
installs it as the global NumPy state only for the duration of the inner
step (:func:`lend_numpy_rng`); the caller's global state is put back
afterwards. Same seed ⇒ same draws; resume ⇒ the same continuation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

__all__ = ["decode_state", "encode_state", "lend_numpy_rng", "seeded_state"]


def encode_state(state: tuple[Any, ...]) -> dict[str, Any]:
    """``np.random.get_state()`` as a dict of a tensor and Python scalars.

    Args:
        state: ``('MT19937', keys[624] uint32, pos, has_gauss, cached_gaussian)``.

    Returns:
        ``{"keys": int64 tensor[624], "pos": int, "has_gauss": int, "cached_gaussian": float}``.

    Example:
        >>> enc = encode_state(np.random.RandomState(0).get_state())
        >>> enc["keys"].shape, enc["pos"]
        (torch.Size([624]), 624)
    """
    name, keys, pos, has_gauss, cached = state
    if name != "MT19937":
        raise ValueError(f"numpy RNG state must be 'MT19937', got {name!r}")
    return {
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def decode_state(enc: dict[str, Any]) -> tuple[Any, ...]:
    """Inverse of :func:`encode_state` (a tuple for ``np.random.set_state``).

    Example:
        >>> s = np.random.RandomState(3).get_state()
        >>> bool((decode_state(encode_state(s))[1] == s[1]).all())
        True
    """
    keys = enc["keys"].numpy().astype(np.uint32)
    return ("MT19937", keys, enc["pos"], enc["has_gauss"], enc["cached_gaussian"])


def seeded_state(seed: int) -> dict[str, Any]:
    """Encoded state of ``np.random.seed(seed)`` (seed taken modulo 2³²).

    Example:
        >>> np.random.seed(7); a = np.random.random()
        >>> with lend_numpy_rng(seeded_state(7)) as out:
        ...     b = np.random.random()
        >>> a == b
        True
    """
    return encode_state(np.random.RandomState(seed % 2**32).get_state())


@contextmanager
def lend_numpy_rng(enc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Install ``enc`` as NumPy's global state; yield a dict that receives the advanced state.

    On exit (also on error) the yielded dict's ``"state"`` entry holds the
    encoded state after the draws made inside the block, and the caller's
    global state is restored, so code outside is not affected.

    Args:
        enc: Encoded state (:func:`encode_state`); not modified.

    Yields:
        ``{"state": ...}`` filled in on exit; commit it only if the step is kept.

    Example:
        >>> before = np.random.get_state()[1].copy()
        >>> with lend_numpy_rng(seeded_state(1)) as out:
        ...     _ = np.random.random()
        >>> out["state"]["pos"], bool((np.random.get_state()[1] == before).all())
        (2, True)
    """
    saved = np.random.get_state()
    out: dict[str, Any] = {}
    np.random.set_state(decode_state(enc))
    try:
        yield out
    finally:
        out["state"] = encode_state(np.random.get_state())
        np.random.set_state(saved)
