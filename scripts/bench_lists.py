"""Does the NAdamW list help at small scale? A benchmark on scikit-learn's bundled data.

Four workloads, each with a validation-accuracy target fixed before the runs:

- ``digits-cnn``: ``DigitsCNN`` on 8×8 digits (8 epochs, target 0.98);
- ``digits-mlp``: an MLP on the 64 digit pixels (10 epochs, target 0.97);
- ``wine-mlp``: an MLP on wine (10 epochs, target 0.97);
- ``cancer-mlp``: an MLP on breast cancer (10 epochs, target 0.97).

Methods, all with the same seed per trial:

- ``list``: the 5 points of ``NADAMW_LIST``;
- ``random``: a pool of ``--random`` points from Table 1's broad space (the same
  points on every workload); "random-5" is the expected best of 5 draws from the
  pool (exact, over all 5-subsets), and the table also gives the smallest
  budget k whose expected best-of-k reaches the list's best;
- ``lr-wd0.5`` / ``lr-wd1e-4``: 5 log-spaced learning rates in [1e-4, 1e-2]
  with weight decay 0.5 or 1e-4 (β1 = 0.9, β2 = 0.999, 5% warmup, no dropout or
  label smoothing), the paper's baselines.

Every point is run on every workload, so the runs also form a trials table
(written as CSV) for ``fms-lightning lists build``; the script prints a
leave-one-workload-out evaluation of greedy lists built from it.

    .venv/bin/python scripts/bench_lists.py --out runs/bench_lists
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fms_lightning.examples.digits import DigitsCNN
from fms_lightning.examples.sklearn_data import SklearnDataModule
from fms_lightning.optim import NADAMW_LIST, NAdamWListModule, NAdamWPoint
from fms_lightning.optim.list_trials import ListTrials, write_trials_csv
from fms_lightning.optim.lists import build_list, leave_one_workload_out
from fms_lightning.optim.sweep import sweep

WORKLOADS: dict[str, dict[str, Any]] = {
    "digits-cnn": {"data": "digits", "image": True, "epochs": 8, "batch": 64, "target": 0.98},
    "digits-mlp": {"data": "digits", "image": False, "epochs": 10, "batch": 64, "target": 0.97},
    "wine-mlp": {"data": "wine", "image": False, "epochs": 10, "batch": 32, "target": 0.97},
    "cancer-mlp": {"data": "breast_cancer", "image": False, "epochs": 10, "batch": 32, "target": 0.97},
}


class MLP(NAdamWListModule):
    """Two hidden layers of 64 with dropout; logs ``val_acc``."""

    def __init__(self, preset: Any, *, num_features: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__(preset)
        self.net = nn.Sequential(
            nn.Linear(num_features, hidden), nn.ReLU(), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(),
            nn.Linear(hidden, num_classes),
        )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:  # noqa: D102
        x, y = batch
        return self.cross_entropy(self.net(x), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:  # noqa: D102
        x, y = batch
        acc = (self.net(x).argmax(-1) == y).float().mean()
        self.log("val_acc", acc, batch_size=len(y))


def broad_space_points(n: int, seed: int) -> list[NAdamWPoint]:
    """``n`` random points from Table 1 of the NAdamW-lists paper."""
    rng = np.random.default_rng(seed)

    def log_uniform(low: float, high: float) -> float:
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))

    return [
        NAdamWPoint(
            lr=log_uniform(1e-4, 1e-2), warmup_fraction=float(rng.choice([0.02, 0.05, 0.1])),
            beta1=1 - log_uniform(1e-3, 0.2), beta2=1 - log_uniform(1e-3, 0.2),
            weight_decay=log_uniform(1e-4, 0.5), dropout=float(rng.choice([0.0, 0.1])),
            label_smoothing=float(rng.choice([0.0, 0.1, 0.2])),
        )
        for _ in range(n)
    ]


def lr_sweep(weight_decay: float) -> list[NAdamWPoint]:
    """The paper's baseline: 5 log-spaced learning rates in [1e-4, 1e-2] at a fixed weight decay."""
    return [NAdamWPoint(float(lr), 0.05, 0.9, 0.999, weight_decay, 0.0, 0.0) for lr in np.logspace(-4, -2, 5)]


def run_workload(name: str, points: list[NAdamWPoint], seed: int) -> list[list[float]]:
    """Per-epoch val_acc of every point on one workload."""
    spec = WORKLOADS[name]
    dm = SklearnDataModule(spec["data"], batch_size=spec["batch"], seed=seed, as_image=spec["image"])
    if spec["image"]:
        factory: Any = DigitsCNN
    else:
        dm.setup()
        factory = functools.partial(MLP, num_features=dm.num_features, num_classes=dm.num_classes)
    result = sweep(factory, dm, top=len(points), hparam_list=points, max_epochs=spec["epochs"], seed=seed)
    return [list(t.values) if t.error is None else [] for t in result.trials]


