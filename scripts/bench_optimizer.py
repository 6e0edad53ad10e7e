"""Overhead per ``FMSOptimizer.suggest()`` (surrogate refit + acquisition), DyHPO vs FMS-GMN.

The study is pre-filled with N observations of a synthetic hub of small MLPs (each with
its own weights per epoch), so the optimizer is in its refine phase (50 warm-started
Adam steps per refit, paper A.3). Each timed step is what a real study pays per
suggestion: ``observe`` one new epoch (with its snapshot, for FMS) and ``suggest``.
The median over ``--repeats`` steps is printed, with the ratio FMS-GMN / DyHPO.

    python scripts/bench_optimizer.py --obs 50 200 1000 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn

from fms_lightning import SearchSpace, Uniform
from fms_lightning.optimizer import FMSOptimizer
from fms_lightning.space import HubChoice, LogUniform

HUB = {"mlp16": 16, "mlp32": 32, "mlp64": 64, "mlp128": 128}
EPOCHS = 20


def _factory(cfg: dict) -> nn.Module:
    h = HUB[cfg["model"]]
    return nn.Sequential(nn.Linear(16, h), nn.ReLU(), nn.Linear(h, 10))


def _hub_weights() -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for k, name in enumerate(HUB):
        with torch.random.fork_rng():
            torch.manual_seed(k)
            out[name] = _factory({"model": name}).state_dict()
    return out


def _value(cfg: dict, epoch: int) -> float:
    q = {"mlp16": 0.6, "mlp32": 0.7, "mlp64": 0.75, "mlp128": 0.72}[cfg["model"]]
    return q - 0.1 * (np.log10(cfg["lr"]) + 2.5) ** 2 - 0.3 * np.exp(-epoch / 4) - 0.1 * cfg["dropout"] ** 2


def _weights(hub: dict, cfg: dict, epoch: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(hash((cfg["model"], round(cfg["lr"], 9), epoch)) % 2**31)
    return {k: v + 0.01 * epoch * torch.randn(v.shape, generator=g) for k, v in hub[cfg["model"]].items()}


def _prefill(opt: FMSOptimizer, hub: dict, n_obs: int, rng: np.random.Generator) -> None:
    """Observations as a DyHPO run would leave them: many short curves, a few long ones."""
    left = n_obs
    while left > 0:
        cfg = opt.space.sample(1, rng=rng)[0]
        length = int(min(left, rng.choice([1, 1, 1, 2, 3, 5, EPOCHS])))
        s = opt._start(cfg, length)  # bypasses the model: fills the study quickly
        for e in range(1, length + 1):
            opt.observe(s.trial_id, e, _value(cfg, e), weights=_weights(hub, cfg, e))
        left -= length


def _make(method: str, n_obs: int, n_candidates: int, hub: dict) -> FMSOptimizer:
    space = SearchSpace(
        {"model": HubChoice(list(HUB)), "lr": LogUniform(1e-4, 1e-1), "dropout": Uniform(0.0, 1.0)}
    )
    kw = {}
    if method.startswith("fms"):
        kw = dict(model_factory=_factory, starting_weights_fn=lambda c: hub[c["model"]])
    opt = FMSOptimizer(space, max_epochs=EPOCHS, method=method, seed=0, n_candidates=n_candidates,
                       surrogate_threads=None, **kw)  # --threads governs the surrogate too
    _prefill(opt, hub, n_obs, np.random.default_rng(0))
    opt.suggest()  # first fit (not timed): a fresh model; warm refits from here on
    return opt


def _step(opt: FMSOptimizer, hub: dict) -> float:
    """Time one observe (new epoch + snapshot) and the suggest that follows it."""
    for p in opt.pending():  # finish pending work, untimed
        e = opt.trial(p.trial_id).epochs + 1
        opt.observe(p.trial_id, e, _value(p.config, e), weights=_weights(hub, p.config, e))
    s = opt.suggest()
    t0 = time.perf_counter()
    opt.observe(s.trial_id, s.epoch, _value(s.config, s.epoch), weights=_weights(hub, s.config, s.epoch))
    opt.suggest()
    return time.perf_counter() - t0


def bench(methods: list[str], n_obs: int, repeats: int, n_candidates: int) -> dict[str, float]:
    """Median seconds per suggest for each method; steps are interleaved so that load from
    other processes on a shared machine hits every method alike."""
    hub = _hub_weights()
    opts = {m: _make(m, n_obs, n_candidates, hub) for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(repeats):
        for m in methods:
            times[m].append(_step(opts[m], hub))
    return {m: statistics.median(v) for m, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--obs", type=int, nargs="+", default=[50, 200, 1000])
    ap.add_argument("--methods", nargs="+", default=["dyhpo", "fms-gmn"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--candidates", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} candidates={args.candidates} repeats={args.repeats} (median s per suggest)")
    print(f"{'obs':>6} " + " ".join(f"{m:>10}" for m in args.methods) + "   ratio")
    for n in args.obs:
        row = bench(args.methods, n, args.repeats, args.candidates)
        ratio = row[args.methods[-1]] / row[args.methods[0]] if len(args.methods) > 1 else float("nan")
        print(f"{n:>6} " + " ".join(f"{row[m]:>10.3f}" for m in args.methods) + f"   {ratio:5.2f}", flush=True)


if __name__ == "__main__":
    main()
