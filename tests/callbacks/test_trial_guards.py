"""EpochSeeder and NonFiniteLossGuard, the callbacks the tuner attaches to every trial segment."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fms_lightning.callbacks.trial_guards import EpochSeeder, NonFiniteLossGuard, epoch_seed
from fms_lightning.errors import TrialFailedError


class Noisy(pl.LightningModule):
    """A model whose training uses dropout and a shuffled loader, so every epoch draws random numbers."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 1))
        self.lr = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 4, generator=g)
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8, shuffle=True)


def _fit(model: pl.LightningModule, epochs: int, callbacks: list, ckpt: str | None = None) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                         deterministic=True)
    trainer.fit(model, ckpt_path=ckpt)
    return trainer


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_epoch_seed_depends_only_on_its_inputs() -> None:
    assert epoch_seed(0, "trial-1", 2) == epoch_seed(0, "trial-1", 2)
    assert len({epoch_seed(0, "trial-1", 2), epoch_seed(1, "trial-1", 2), epoch_seed(0, "trial-2", 2),
                epoch_seed(0, "trial-1", 3)}) == 4
    assert 0 <= epoch_seed(5, "k", 1) < 2**63


def test_seeded_runs_are_equal_and_other_keys_differ() -> None:
    runs = []
    for key in ("trial-1", "trial-1", "trial-2"):
        torch.manual_seed(0)
        model = Noisy()
        torch.manual_seed(123 + len(runs))  # the global state before fit must not matter
        _fit(model, 2, [EpochSeeder(7, key)])
        runs.append(_weights(model))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))


def test_resuming_epoch_by_epoch_equals_one_run(tmp_path) -> None:
    torch.manual_seed(0)
    whole = Noisy()
    _fit(whole, 2, [EpochSeeder(3, "t")])
    torch.manual_seed(0)
    part = Noisy()
    trainer = _fit(part, 1, [EpochSeeder(3, "t")])
    trainer.save_checkpoint(tmp_path / "e1.ckpt")
    resumed = Noisy()
    _fit(resumed, 2, [EpochSeeder(3, "t", first_epoch=1)], ckpt=str(tmp_path / "e1.ckpt"))
    assert all(torch.allclose(a, b) for a, b in zip(_weights(whole), _weights(resumed)))


@pytest.mark.parametrize("lr", [float("nan"), 1e30])
def test_a_non_finite_loss_fails_the_run_at_once(lr: float) -> None:
    model = Noisy(lr=lr)
    batches = []
    seen = pl.Callback()
    seen.on_train_batch_end = lambda trainer, module, outputs, batch, idx: batches.append(idx)  # type: ignore[method-assign]
    with pytest.raises(TrialFailedError, match=r"non-finite training loss \((nan|inf)\) at epoch 1, batch \d"):
        _fit(model, 3, [NonFiniteLossGuard(), seen])
    assert len(batches) < 8  # stopped in the first epoch, before it ended


def test_a_finite_loss_trains_on() -> None:
    trainer = _fit(Noisy(), 2, [NonFiniteLossGuard()])
    assert trainer.current_epoch == 2 and trainer.global_step == 16
