"""FMS-GMN seconds per suggestion with torch's default threads against ``surrogate_threads=1``.

Two identical optimizers (same seed, same pre-filled study of a synthetic MLP
hub, see ``bench_optimizer.py``) take turns, step by step, so that load from
other processes on a shared machine hits both alike. One runs the surrogate with
torch's default intra-op threads (``surrogate_threads=None``, torch set to one
thread per CPU core); the other with the library's default cap,
``surrogate_threads=1``. A step is what a study pays per suggestion: observe one
new epoch (with its snapshot) and suggest.

Two phases are timed: a fresh study (``--fresh`` observations, at most
``full_fit_until``: every suggestion fits the surrogate from scratch) and a
refining study (``--obs`` observations: warm-started refits).

    python scripts/bench_surrogate_threads.py --steps 6
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from bench_optimizer import HUB, EPOCHS, _factory, _hub_weights, _prefill, _step, _value, _weights  # noqa: F401

from fms_lightning import SearchSpace, Uniform
from fms_lightning.optimizer import FMSOptimizer
from fms_lightning.space import HubChoice, LogUniform


def _make(threads: int | None, n_obs: int, n_candidates: int, hub: dict) -> FMSOptimizer:
    space = SearchSpace({"model": HubChoice(list(HUB)), "lr": LogUniform(1e-4, 1e-1), "dropout": Uniform(0.0, 1.0)})
    opt = FMSOptimizer(space, max_epochs=EPOCHS, method="fms-gmn", seed=0, n_candidates=n_candidates,
                       model_factory=_factory, starting_weights_fn=lambda c: hub[c["model"]],
                       surrogate_threads=threads)
    _prefill(opt, hub, n_obs, np.random.default_rng(0))
    return opt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="timed steps per arm and phase (alternating)")
    ap.add_argument("--phases", nargs="+", choices=("fresh", "refining"), default=["fresh", "refining"])
    ap.add_argument("--fresh", type=int, default=2, help="observations of the fresh study")
    ap.add_argument("--obs", type=int, default=50, help="observations of the refining study")
    ap.add_argument("--candidates", type=int, default=512)
    ap.add_argument("--verbose", action="store_true", help="print every step's times")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)  # torch's default on a machine without OMP_NUM_THREADS
    hub = _hub_weights()
    arms = {f"default ({cores} threads)": None, "surrogate_threads=1": 1}
    print(f"FMS-GMN, {args.candidates} candidates, {args.steps} alternating steps per arm; median s per step")
    print(f"{'phase':<28}" + "".join(f"{a:>24}" for a in arms) + "   ratio default/capped")
    for phase, n_obs in (("fresh (from-scratch fits)", args.fresh), ("refining (warm refits)", args.obs)):
        if phase.split()[0] not in args.phases:
            continue
        opts = {a: _make(t, n_obs, args.candidates, hub) for a, t in arms.items()}
        if phase.startswith("refining"):
            for o in opts.values():
                o.suggest()  # the first, from-scratch fit is not timed here
        times: dict[str, list[float]] = {a: [] for a in arms}
        for _ in range(args.steps):
            for a, o in opts.items():
                if phase.startswith("fresh"):  # keep the study fresh: time one suggest from scratch
                    saved = {tid: (t.status, t.target) for tid, t in o._trials._trials.items()}
                    o._fitted_at, o.surrogate.model = -1, None
                    t0 = time.perf_counter()
                    o.suggest()
                    times[a].append(time.perf_counter() - t0)
                    for tid in [tid for tid in o._trials if tid not in saved]:  # undo the suggestion
                        del o._trials._trials[tid]
                    for tid, (status, target) in saved.items():
                        o._trials._trials[tid].status, o._trials._trials[tid].target = status, target
                else:
                    times[a].append(_step(o, hub))
            assert torch.get_num_threads() == cores  # the caller's setting survives every call
            if args.verbose:
                print("  step:", {a: round(v[-1], 3) for a, v in times.items()}, flush=True)
        med = {a: statistics.median(v) for a, v in times.items()}
        first, second = med.values()
        print(f"{phase:<28}" + "".join(f"{m:>24.3f}" for m in med.values()) + f"   {first / second:8.2f}x",
              flush=True)


if __name__ == "__main__":
    main()
