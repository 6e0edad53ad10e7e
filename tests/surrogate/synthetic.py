"""A synthetic multi-fidelity problem where the weights carry what the hyperparameters do not.

Each hub entry h has a weight vector w_h; its quality is a hidden linear read-out of w_h.
The hub choice is one-hot in x, so a hyperparameter-only surrogate must try an entry to
learn its quality; a surrogate that reads W_{i,0} = w_h can generalise across entries.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fms_lightning import SearchSpace, Uniform
from fms_lightning.optimizer import FMSOptimizer
from fms_lightning.space import HubChoice

N_HUB = 24
W_DIM = 4


class Problem:
    def __init__(self, seed: int, *, max_epochs: int = 6) -> None:
        rng = np.random.default_rng(1000 + seed)
        self.max_epochs = max_epochs
        self.hubs = [f"m{k}" for k in range(N_HUB)]
        self.w = {h: rng.normal(size=W_DIM) for h in self.hubs}
        u = rng.normal(size=W_DIM)
        u /= np.linalg.norm(u)
        self.q = {h: 0.3 * float(self.w[h] @ u) for h in self.hubs}
        self.space = SearchSpace({"model": HubChoice(self.hubs), "lr": Uniform(0.0, 1.0)})

    def value(self, config: dict[str, Any], epoch: int) -> float:
        lr_term = -2.0 * (config["lr"] - 0.6) ** 2
        return self.q[config["model"]] + lr_term - 0.5 * math.exp(-epoch / 2.0)

    def best_value(self) -> float:
        return max(self.q.values()) - 0.5 * math.exp(-self.max_epochs / 2.0)

    def weights(self, config: dict[str, Any], epoch: int) -> dict[str, torch.Tensor]:
        drift = 0.05 * epoch * (config["lr"] - 0.5)
        return {"w": torch.tensor(self.w[config["model"]] + drift, dtype=torch.float32)}

    def start_weights(self, config: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"w": torch.tensor(self.w[config["model"]], dtype=torch.float32)}


def run(opt: FMSOptimizer, problem: Problem, budget: int) -> float:
    """Train suggestions until `budget` epochs are spent; return the simple regret."""
    used, best = 0, -math.inf
    while used < budget:
        s = opt.suggest()
        done = opt.trial(s.trial_id).epochs
        for e in range(done + 1, s.epoch + 1):
            if used >= budget:
                break
            y = problem.value(s.config, e)
            opt.observe(s.trial_id, e, y, weights=problem.weights(s.config, e))
            best, used = max(best, y), used + 1
    return problem.best_value() - best


def tiny_mlp(config: dict[str, Any] | None = None) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))


class GmnProblem(Problem):
    """Hub entries are real (tiny) MLPs; an entry's quality is carried by its weights' scale,
    so the real ``GMNEncoder`` on ``parameter_graph`` can read it."""

    def __init__(self, seed: int, *, max_epochs: int = 6) -> None:
        super().__init__(seed, max_epochs=max_epochs)
        rng = np.random.default_rng(5000 + seed)
        self.state_dicts = {}
        for h in self.hubs:
            with torch.random.fork_rng():
                torch.manual_seed(int(rng.integers(1 << 30)))
                base = tiny_mlp().state_dict()
            scale = float(np.exp(2.0 * self.q[h]))
            self.state_dicts[h] = {k: v * scale for k, v in base.items()}

    def start_weights(self, config: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.state_dicts[config["model"]]

    def weights(self, config: dict[str, Any], epoch: int) -> dict[str, torch.Tensor]:
        f = 1.0 + 0.02 * epoch * (config["lr"] - 0.5)
        return {k: v * f for k, v in self.state_dicts[config["model"]].items()}