def expected_best_of_k(values: list[float], k: int) -> float:
    """The expected maximum of k draws without replacement from ``values`` (exact order statistics)."""
    v = sorted(values)
    m = len(v)
    k = min(k, m)
    # P(max is the j-th smallest) = C(j-1, k-1) / C(m, k)
    return sum(v[j] * math.comb(j, k - 1) for j in range(k - 1, m)) / math.comb(m, k)


def first_hit(curve: list[float], target: float) -> float:
    """The first 1-based epoch reaching the target, or inf."""
    return next((float(e) for e, v in enumerate(curve, start=1) if v >= target), math.inf)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench_lists")
    parser.add_argument("--random", type=int, default=20, help="size of the random-search pool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workloads", nargs="*", default=list(WORKLOADS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    groups = {
        "list": list(NADAMW_LIST), "random": broad_space_points(args.random, args.seed),
        "lr-wd0.5": lr_sweep(0.5), "lr-wd1e-4": lr_sweep(1e-4),
    }
    ids = [f"{g}/{i}" for g, pts in groups.items() for i in range(1, len(pts) + 1)]
    points = [p for pts in groups.values() for p in pts]
    raw_path = out / "curves.json"
    curves: dict[str, list[list[float]]] = json.loads(raw_path.read_text()) if raw_path.is_file() else {}
    for name in args.workloads:
        if name in curves:
            continue
        start = time.perf_counter()
        curves[name] = run_workload(name, points, args.seed)
        print(f"{name}: {len(points)} trials in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        raw_path.write_text(json.dumps(curves))
    names = [n for n in args.workloads if n in curves]

    best = {n: [max(c) if c else 0.0 for c in curves[n]] for n in names}
    lines = ["| workload (target) | list, 5 | random, best of 5 (expected) | random, first 5 | LR sweep wd 0.5 | "
             "LR sweep wd 1e-4 | random budget to match list |", "|---|---|---|---|---|---|---|"]
    for n in names:
        b = dict(zip(ids, best[n]))
        pick = {g: [b[f"{g}/{i}"] for i in range(1, len(p) + 1)] for g, p in groups.items()}
        lst = max(pick["list"])
        need = next((k for k in range(1, len(pick["random"]) + 1)
                     if expected_best_of_k(pick["random"], k) >= lst - 1e-9), None)
        need_s = str(need) if need is not None else f"> {len(pick['random'])}"
        lines.append(
            f"| {n} ({WORKLOADS[n]['target']}) | {lst:.4f} | {expected_best_of_k(pick['random'], 5):.4f} | "
            f"{max(pick['random'][:5]):.4f} | {max(pick['lr-wd0.5']):.4f} | {max(pick['lr-wd1e-4']):.4f} | {need_s} |"
        )
    table = "\n".join(lines)

    steps = np.array([[first_hit(curves[n][p], WORKLOADS[n]["target"]) for n in names] for p in range(len(points))])
    budgets = np.array([float(WORKLOADS[n]["epochs"]) for n in names])
    trials = ListTrials(tuple(ids), tuple(points), tuple(names), steps, budgets)
    write_trials_csv(trials, out / "trials.csv")
    frac = trials.fractions
    rows = ["| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for g, pts in groups.items():
        sel = [ids.index(f"{g}/{i}") for i in range(1, min(5, len(pts)) + 1)]
        cells = [("%.2f" % frac[sel, j].min()) if np.isfinite(frac[sel, j].min()) else "not reached"
                 for j in range(len(names))]
        rows.append(f"| {g if g != 'random' else 'random, first 5'} | " + " | ".join(cells) + " |")
    fractions_table = "\n".join(rows)

    loo_lines = ["| held out | list built on the others (K=5) | reached | t/T | first hit |", "|---|---|---|---|---|"]
    if len(names) >= 2:
        for r in leave_one_workload_out(trials, 5):
            fr = f"{r.fraction:.2f}" if math.isfinite(r.fraction) else "inf"
            loo_lines.append(f"| {r.workload} | {' '.join(r.point_ids)} | {r.reached} | {fr} | {r.first_hit or '-'} |")
    built = build_list(trials, 5)
    report = (f"## Best validation accuracy\n\n{table}\n\n## Fraction of the epoch budget to reach the target\n\n"
              f"{fractions_table}\n\n## Leave-one-workload-out (greedy, tau=2)\n\n" + "\n".join(loo_lines) +
              f"\n\nList built on all workloads: {' '.join(built.point_ids)} (C_tau = {built.cost:.4f})\n")
    (out / "report.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
