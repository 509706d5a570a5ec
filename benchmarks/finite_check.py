"""Time the candidate NaN/Inf checks (and the guarded descent step) on typical parameter lists.

The lists are the gradients of the harness models (digits MLP, CNN,
auto-encoder), 50 matrices 256×256 (a wider network) and 200 small vectors
(many biases). Each cell is the best of 5 repeats of 200 calls, in µs per
call, on one thread. ``curvlab.curvature.finite.all_finite`` is the fused
2-norm candidate plus its bookkeeping (sparse values, dtypes, devices, and
an exact entry-wise re-check of a tensor whose norm overflows).

Usage::

    python benchmarks/finite_check.py
"""

from __future__ import annotations

import math
import timeit

import torch

from curvlab.curvature.descent import descend_
from curvlab.curvature.finite import all_finite
from curvlab.harness.problems import load_problem

CANDIDATES = {
    "stack(isfinite(t).all())": lambda ts: bool(torch.stack([torch.isfinite(t).all() for t in ts]).all()),
    "_foreach_norm(ts, inf)": lambda ts: bool(
        torch.isfinite(torch.stack(torch._foreach_norm(ts, math.inf))).all()),
    "aminmax per tensor": lambda ts: bool(
        torch.isfinite(torch.cat([torch.stack(torch.aminmax(t)) for t in ts])).all()),
    "_foreach_norm(ts, 2)": lambda ts: bool(torch.isfinite(torch.stack(torch._foreach_norm(ts, 2))).all()),
    "isfinite(cat(ts)).all()": lambda ts: bool(torch.isfinite(torch.cat([t.reshape(-1) for t in ts])).all()),
    "stack(t.sum())": lambda ts: bool(torch.isfinite(torch.stack([t.sum() for t in ts])).all()),
    "all_finite": all_finite,
}


def _lists() -> dict[str, list[torch.Tensor]]:
    out = {}
    for name in ("digits-mlp", "digits-cnn", "digits-autoencoder"):
        model = load_problem(name).init_model(0)
        out[name] = [torch.randn_like(p) for p in model.parameters()]
    out["50 × (256, 256)"] = [torch.randn(256, 256) for _ in range(50)]
    out["200 × (64,)"] = [torch.randn(64) for _ in range(200)]
    return out


def _time(fn, n: int = 200) -> float:
    return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6


def main() -> None:
    torch.set_num_threads(1)
    lists = _lists()
    print(f"torch {torch.__version__}, 1 thread, µs per call (best of 5 × 200)\n")
    print("| list | tensors | entries | " + " | ".join(CANDIDATES) + " |")
    print("|---|---:|---:|" + "---:|" * len(CANDIDATES))
    for name, ts in lists.items():
        cells = [f"{_time(lambda f=f, ts=ts: f(ts)):.1f}" for f in CANDIDATES.values()]
        print(f"| {name} | {len(ts)} | {sum(t.numel() for t in ts)} | " + " | ".join(cells) + " |")
    print("\nguarded descent θ ← θ − α s (norm bound, then in place) vs the bare in-place add:\n")
    print("| list | in-place `_foreach_add_` | `descend_` |")
    print("|---|---:|---:|")
    for name, ts in lists.items():
        params = [t.clone() for t in ts]
        lrs = [1e-12] * len(ts)
        inplace = _time(lambda params=params, ts=ts: torch._foreach_add_(params, ts, alpha=-1e-12))
        guarded = _time(lambda params=params, ts=ts, lrs=lrs: descend_(params, ts, lrs))
        print(f"| {name} | {inplace:.1f} | {guarded:.1f} |")


if __name__ == "__main__":
    main()
