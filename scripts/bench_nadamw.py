#!/usr/bin/env python
"""Step time of NAdamW against torch.optim.AdamW(foreach=True) on a ~10M-parameter model, on CPU.

Both optimizers are timed side by side in one process, in interleaved rounds, so
machine noise hits both alike. Two figures are printed:

- ``optimizer.step()`` alone (the part the optimizer owns), and
- a whole training step (forward, backward, step).

Target: NAdamW / AdamW <= 1.3 for the optimizer step.

    python scripts/bench_nadamw.py [--params-millions 10] [--rounds 7] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from fms_lightning.optim import NAdamW


def build(width: int, depth: int) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def time_opt_step(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> float:
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()  # warm up / allocate state
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - t0) / steps


def time_train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, steps: int) -> float:
    def one() -> None:
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()

    one()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params-millions", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    depth = 4
    width = int((args.params_millions * 1e6 / depth) ** 0.5)
    models = {k: build(width, depth) for k in ("AdamW(foreach)", "NAdamW(foreach)", "NAdamW(single)")}
    n_params = sum(p.numel() for p in models["NAdamW(foreach)"].parameters())
    opts = {
        "AdamW(foreach)": torch.optim.AdamW(models["AdamW(foreach)"].parameters(), lr=1e-3, weight_decay=0.01, foreach=True),
        "NAdamW(foreach)": NAdamW(models["NAdamW(foreach)"].parameters(), lr=1e-3, weight_decay=0.01, foreach=True),
        "NAdamW(single)": NAdamW(models["NAdamW(single)"].parameters(), lr=1e-3, weight_decay=0.01, foreach=False),  # the CPU default
    }
    x = torch.randn(64, width)
    print(f"model: {depth + 1} Linear layers of width {width}, {n_params / 1e6:.2f}M parameters; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds x {args.steps} steps")
    step_t: dict[str, list[float]] = {k: [] for k in opts}
    train_t: dict[str, list[float]] = {k: [] for k in opts}
    for r in range(args.rounds):
        order = list(opts) if r % 2 == 0 else list(reversed(opts))
        for k in order:
            step_t[k].append(time_opt_step(models[k], opts[k], args.steps))
            train_t[k].append(time_train_step(models[k], opts[k], x, max(args.steps // 2, 1)))
    base_s = statistics.median(step_t["AdamW(foreach)"])
    base_t = statistics.median(train_t["AdamW(foreach)"])
    print(f"{'optimizer':<18}{'step ms':>10}{'ratio':>8}{'train-step ms':>16}{'ratio':>8}")
    for k in opts:
        s, t = statistics.median(step_t[k]), statistics.median(train_t[k])
        print(f"{k:<18}{s * 1e3:>10.2f}{s / base_s:>8.2f}{t * 1e3:>16.2f}{t / base_t:>8.2f}")
    ratio = statistics.median(step_t["NAdamW(foreach)"]) / base_s
    print(f"NAdamW(foreach) / AdamW(foreach) optimizer-step ratio: {ratio:.2f} (target <= 1.30)")


if __name__ == "__main__":
    main()
