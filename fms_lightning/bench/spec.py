"""What a cached benchmark contains: a hub, a target task, a config grid and a size.

Three hubs, all pretrained on the plain half of scikit-learn's digits
(:func:`fms_lightning.examples.digits_hub.digits_split`):

- ``cnn``: one architecture (``DigitsConvNet(c1=8, c2=16)``) with several
  initialisations and pretraining lengths;
- ``diverse``: MLP, CNN, ResNet-style, DeepSets and ViT-style members
  (:data:`fms_lightning.examples.digits_hub.HUB_SPEC`), like its *Pretrained Model Hub*;
- ``zoo``: a model zoo of 200 ``DigitsConvNet(c1=4, c2=8)``, each pretrained with its own
  drawn recipe (:mod:`fms_lightning.bench.zoo`), like the FMS paper's *Simple CNN Hub*
  (the CNN zoo of Unterthiner et al.).

Three target tasks, all built from the other half of digits, so that a surrogate can
be transferred between them (paper Fig. 3): ``mirror`` (left-right mirrored),
``rotate`` (rotated by 90 degrees) and ``fewshot`` (mirrored, ``shots`` training images
per class, the rest of the half as validation). Every hub has every task.

The config grid is the full product of a hub member and SGD hyperparameters from
the paper's A.4 space (learning rate, momentum, weight decay, batch size, dropout),
discretised so that every config the tuner can ask for is in the cache. The ``zoo``
hub has its own sizes (:data:`HUB_SIZES`): 20 epochs, and a small grid (learning rate ×
batch size) so that the member is most of the choice.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from fms_lightning.errors import ConfigurationError, UnknownPresetError

__all__ = ["BenchSpec", "HUBS", "TASKS", "SIZES", "HUB_SIZES", "bench_spec", "hub_members"]

HUBS = ("cnn", "diverse", "zoo")
TASKS = ("mirror", "rotate", "fewshot")


@dataclass(frozen=True)
class BenchSpec:
    """One cached benchmark.

    Args:
        hub: ``"cnn"``, ``"diverse"`` or ``"zoo"``.
        task: ``"mirror"``, ``"rotate"`` or ``"fewshot"``.
        size: Name of the size preset (see :data:`SIZES`).
        epochs: E, the epochs every config is trained for (the maximum budget of a trial).
        grid: ``{hyperparameter: values}``; the product with the hub members is the config set.
        cnn_seeds: Initialisations of the ``cnn`` hub.
        cnn_pretrain_epochs: Pretraining lengths of the ``cnn`` hub (0: a fresh initialisation).
        diverse_members: Names of :data:`~fms_lightning.examples.digits_hub.HUB_SPEC` used by ``diverse``.
        zoo_members: Members of the ``zoo`` hub.
        n_train: Training examples of ``mirror`` and ``rotate`` (the rest of the half is validation).
        shots: Training examples per class of ``fewshot`` (the rest of the half is validation).
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
    zoo_members: int = 200
    n_train: int = 540
    shots: int = 10
    seed: int = 0
    _members: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.hub not in HUBS or self.task not in TASKS:
            raise ConfigurationError(
                f"BenchSpec received hub={self.hub!r}, task={self.task!r}; expected hub in {HUBS} and task in {TASKS}."
            )
        if self.epochs < 2 or self.n_train < 10 or not 1 <= self.shots <= 50 or self.zoo_members < 2:
            raise ConfigurationError(
                f"BenchSpec received epochs={self.epochs}, n_train={self.n_train}, shots={self.shots}, "
                f"zoo_members={self.zoo_members}; expected epochs >= 2, n_train >= 10, 1 <= shots <= 50 "
                f"(digits' target half has about 90 images per class) and zoo_members >= 2."
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
            "zoo_members": self.zoo_members, "n_train": self.n_train, "shots": self.shots, "seed": self.seed,
        }


def hub_members(spec: BenchSpec) -> list[str]:
    """Member names of ``spec``'s hub (``cnn-s{seed}-p{epochs}``, ``zoo-{index:03d}``, or HUB_SPEC names)."""
    if spec.hub == "cnn":
        return [f"cnn-s{s}-p{p}" for s in spec.cnn_seeds for p in spec.cnn_pretrain_epochs]
    if spec.hub == "zoo":
        return [f"zoo-{i:03d}" for i in range(spec.zoo_members)]
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

# zoo: SGD with momentum 0.9 and no weight decay or dropout; 4 learning rates x 2 batch sizes per member.
_ZOO_GRID = (("lr", (3e-3, 1e-2, 3e-2, 1e-1)), ("momentum", (0.9,)), ("weight_decay", (0.0,)),
             ("batch_size", (32, 128)), ("dropout", (0.0,)))
_ZOO_TINY_GRID = (("lr", (1e-2, 1e-1)), ("momentum", (0.9,)), ("weight_decay", (0.0,)), ("batch_size", (64,)),
                  ("dropout", (0.0,)))

# size -> BenchSpec keyword arguments (hub and task are added by bench_spec).
SIZES: dict[str, dict[str, Any]] = {
    "full": {"epochs": 10, "grid": _FULL_GRID, "cnn_seeds": (0, 1), "cnn_pretrain_epochs": (0, 1, 3, 10),
             "diverse_members": _ALL_DIVERSE, "n_train": 540},
    "tiny": {"epochs": 4, "grid": _TINY_GRID, "cnn_seeds": (0,), "cnn_pretrain_epochs": (0, 2),
             "diverse_members": ("mlp-small", "cnn-tiny", "deepsets"), "n_train": 200},
}
# (hub, size) -> keyword arguments that replace those of SIZES[size] for that hub.
HUB_SIZES: dict[tuple[str, str], dict[str, Any]] = {
    ("zoo", "full"): {"epochs": 20, "grid": _ZOO_GRID, "zoo_members": 200, "n_train": 200},
    ("zoo", "tiny"): {"epochs": 4, "grid": _ZOO_TINY_GRID, "zoo_members": 4, "n_train": 200},
}


def bench_spec(hub: str, task: str, size: str = "full") -> BenchSpec:
    """The :class:`BenchSpec` of a named size.

    Raises:
        UnknownPresetError: For an unknown ``size`` (the message lists the valid ones).
        ConfigurationError: For an unknown hub or task.

    >>> spec = bench_spec("cnn", "mirror", "tiny")
    >>> spec.name, len(spec.configs())
    ('cnn-mirror-tiny', 4)
    >>> len(bench_spec("zoo", "fewshot", "full").configs())
    1600
    """
    if size not in SIZES:
        raise UnknownPresetError(f"Unknown benchmark size {size!r}; expected one of {sorted(SIZES)}.")
    return BenchSpec(hub=hub, task=task, size=size, **{**SIZES[size], **HUB_SIZES.get((hub, size), {})})
