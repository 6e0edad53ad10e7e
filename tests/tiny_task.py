"""A tiny tuning task for tuner tests: two MLP hub entries on 96 synthetic points."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fms_lightning.hub import HubEntry, ModelHub
from fms_lightning.space import Choice, HubChoice, LogUniform, SearchSpace

FAST_OPT = {"n_candidates": 16, "initial_steps": 20, "refine_steps": 5}


def make_mlp(width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Dropout(0.0), nn.Linear(width, 3))


class TinyModule(pl.LightningModule):
    def __init__(self, model: nn.Module, lr: float, fail: str | None = None) -> None:
        super().__init__()
        self.model, self.lr, self.fail = model, lr, fail

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        if self.fail == "raise":
            raise RuntimeError("planned failure")
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        return loss * float("nan") if self.fail == "nan" else loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class TinyData(pl.LightningDataModule):
    def __init__(self, batch_size: int = 16) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(96, 4, generator=g)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
        self.batch_size = batch_size
        self.train_set, self.val_set = TensorDataset(x[:64], y[:64]), TensorDataset(x[64:], y[64:])

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=64)


def build(config: dict[str, Any], entry: HubEntry | None) -> TinyModule:
    model = entry.build(load_weights=False) if entry is not None else make_mlp()
    return TinyModule(model, config["lr"], config.get("fail"))


def datamodule(config: dict[str, Any]) -> TinyData:
    return TinyData(int(config.get("batch_size", 16)))


def make_hub(folder: Path) -> ModelHub:
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, width in enumerate((8, 16)):
        torch.manual_seed(i)
        path = folder / f"mlp{width}.safetensors"
        if not path.exists():
            save_file(make_mlp(width).state_dict(), str(path))
        entries.append(HubEntry(f"mlp{width}", make_mlp, path, kwargs={"width": width}))
    return ModelHub(entries)


def space(hub: ModelHub, **extra: Any) -> SearchSpace:
    return SearchSpace({"model": HubChoice(values=tuple(hub.names)), "lr": LogUniform(1e-3, 0.3),
                        "batch_size": Choice(values=(16, 32)), **extra})


def train_segment(tuner, study, trial_id, config, target):
    """Train a trial of ``study`` up to ``target`` epochs in this process and commit it, as the tuner does.

    Raises:
        TrialFailedError: If the trial failed (its epochs before the failure are committed).
    """
    from fms_lightning.errors import TrialFailedError
    from fms_lightning.trial import TrialStatus
    from fms_lightning.tuner import sync
    from fms_lightning.tuner.segment import SegmentSpec

    epoch, path = study.checkpoint(trial_id) or (0, None)
    study.set_status(trial_id, TrialStatus.RUNNING)
    result = tuner.runner.run(SegmentSpec(trial_id, dict(config), epoch, target, path))
    sync.commit_segment(tuner.storage, study, result, TrialStatus.FAILED if result.error else TrialStatus.PAUSED)
    if result.error is not None:
        raise TrialFailedError(result.error)
    return result
