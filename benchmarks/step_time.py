"""Step time of each optimizer against SGD and against its own compute floor, measured in one run.

For every size (a harness problem at a batch size), every optimizer is built
through the public API (``curvlab.create``) on its own copy of the model and
steps with ``curvlab.closure`` on the problem's seeded batches. Each round,
every optimizer runs one timed block (``--steps`` steps, rounded up to a
whole number of the optimizer's schedule period so periodic work such as
K-FAC's inverses is amortised exactly), and the machine's matrix-product
FLOP rate is measured too; rounds are interleaved so that background load
hits every contestant alike, and the report uses medians over rounds.

Columns: ms/step; × SGD (wall clock); CPU × SGD (the process's CPU time,
less disturbed by a busy neighbour); the computed floor (``curvlab.harness.floor``: the
FLOPs of the method's passes, factor statistics, inverses and
preconditioner product from the layer shapes and the optimizer's schedule
hyper-parameters, at the FLOP rate measured in the run) in ms and × SGD's
floor; measured / floor; peak memory of the steps above the loaded model
and data (measured in a fresh process per optimizer: resident-set high-water
mark on the CPU, ``torch.cuda.max_memory_allocated`` on CUDA) × SGD's;
skipped steps; the mean loss of the first and the last five steps. A row
with a skipped step or a loss that did not decrease is marked invalid: it
is cheap for the wrong reason. An optimizer that refuses the model prints
its refusal as the row.

Usage::

    python benchmarks/step_time.py --sizes ae1000 --optimizers sgd kfac foof kbfgs kbfgsl
    python benchmarks/step_time.py --sizes digits-mlp ae500 ae1000 transformer --optimizers all
    python benchmarks/step_time.py --sizes digits-mlp --optimizers groupednewton \\
        --hparams groupednewton:period=10 --steps 100 --rounds 5
    python benchmarks/step_time.py --device cuda --sizes ae1000     # on a CUDA machine

Sizes: ``digits-mlp`` (64-128-64-10, batch 128), ``ae500`` / ``ae1000``
(Fashion-MNIST auto-encoder 784-1000-500-250-30 mirrored, batch 500 / 1000),
``transformer`` (the byte-level transformer, batch 32), or any harness
problem as ``NAME`` or ``NAME@BATCH``. The targets of issue 21 and the
measured tables are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

import curvlab
from curvlab.harness.floor import Floor, matmul_rate, model_cost, step_floor
from curvlab.harness.problems import BatchStream, load_problem

#: Named sizes: (problem, batch size or None for the problem's own).
SIZES = {
    "digits-mlp": ("digits-mlp", None),
    "ae500": ("fashion-autoencoder", 500),
    "ae1000": ("fashion-autoencoder", 1000),
    "transformer": ("text-transformer", None),
}
DEFAULT_SIZES = ["digits-mlp", "ae1000"]
DEFAULT_OPTIMIZERS = ["sgd", "adam", "kfac", "foof", "kbfgs", "kbfgsl", "groupednewton"]
#: Hyper-parameters the benchmark uses unless ``--hparams`` says otherwise (issue 21's runs:
#: K-BFGS at lr 0.1 on the auto-encoder; at the default 0.3 it skips steps there).
SIZE_HPARAMS = {
    "fashion-autoencoder": {"kbfgs": {"lr": 0.1}, "kbfgsl": {"lr": 0.1}},
}
LOSS_WINDOW = 5


def parse_hparams(items: list[str]) -> dict[str, dict[str, Any]]:
    """``name:key=value,key=value`` → {name: {key: value}} (numbers parsed, else strings)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, _, rest = item.partition(":")
        for pair in filter(None, rest.split(",")):
            key, _, value = pair.partition("=")
            try:
                parsed: object = int(value) if value.isdigit() else float(value)
            except ValueError:
                parsed = {"true": True, "false": False, "none": None}.get(value.lower(), value)
            out.setdefault(curvlab.normalize(name), {})[key] = parsed
    return out


def resolve_size(size: str) -> tuple[str, int | None]:
    """A size name, or ``PROBLEM[@BATCH]``, as (problem, batch size or None)."""
    if size in SIZES:
        return SIZES[size]
    name, _, batch = size.partition("@")
    return name, (int(batch) if batch else None)


