"""What a cached benchmark contains: a hub, a target task, a config grid and a size.

Two hubs, both pretrained on the plain half of scikit-learn's digits
(:func:`fms_lightning.examples.digits_hub.digits_split`):

- ``cnn``: one architecture (``DigitsConvNet(c1=8, c2=16)``) with several
  initialisations and pretraining lengths, like the FMS paper's *Simple CNN Hub*;
- ``diverse``: MLP, CNN, ResNet-style, DeepSets and ViT-style members
  (:data:`fms_lightning.examples.digits_hub.HUB_SPEC`), like its *Pretrained Model Hub*.

Two target tasks, both built from the other half of digits, so that a surrogate can
be transferred between them (paper Fig. 3): ``mirror`` (left-right mirrored) and
``rotate`` (rotated by 90 degrees).

The config grid is the full product of a hub member and SGD hyperparameters from
the paper's A.4 space (learning rate, momentum, weight decay, batch size, dropout),
discretised so that every config the tuner can ask for is in the cache.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from fms_lightning.errors import ConfigurationError, UnknownPresetError

__all__ = ["BenchSpec", "HUBS", "TASKS", "SIZES", "bench_spec", "hub_members"]

HUBS = ("cnn", "diverse")
TASKS = ("mirror", "rotate")


@dataclass(frozen=True)
class BenchSpec:
    """One cached benchmark.

    Args:
        hub: ``"cnn"`` or ``"diverse"``.
        task: ``"mirror"`` or ``"rotate"``.
        size: Name of the size preset (see :data:`SIZES`).
        epochs: E, the epochs every config is trained for (the maximum budget of a trial).
        grid: ``{hyperparameter: values}``; the product with the hub members is the config set.
        cnn_seeds: Initialisations of the ``cnn`` hub.
        cnn_pretrain_epochs: Pretraining lengths of the ``cnn`` hub (0: a fresh initialisation).
        diverse_members: Names of :data:`~fms_lightning.examples.digits_hub.HUB_SPEC` used by ``diverse``.
        n_train: Training examples of the target task (the rest of the half is validation).
        seed: Seed of the pretraining, the fine-tuning and the split.

    Raises:
        ConfigurationError: If a field is out of range.
    """

    hub: str
    task: str
    size: str
    epochs: int
    grid: tuple[tuple[str, tuple[Any, ...]], ...]
    cnn_seeds: tuple[int, ...] = (0, 1)
    cnn_pretrain_epochs: tuple[int, ...] = (0, 1, 3, 10)
    diverse_members: tuple[str, ...] = ()
    n_train: int = 540
    seed: int = 0
    _members: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.hub not in HUBS or self.task not in TASKS:
            raise ConfigurationError(
                f"BenchSpec received hub={self.hub!r}, task={self.task!r}; expected hub in {HUBS} and task in {TASKS}."
            )
        if self.epochs < 2 or self.n_train < 10:
            raise ConfigurationError(
                f"BenchSpec received epochs={self.epochs}, n_train={self.n_train}; expected epochs >= 2, n_train >= 10."
            )
        object.__setattr__(self, "_members", tuple(hub_members(self)))

    @property
    def name(self) -> str:
        """Folder name of the benchmark, e.g. ``cnn-mirror-full``."""
        return f"{self.hub}-{self.task}-{self.size}"

    @property
    def members(self) -> tuple[str, ...]:
        """Hub member names, in a fixed order."""
        return self._members

    def configs(self) -> list[dict[str, Any]]:
        """Every config of the grid, in a fixed order (config index = position)."""
        names = [k for k, _ in self.grid]
        out = []
        for member in self.members:
            for values in itertools.product(*(v for _, v in self.grid)):
                out.append({"hub": member, **dict(zip(names, values))})
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for the benchmark's ``meta.json``."""
        return {
            "hub": self.hub, "task": self.task, "size": self.size, "epochs": self.epochs,
            "grid": {k: list(v) for k, v in self.grid}, "cnn_seeds": list(self.cnn_seeds),
            "cnn_pretrain_epochs": list(self.cnn_pretrain_epochs), "diverse_members": list(self.diverse_members),
            "n_train": self.n_train, "seed": self.seed,
        }


def hub_members(spec: BenchSpec) -> list[str]:
    """Member names of ``spec``'s hub (``cnn-s{seed}-p{epochs}``, or HUB_SPEC names)."""
    if spec.hub == "cnn":
        return [f"cnn-s{s}-p{p}" for s in spec.cnn_seeds for p in spec.cnn_pretrain_epochs]
    from fms_lightning.examples.digits_hub import HUB_SPEC

    unknown = [m for m in spec.diverse_members if m not in HUB_SPEC]
    if unknown or not spec.diverse_members:
        raise ConfigurationError(
            f"diverse_members={list(spec.diverse_members)!r}; expected names from {list(HUB_SPEC)}."
        )
    return list(spec.diverse_members)


_FULL_GRID = (
    ("lr", (1e-3, 1e-2, 1e-1)),
    ("momentum", (0.5, 0.9)),
    ("weight_decay", (1e-4,)),
    ("batch_size", (32, 128)),
    ("dropout", (0.0, 0.3)),
)
_TINY_GRID = (("lr", (1e-2, 1e-1)), ("momentum", (0.9,)), ("weight_decay", (1e-5,)), ("batch_size", (64,)),
              ("dropout", (0.0,)))
_ALL_DIVERSE = ("mlp-small", "mlp-wide", "cnn-tiny", "cnn-base", "resnet-narrow", "resnet-base", "deepsets",
                "vit-short", "vit-base")

# size -> BenchSpec keyword arguments (hub and task are added by bench_spec).
SIZES: dict[str, dict[str, Any]] = {
    "full": {"epochs": 10, "grid": _FULL_GRID, "cnn_seeds": (0, 1), "cnn_pretrain_epochs": (0, 1, 3, 10),
             "diverse_members": _ALL_DIVERSE, "n_train": 540},
    "tiny": {"epochs": 4, "grid": _TINY_GRID, "cnn_seeds": (0,), "cnn_pretrain_epochs": (0, 2),
             "diverse_members": ("mlp-small", "cnn-tiny", "deepsets"), "n_train": 200},
}


def bench_spec(hub: str, task: str, size: str = "full") -> BenchSpec:
    """The :class:`BenchSpec` of a named size.

    Raises:
        UnknownPresetError: For an unknown ``size`` (the message lists the valid ones).
        ConfigurationError: For an unknown hub or task.

    >>> spec = bench_spec("cnn", "mirror", "tiny")
    >>> spec.name, len(spec.configs())
    ('cnn-mirror-tiny', 4)
    """
    if size not in SIZES:
        raise UnknownPresetError(f"Unknown benchmark size {size!r}; expected one of {sorted(SIZES)}.")
    return BenchSpec(hub=hub, task=task, size=size, **SIZES[size])
