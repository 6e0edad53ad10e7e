"""Read a built benchmark: the config table, its learning curves and its weight files."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fms_lightning.bench.build import config_dir, read_snapshot
from fms_lightning.errors import ConfigurationError
from fms_lightning.space import Choice, HubChoice, SearchSpace

__all__ = ["Benchmark"]


class Benchmark:
    """A cached benchmark folder written by :func:`~fms_lightning.bench.build.build_benchmark`.

    Args:
        folder: The benchmark folder (``<root>/<name>``).
        metric: The per-epoch metric to optimise (``"val_acc"``, maximised).

    Raises:
        ConfigurationError: If the folder is not a complete benchmark.
    """

    def __init__(self, folder: str | Path, *, metric: str = "val_acc") -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise ConfigurationError(
                f"{str(self.folder)!r} has no meta.json; it is not a complete benchmark. Build it first with "
                f"`fms-lightning bench build` (a killed build resumes)."
            )
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        self.name: str = self.meta["name"]
        self.epochs: int = int(self.meta["spec"]["epochs"])
        self.metric = metric
        self.members: dict[str, dict[str, Any]] = self.meta["members"]
        self.configs: list[dict[str, Any]] = []
        curves, seconds = [], []
        for k in range(int(self.meta["n_configs"])):
            path = config_dir(self.folder, k) / "metrics.json"
            if not path.is_file():
                raise ConfigurationError(f"Benchmark {self.name!r} misses {str(path)!r}; rebuild to complete it.")
            rec = json.loads(path.read_text(encoding="utf-8"))
            self.configs.append(rec["config"])
            curves.append(rec[metric])
            seconds.append(rec.get("epoch_seconds"))
        self.curves = np.asarray(curves, dtype=float)  # (n_configs, E)
        self._seconds = None if any(s is None for s in seconds) else np.asarray(seconds, dtype=float)
        self._index = {self._key(c): k for k, c in enumerate(self.configs)}
        self._starts: dict[str, dict[str, torch.Tensor]] = {}

    @staticmethod
    def _key(config: dict[str, Any]) -> str:
        return repr(sorted((k, v) for k, v in config.items()))

    @property
    def final(self) -> np.ndarray:
        """The true final-epoch metric of every config `(n_configs,)`."""
        return self.curves[:, -1]

    @property
    def epoch_seconds(self) -> np.ndarray:
        """Wall seconds of the training loop of each epoch of each config `(n_configs, E)`.

        Measured during the build, one torch thread, excluding the validation pass and
        saving (see :mod:`fms_lightning.bench.build`).

        Raises:
            ConfigurationError: If the cache was built before training times were recorded.
        """
        if self._seconds is None:
            raise ConfigurationError(
                f"Benchmark {self.name!r} was built before training times were recorded (its metrics.json files "
                f"have no 'epoch_seconds'). Delete {str(self.folder)!r} and run `fms-lightning bench build` again."
            )
        return self._seconds

    @property
    def recipes(self) -> dict[str, dict[str, Any]]:
        """``{member: pretraining recipe}`` of a ``zoo`` benchmark (empty for other hubs)."""
        return dict(self.meta.get("recipes", {}))

    @property
    def best_possible(self) -> float:
        """y*: the best value any query can return (max over configs and epochs)."""
        return float(self.curves.max())

    @cached_property
    def space(self) -> SearchSpace:
        """The search space whose every config is in the table (hub member + grid)."""
        grid = self.meta["spec"]["grid"]
        dims: dict[str, Any] = {"hub": HubChoice(list(self.members))}
        dims.update({name: Choice(values) for name, values in grid.items()})
        return SearchSpace(dims)

    def index(self, config: dict[str, Any]) -> int:
        """Row of ``config`` in the table.

        Raises:
            ConfigurationError: If the config is not in the benchmark's grid.
        """
        try:
            return self._index[self._key(config)]
        except KeyError as err:
            raise ConfigurationError(f"Config {config!r} is not in benchmark {self.name!r}.") from err

    def snapshot(self, k: int, epoch: int) -> dict[str, torch.Tensor]:
        """W_{k,epoch}, floats restored to float32 (``epoch = 0``: the hub member's weights)."""
        if epoch == 0:
            return self.starting_weights(self.configs[k])
        sd = read_snapshot(config_dir(self.folder, k), epoch)
        return {n: t.float() if t.is_floating_point() else t for n, t in sd.items()}

    def starting_weights(self, config: dict[str, Any]) -> dict[str, torch.Tensor]:
        """W_{i,0}: the hub member's weights (cached in memory)."""
        from fms_lightning.weightspace import load_state_dict_file

        member = config["hub"]
        if member not in self._starts:
            self._starts[member] = load_state_dict_file(self.folder / "hub" / f"{member}.safetensors")
        return self._starts[member]

    def model(self, config: dict[str, Any]) -> torch.nn.Module:
        """A fresh module of the config's architecture."""
        from fms_lightning.examples.hub_models import make

        return make(**self.members[config["hub"]])

    def graph_fn(self, config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> Any:
        """``parameter_graph`` of the config's architecture (DeepSets needs an example input)."""
        from fms_lightning.weightspace import parameter_graph

        return parameter_graph(self.model(config), state_dict, example_input=torch.zeros(2, 1, 8, 8))
