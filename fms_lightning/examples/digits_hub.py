"""The embedded "digits hub": small pretrained models to choose from, and their target task.

The 1797 images of scikit-learn's ``load_digits`` are split once, with a fixed
seed, into two disjoint halves:

- the **pretraining part**, on which every hub model is pretrained (plain
  images);
- the **target part**, mirrored left-to-right, which the tuner fine-tunes on.

The mirror makes the target a related but different task, so pretrained
features help unevenly and choosing the hub model matters. The hub mixes
architectures (MLP, CNN, ResNet-style, DeepSets, ViT-style), widths and
pretraining lengths, so its members differ in quality.

The hub is built on first use (about a minute on 2 CPU cores, with a progress
line per model) and cached in a folder with a ``hub.yaml`` manifest that
:meth:`fms_lightning.hub.ModelHub.from_directory` reads. A build goes to a
temporary folder that is renamed into place, so an interrupted build leaves no
half-written hub.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import lightning.pytorch as pl
import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fms_lightning.examples.hub_models import make
from fms_lightning.hub import ModelHub

__all__ = [
    "HUB_SPEC", "build_digits_hub", "digits_hub", "digits_split", "default_cache_dir", "DigitsTargetDataModule",
    "HubClassifier", "build_hub_classifier", "target_datamodule",
]

_VERSION = 1
_SPLIT_SEED = 1234

# name: (architecture kwargs, pretraining epochs). Short pretraining gives weaker members.
HUB_SPEC: dict[str, tuple[dict[str, Any], int]] = {
    "mlp-small": ({"arch": "mlp", "width": 32, "depth": 1}, 2),
    "mlp-wide": ({"arch": "mlp", "width": 128, "depth": 2}, 12),
    "cnn-tiny": ({"arch": "cnn", "c1": 4, "c2": 8}, 1),
    "cnn-base": ({"arch": "cnn", "c1": 16, "c2": 32}, 10),
    "resnet-narrow": ({"arch": "resnet", "width": 8}, 3),
    "resnet-base": ({"arch": "resnet", "width": 16}, 10),
    "deepsets": ({"arch": "deepsets", "width": 64}, 10),
    "vit-short": ({"arch": "vit", "dim": 32, "depth": 1, "heads": 4}, 2),
    "vit-base": ({"arch": "vit", "dim": 32, "depth": 2, "heads": 4}, 12),
}


def default_cache_dir() -> Path:
    """``$FMS_LIGHTNING_CACHE`` or ``~/.cache/fms_lightning``."""
    root = os.environ.get("FMS_LIGHTNING_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fms_lightning")
    return Path(root)


def digits_split(part: str) -> tuple[np.ndarray, np.ndarray]:
    """Images `(n, 1, 8, 8)` scaled to [0, 1] and labels `(n,)` of one half of digits.

    scikit-learn's file is read once per process; each call returns new arrays.

    Args:
        part: ``"pretrain"`` (plain images) or ``"target"`` (the other half, mirrored).

    Raises:
        ValueError: For another ``part``.
    """
    if part not in ("pretrain", "target"):
        raise ValueError(f"part must be 'pretrain' or 'target', got {part!r}.")
    x, y = _digits()
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(y))
    half = len(y) // 2
    idx = order[:half] if part == "pretrain" else order[half:]
    x, y = x[idx], y[idx]  # copies: the cached arrays are never handed out
    if part == "target":
        x = np.ascontiguousarray(x[..., ::-1])
    return x, y


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """All of digits, images scaled to [0, 1], read-only (``load_digits`` parses a text file: 25 ms)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@functools.lru_cache(maxsize=8)
def _target_split(val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The target part's stratified train/val split, computed once per process and arguments."""
    from sklearn.model_selection import train_test_split

    x, y = digits_split("target")
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=val_fraction, random_state=seed, stratify=y)
    t = [torch.from_numpy(np.ascontiguousarray(a)) for a in (x_tr, y_tr, x_va, y_va)]
    return t[0], t[1], t[2], t[3]