def period(name: str, hp: dict[str, Any]) -> int:
    """Steps after which the optimizer's schedule repeats (1: every step alike)."""
    if name == "kfac":
        return math.lcm(hp["factor_every"], hp["inverse_every"])
    if name == "foof":
        return hp["inverse_every"]
    if name == "groupednewton":
        return hp["period"]
    if name == "soap":
        return hp["precondition_frequency"]
    if name in ("sophiah", "adahessian"):
        return hp["update_period"]
    if name == "shampoo":
        return hp["preconditioning_compute_steps"]
    return 1


def sync(device: str) -> None:
    """Wait for the device's queued work (timing on CUDA)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Contestant:
    """One optimizer on one problem, with its own model copy and batch stream."""

    def __init__(self, name: str, problem, data, hparams: dict[str, Any], device: str,
                 seed: int = 0) -> None:
        self.name, self.device = name, device
        self.model = problem.init_model(seed).to(device)
        self.loss_fn = problem.loss_fn()
        x, y = data.x_train.to(device), data.y_train.to(device)
        self.stream = BatchStream(x, y, problem.batch_size, seed)
        self.fresh = BatchStream(x, y, problem.batch_size, seed + 1)
        self.opt = curvlab.create(name, self.model, self.loss_fn, **hparams)
        self.hparams = {k: v for k, v in self.opt.param_groups[0].items() if k != "params"}
        self.period = period(name, self.hparams)
        self.losses: list[float] = []
        self.cpu_times: list[float] = []
        self.steps = 0

    def run(self, steps: int) -> float:
        """Seconds per step over ``steps`` steps (losses recorded)."""
        losses = []
        sync(self.device)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            x, y = next(self.stream)
            losses.append(self.opt.step(curvlab.closure(self.model, self.loss_fn, x, y,
                                                        batches=self.fresh)))
        sync(self.device)
        elapsed = time.perf_counter() - start
        self.cpu_times.append((time.process_time() - cpu) / steps)
        self.losses += torch.stack(losses).detach().double().cpu().tolist()
        self.steps += steps
        return elapsed / steps

    @property
    def skipped(self) -> int:
        """Skipped steps so far."""
        return int(self.opt.stats.get("skipped_steps", 0))


def validity(c: Contestant) -> str:
    """``""`` for a healthy run, else why the row is invalid."""
    k = max(1, min(LOSS_WINDOW, len(c.losses) // 2))
    first, last = statistics.fmean(c.losses[:k]), statistics.fmean(c.losses[-k:])
    reasons = []
    if c.skipped:
        reasons.append(f"{c.skipped} skipped steps")
    if not (math.isfinite(last) and last < first):
        reasons.append("loss not decreasing")
    return "; ".join(reasons)


def probe_memory(size: str, name: str, hparams: dict[str, Any], device: str, threads: int,
                 steps: int) -> float | str:
    """Peak bytes of ``steps`` steps above the loaded model and data, in a fresh process."""
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-probe", size, name,
           "--device", device, "--threads", str(threads), "--probe-steps", str(steps),
           "--probe-hparams", json.dumps(hparams)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True)
        return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"])
    except (subprocess.SubprocessError, ValueError, KeyError, IndexError) as err:
        return f"probe failed: {str(err)[:80]}"


def memory_probe_main(size: str, name: str, hparams: dict[str, Any], device: str,
                      steps: int) -> None:
    """Print ``{"peak_bytes": ...}``: the high-water mark of ``steps`` steps above the set-up."""
    problem_name, batch = resolve_size(size)
    problem = load_problem(problem_name, **({"batch_size": batch} if batch else {}))
    c = Contestant(name, problem, problem.data(), hparams, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        c.run(steps)
        peak = torch.cuda.max_memory_allocated() - base
    else:
        def status(key: str) -> int:
            with open("/proc/self/status") as fh:
                line = next(ln for ln in fh if ln.startswith(key + ":"))
            return int(line.split()[1]) * 1024

        base = status("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS
            fh.write("5")
        c.run(steps)
        peak = status("VmHWM") - base
    print(json.dumps({"peak_bytes": peak}))


def bench_size(size: str, optimizers: list[str], hparams: dict[str, dict[str, Any]], args
               ) -> list[dict[str, Any]]:
    """Interleaved timing of every optimizer on one size; one row dict per optimizer."""
    problem_name, batch = resolve_size(size)
    problem = load_problem(problem_name, **({"batch_size": batch} if batch else {}))
    data = problem.data()
    defaults = SIZE_HPARAMS.get(problem.name, {})
    contestants: dict[str, Contestant] = {}
    refused: dict[str, str] = {}
    used: dict[str, dict[str, Any]] = {}
    for name in optimizers:
        hp = {**defaults.get(name, {}), **hparams.get(name, {})}
        used[name] = hp
        try:
            contestants[name] = Contestant(name, problem, data, hp, args.device)
        except ValueError as err:  # an unsupported layer / loss / size: the refusal is the row
            refused[name] = " ".join(str(err).split())[:160]
    sgd = contestants["sgd"]
    x, y = next(BatchStream(data.x_train, data.y_train, problem.batch_size, 0))
    cost = model_cost(sgd.model, sgd.loss_fn, x.to(args.device), y.to(args.device))
    for name, c in list(contestants.items()):
        try:
            c.run(args.warmup)
        except ValueError as err:  # refused at the first step (e.g. natgrad's max_columns)
            refused[name] = " ".join(str(err).split())[:160]
            del contestants[name]
        c.cpu_times.clear()
    blocks = {n: -(-max(args.steps, c.period) // c.period) * c.period
              for n, c in contestants.items()}
    times: dict[str, list[float]] = {n: [] for n in contestants}
    rates: list[float] = []
    for i in range(args.rounds):
        rates.append(matmul_rate(1024, device=args.device))
        for name, c in contestants.items():
            times[name].append(c.run(blocks[name]))
            print(f"[{size} round {i + 1}/{args.rounds}] {name}: {1e3 * times[name][-1]:.1f} ms/step",
                  file=sys.stderr, flush=True)
    rate = statistics.median(rates)
    med = {n: statistics.median(t) for n, t in times.items()}
    cpu = {n: statistics.median(c.cpu_times) for n, c in contestants.items()}
    floors: dict[str, Floor | str] = {}
    for name, c in contestants.items():
        try:
            floors[name] = step_floor(name, cost, c.hparams,
                                      horizon=(args.warmup, c.steps))
        except KeyError as err:
            floors[name] = str(err)
    memory: dict[str, float | str] = {}
    if args.memory:
        for name in contestants:
            memory[name] = probe_memory(size, name, used[name], args.device, args.threads,
                                        args.probe_steps)
    rows = []
    sgd_floor = floors["sgd"]
    for name, c in contestants.items():
        f = floors[name]
        ok_floor = isinstance(f, Floor)
        mem, mem_sgd = memory.get(name), memory.get("sgd")
        rows.append({
            "size": size, "problem": problem_name, "batch": problem.batch_size,
            "optimizer": name, "ms_per_step": f"{1e3 * med[name]:.4g}",
            "ratio_vs_sgd": f"{med[name] / med['sgd']:.4g}",
            "cpu_ms_per_step": f"{1e3 * cpu[name]:.4g}",
            "cpu_ratio_vs_sgd": f"{cpu[name] / cpu['sgd']:.4g}",
            "floor_ms": f"{1e3 * f.seconds(rate):.4g}" if ok_floor else "",
            "floor_vs_sgd_floor": f"{f.total / sgd_floor.total:.4g}" if ok_floor else "",
            "measured_vs_floor": f"{med[name] / f.seconds(rate):.4g}" if ok_floor else "",
            "floor_passes": f"{f.passes / sgd_floor.total:.3g}" if ok_floor else "",
            "floor_statistics": f"{f.statistics / sgd_floor.total:.3g}" if ok_floor else "",
            "floor_inverse": f"{f.inverse / sgd_floor.total:.3g}" if ok_floor else "",
            "floor_precondition": f"{f.precondition / sgd_floor.total:.3g}" if ok_floor else "",
            "peak_mb": f"{mem / 2**20:.4g}" if isinstance(mem, float) else (mem or ""),
            "peak_vs_sgd": (f"{mem / mem_sgd:.3g}" if isinstance(mem, float)
                            and isinstance(mem_sgd, float) and mem_sgd > 0 else ""),
            "skipped_steps": c.skipped, "steps": c.steps,
            "loss_first": f"{statistics.fmean(c.losses[:LOSS_WINDOW]):.5g}",
            "loss_last": f"{statistics.fmean(c.losses[-LOSS_WINDOW:]):.5g}",
            "invalid": validity(c), "block": blocks[name], "gflops": f"{rate / 1e9:.4g}",
            "hparams": json.dumps(used[name]) if used[name] else "", "unsupported": "",
        })
    for name, why in refused.items():
        rows.append({"size": size, "problem": problem_name, "batch": problem.batch_size,
                     "optimizer": name, "unsupported": why,
                     "hparams": json.dumps(used[name]) if used[name] else ""})
    return rows


HEADER = ("| size | optimizer | ms/step | × SGD | CPU × SGD | floor ms | floor × SGD floor | measured / floor "
          "| peak mem × SGD | skipped | loss first → last | valid |")


def print_row(r: dict[str, Any]) -> None:
    """One markdown row."""
    if r.get("unsupported"):
        print(f"| {r['size']} | {r['optimizer']} | refused: {r['unsupported']} "
              "| | | | | | | | | |")
        return
    mem = r["peak_vs_sgd"] or r["peak_mb"] or "–"
    print(f"| {r['size']} | {r['optimizer']} | {r['ms_per_step']} | {r['ratio_vs_sgd']} | "
          f"{r['cpu_ratio_vs_sgd']} | {r['floor_ms'] or '–'} | {r['floor_vs_sgd_floor'] or '–'} | "
          f"{r['measured_vs_floor'] or '–'} | {mem} | {r['skipped_steps']}/{r['steps']} | "
          f"{r['loss_first']} → {r['loss_last']} | {'INVALID: ' + r['invalid'] if r['invalid'] else 'yes'} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", "--problems", nargs="+", default=DEFAULT_SIZES,
                        help=f"{', '.join(SIZES)} or PROBLEM[@BATCH]")
    parser.add_argument("--optimizers", nargs="+", default=DEFAULT_OPTIMIZERS,
                        help="registry names, or 'all' (every registered backend and peer)")
    parser.add_argument("--hparams", nargs="*", default=[], help="name:key=value,...")
    parser.add_argument("--steps", "--block", type=int, default=20,
                        help="steps per timed block (rounded up to whole schedule periods)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the peak-memory probes (one fresh process per optimizer)")
    parser.add_argument("--probe-steps", type=int, default=3,
                        help="steps of a memory probe (step 0 computes every periodic quantity)")
    parser.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    parser.add_argument("--memory-probe", nargs=2, metavar=("SIZE", "OPTIMIZER"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--probe-hparams", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.memory_probe:
        memory_probe_main(*args.memory_probe, json.loads(args.probe_hparams), args.device,
                          args.probe_steps)
        return
    names = [curvlab.normalize(n) for n in args.optimizers]
    if names == ["all"]:
        names = curvlab.available()
    if "sgd" in names:
        names.remove("sgd")
    names.insert(0, "sgd")
    hparams = parse_hparams(args.hparams)
    print(f"torch {torch.__version__}, device {args.device}, {args.threads} thread(s), "
          f">= {args.steps} steps per block, {args.rounds} interleaved rounds (median), "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print(HEADER)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    rows = []
    for size in args.sizes:
        size_rows = bench_size(size, names, hparams, args)
        for r in size_rows:
            print_row(r)
        rows += size_rows
        sys.stdout.flush()
    print("\nfloor split (× SGD's floor): passes / statistics / inverse / precondition; "
          "matmul GFLOP/s")
    for r in rows:
        if r.get("floor_passes"):
            print(f"  {r['size']:12s} {r['optimizer']:14s} {r['floor_passes']} / "
                  f"{r['floor_statistics']} / {r['floor_inverse']} / {r['floor_precondition']}"
                  f"   {r['gflops']}")
    if args.csv:
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
