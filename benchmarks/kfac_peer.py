"""K-FAC's factor computation against curvlinops' ``KFACLinearOperator``: time, and agreement of the factors.

On the same model, batch and loss, for each case: the time of curvlinops'
``compute_kronecker_factors()`` (one forward, one backward of the sampled or
exact loss with its hooks) against curvlab's K-FAC factor step through the
public API (``curvlab.create("kfac", ..., factor_every=1)`` stepping with
``lr=0``: the closure with BackPACK's extension, the factors' EMA and the
preconditioned direction), and the extra time of that factor step over a
K-FAC step without factors (``factor_every`` huge, same ``lr=0``); medians
of interleaved rounds. Agreement: for every weight, the relative Frobenius
error of the input factor ``A`` (deterministic) and of the Kronecker
product ``G ⊗ A`` (the scale split between the factors is a convention;
the product is what preconditions), computed without forming it:
``‖G₁⊗A₁ − G₂⊗A₂‖² = ‖G₁‖²‖A₁‖² + ‖G₂‖²‖A₂‖² − 2⟨G₁,G₂⟩⟨A₁,A₂⟩``.
With ``exact`` (KFLR / curvlinops ``type-2``) the factors must agree to
rounding; with ``mc`` the two libraries draw different samples, so ``G``
agrees up to Monte-Carlo noise that shrinks with ``--mc-samples``.

Usage::

    python benchmarks/kfac_peer.py                          # digits MLP exact + mc, AE batch 1000 mc
    python benchmarks/kfac_peer.py --cases ae1000-mc --mc-samples 1 8 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from curvlinops import KFACLinearOperator

import curvlab
from curvlab.harness.problems import BatchStream, load_problem

CASES = {
    "digits-exact": ("digits-mlp", None, "exact"),
    "digits-mc": ("digits-mlp", None, "mc"),
    "ae1000-mc": ("fashion-autoencoder", 1000, "mc"),
}


def kron_error(G1, A1, G2, A2) -> float:
    """``‖G₁⊗A₁ − G₂⊗A₂‖_F / ‖G₂⊗A₂‖_F`` in float64 without forming the products."""
    G1, A1, G2, A2 = (t.double() for t in (G1, A1, G2, A2))
    n1 = G1.square().sum() * A1.square().sum()
    n2 = G2.square().sum() * A2.square().sum()
    cross = (G1 * G2).sum() * (A1 * A2).sum()
    return float((n1 + n2 - 2 * cross).clamp_min(0).sqrt() / n2.sqrt())


def timed(fn) -> float:
    """Seconds of one call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_case(case: str, mc_samples: int, rounds: int) -> None:
    """Print one case's timing and agreement rows."""
    problem_name, batch, fisher = CASES[case]
    problem = load_problem(problem_name, **({"batch_size": batch} if batch else {}))
    data = problem.data()
    x, y = next(BatchStream(data.x_train, data.y_train, problem.batch_size, 0))
    model, loss_fn = problem.init_model(0), problem.loss_fn()
    params = [p for p in model.parameters() if p.requires_grad]
    peer = KFACLinearOperator(model, loss_fn, params, [(x, y)], check_deterministic=False,
                              fisher_type="type-2" if fisher == "exact" else "mc",
                              mc_samples=mc_samples)
    common = {"lr": 0.0, "weight_decay": 0.0, "fisher_type": fisher, "kl_clip": None,
              **({"mc_samples": mc_samples} if fisher == "mc" else {})}
    with_factors = curvlab.create("kfac", model, loss_fn, factor_every=1, inverse_every=10**9,
                                  **common)
    without = curvlab.create("kfac", model, loss_fn, factor_every=10**9, inverse_every=10**9,
                             **common)

    def step(opt) -> None:
        opt.step(curvlab.closure(model, loss_fn, x, y))

    step(with_factors)  # first steps: factors and inverses (lr 0: the model never moves)
    step(without)
    ours = with_factors.curv_state["blocks"]
    peer.compute_kronecker_factors()
    state = peer.state_dict()  # copied: a later call adds into the same tensors
    state = {key: {k: v.clone() for k, v in state[key].items()}
             for key in ("input_covariances", "gradient_covariances")}
    t_peer, t_ours, t_plain = [], [], []
    for _ in range(rounds):
        t_peer.append(timed(peer.compute_kronecker_factors))
        t_ours.append(timed(lambda: step(with_factors)))
        t_plain.append(timed(lambda: step(without)))
    med = {k: 1e3 * statistics.median(v) for k, v in
           (("peer", t_peer), ("ours", t_ours), ("plain", t_plain))}
    A_err, K_err = [], []
    for name, block in ours.items():
        if not name.endswith(".weight"):
            continue
        layer = name.rsplit(".", 1)[0]
        A2, G2 = state["input_covariances"][layer], state["gradient_covariances"][layer]
        A_err.append(float((block["A"] - A2).norm() / A2.norm()))
        K_err.append(kron_error(block["G"], block["A"], G2, A2))
    print(f"| {case} | {problem.batch_size} | {mc_samples if fisher == 'mc' else '–'} | "
          f"{med['peer']:.1f} | {med['ours']:.1f} | {med['ours'] - med['plain']:.1f} | "
          f"{med['ours'] / med['peer']:.2f} | {max(A_err):.1e} | {max(K_err):.1e} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--mc-samples", nargs="+", type=int, default=[1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.rounds} "
          "interleaved rounds\n")
    print("| case | batch | MC samples | curvlinops ms | curvlab factor step ms | curvlab factor "
          "extra ms | curvlab / curvlinops | max rel. err A | max rel. err G⊗A |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case in args.cases:
        for mc in (args.mc_samples if CASES[case][2] == "mc" else [1]):
            run_case(case, mc, args.rounds)


if __name__ == "__main__":
    main()