def _pretrain(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> float:
    """Plain AdamW pretraining; returns accuracy on a held-out 20% of the pretraining part."""
    gen = torch.Generator().manual_seed(seed)
    n_val = len(y) // 5
    perm = torch.randperm(len(y), generator=gen)
    val, tr = perm[:n_val], perm[n_val:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(tr), generator=gen).split(64):
            idx = tr[batch]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return float((model(x[val]).argmax(-1) == y[val]).float().mean())


def build_digits_hub(path: str | os.PathLike[str], *, seed: int = 0, stream: TextIO = sys.stderr) -> Path:
    """Pretrain every member of :data:`HUB_SPEC` and write a hub folder at ``path``.

    Returns:
        The hub folder.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    x_np, y_np = digits_split("pretrain")
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    entries = []
    start = time.perf_counter()
    try:
        for i, (name, (kwargs, epochs)) in enumerate(HUB_SPEC.items(), 1):
            torch.manual_seed(seed + i)
            model = make(**kwargs)
            acc = _pretrain(model, x, y, epochs, seed + i)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / f"{name}.safetensors"))
            n_params = sum(p.numel() for p in model.parameters())
            entries.append({
                "name": name,
                "factory": "fms_lightning.examples.hub_models:make",
                "kwargs": kwargs,
                "weights": f"{name}.safetensors",
                "metadata": {"pretrain_epochs": epochs, "pretrain_val_acc": round(acc, 4), "params": n_params},
            })
            print(f"[digits hub {i}/{len(HUB_SPEC)}] {name:<14} {kwargs['arch']:<9} {n_params:>7} params, "
                  f"pretrained {epochs:>2} epochs, held-out acc {acc:.3f}  ({time.perf_counter() - start:.0f}s)",
                  file=stream, flush=True)
        manifest = {"version": _VERSION, "seed": seed, "entries": entries}
        (tmp / "hub.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def digits_hub(cache_dir: str | os.PathLike[str] | None = None, *, seed: int = 0,
               stream: TextIO = sys.stderr) -> ModelHub:
    """The digits hub, built on first use and cached.

    Args:
        cache_dir: Where hubs are cached (default :func:`default_cache_dir`).
        seed: Pretraining seed; each seed is cached separately.
        stream: Where build progress goes.

    Returns:
        The :class:`~fms_lightning.hub.ModelHub`.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / f"digits_hub-v{_VERSION}-seed{seed}"
    if not (path / "hub.yaml").is_file():
        print(f"Building the digits hub in {path} (first use only) ...", file=stream, flush=True)
        build_digits_hub(path, seed=seed, stream=stream)
    return ModelHub.from_directory(path)


class DigitsTargetDataModule(pl.LightningDataModule):
    """The target task of the digits hub: the mirrored half of digits, split into train/val.

    Args:
        batch_size: Training batch size.
        val_fraction: Fraction of the target part held out for validation.
        seed: Seed of the stratified split (the shuffle uses torch's global RNG).
    """

    def __init__(self, batch_size: int = 64, *, val_fraction: float = 0.3, seed: int = 0) -> None:
        super().__init__()
        # The split is computed once per process; each DataModule holds its own copies of the
        # tensors, and its loaders are made anew by each fit (nothing carries over between trials).
        x_tr, y_tr, x_va, y_va = (t.clone() for t in _target_split(float(val_fraction), int(seed)))
        self.batch_size = int(batch_size)
        self.train_set = TensorDataset(x_tr, y_tr)
        self.val_set = TensorDataset(x_va, y_va)

    def train_dataloader(self) -> DataLoader:  # noqa: D102
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:  # noqa: D102
        return DataLoader(self.val_set, batch_size=512)


class HubClassifier(pl.LightningModule):
    """Fine-tunes a hub model with SGD, as in the FMS paper's A.4 space.

    Args:
        model: The hub architecture (weights are loaded by the tuner).
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        dropout: Set on every dropout module of ``model`` (see :func:`fms_lightning.optim.module.set_dropout`).

    Logs ``val_acc`` and ``val_loss``.
    """

    def __init__(self, model: nn.Module, *, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        from fms_lightning.optim.module import set_dropout

        self.save_hyperparameters({"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "dropout": dropout})
        self.model = model
        self.example_input_array = torch.zeros(2, 1, 8, 8)  # lets parameter_graph propagate shapes
        set_dropout(self.model, float(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:  # noqa: D102
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:  # noqa: D102
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:  # noqa: D102
        h = self.hparams
        return torch.optim.SGD(self.parameters(), lr=h.lr, momentum=h.momentum, weight_decay=h.weight_decay)


def build_hub_classifier(config: dict[str, Any], hub_entry: Any) -> HubClassifier:
    """``build(config, hub_entry)`` for :class:`~fms_lightning.FMSTuner` on the digits hub."""
    return HubClassifier(
        hub_entry.build(load_weights=False),
        lr=float(config["lr"]), momentum=float(config.get("momentum", 0.9)),
        weight_decay=float(config.get("weight_decay", 0.0)), dropout=float(config.get("dropout", 0.0)),
    )


def target_datamodule(config: dict[str, Any]) -> DigitsTargetDataModule:
    """``datamodule(config)`` for the digits hub: the batch size is a hyperparameter."""
    return DigitsTargetDataModule(batch_size=int(config.get("batch_size", 64)))
