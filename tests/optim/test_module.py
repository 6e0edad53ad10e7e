"""NAdamWListModule: optimizer and schedule from the preset, horizon, dropout, label smoothing, resume."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import LearningRateMonitor
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fms_lightning.errors import ConfigurationError
from fms_lightning.optim import NADAMW_LIST, NAdamW, NAdamWListModule, WarmupCosine


class TinyNet(NAdamWListModule):
    def __init__(self, preset=1, **kwargs):
        super().__init__(preset, **kwargs)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
        self.attn = nn.MultiheadAttention(16, 2, dropout=0.3, batch_first=True)
        self.block = nn.TransformerEncoderLayer(16, 2, dim_feedforward=8, dropout=0.4, batch_first=True)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.cross_entropy(self(x), y)


def _loader(n: int = 40, batch_size: int = 8, seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    defaults = dict(
        default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, max_epochs=2,
    )
    return pl.Trainer(**(defaults | kwargs))


def test_configure_optimizers_uses_the_preset(tmp_path) -> None:
    model = TinyNet(preset="nadamw-list/4")
    trainer = _trainer(tmp_path, max_epochs=3)
    trainer.fit(model, _loader())
    opt = trainer.optimizers[0]
    point = NADAMW_LIST[3]
    assert isinstance(opt, NAdamW)
    group = opt.param_groups[0]
    assert group["betas"] == (point.beta1, point.beta2)
    assert group["weight_decay"] == point.weight_decay
    assert group["initial_lr"] == point.lr
    config = trainer.lr_scheduler_configs[0]
    assert isinstance(config.scheduler, WarmupCosine) and config.interval == "step"
    # Horizon defaults to estimated_stepping_batches = 3 epochs × 5 batches.
    assert config.scheduler.total_steps == 15
    assert config.scheduler.warmup_steps == int(point.warmup_fraction * 15)
    # Trained to the end of the horizon: the rate is back at 0.
    assert group["lr"] == pytest.approx(0.0, abs=1e-12)
    assert model.hparams["nadamw_preset"] == point.to_dict()
    assert model.hparams["nadamw_preset_name"] == "nadamw-list/4"


@pytest.mark.parametrize(("kwargs", "expected"), [({"total_steps": 37}, 37), ({"total_epochs": 7}, 35)])
def test_explicit_horizon_overrides_the_trainer(tmp_path, kwargs, expected) -> None:
    model = TinyNet(**kwargs)
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, _loader())
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == expected


def test_total_epochs_respects_gradient_accumulation(tmp_path) -> None:
    model = TinyNet(total_epochs=4)
    trainer = _trainer(tmp_path, max_epochs=1, accumulate_grad_batches=2)
    trainer.fit(model, _loader())
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == 4 * 3  # ceil(5 / 2) steps per epoch


def test_infinite_horizon_is_a_clear_error(tmp_path) -> None:
    model = TinyNet()
    trainer = _trainer(tmp_path, max_epochs=-1, max_steps=-1, max_time={"seconds": 1})
    with pytest.raises(ConfigurationError, match="finite training horizon"):
        trainer.fit(model, _loader())


def test_dropout_reaches_every_dropout_module(tmp_path) -> None:
    model = TinyNet(preset=2)  # dropout 0.1
    touched = model.apply_dropout()
    ps = [m.p for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    assert len(ps) >= 4 and all(p == 0.1 for p in ps)
    mhas = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    assert len(mhas) == 2 and all(m.dropout == 0.1 for m in mhas)
    assert "attn" in touched and "block.self_attn" in touched and "net.3" in touched


def test_dropout_is_set_when_training_starts(tmp_path) -> None:
    model = TinyNet(preset=1)  # dropout 0.0
    assert model.net[3].p == 0.5
    _trainer(tmp_path, max_epochs=1).fit(model, _loader())
    assert model.net[3].p == 0.0 and model.attn.dropout == 0.0


def test_label_smoothing_helper() -> None:
    model = TinyNet(preset=1)  # label smoothing 0.2
    logits, target = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    assert model.label_smoothing == 0.2
    torch.testing.assert_close(model.cross_entropy(logits, target), F.cross_entropy(logits, target, label_smoothing=0.2))
    assert not torch.allclose(model.cross_entropy(logits, target), F.cross_entropy(logits, target))


def test_exclude_bias_and_norm(tmp_path) -> None:
    model = TinyNet(exclude_bias_and_norm=True)
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, _loader())
    groups = trainer.optimizers[0].param_groups
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[1]["weight_decay"] == 0.0
    assert id(model.net[0].weight) in decayed and id(model.net[0].bias) not in decayed
    assert id(model.net[1].weight) not in decayed  # LayerNorm scale
    all_params = {id(p) for g in groups for p in g["params"]}
    assert all_params == {id(p) for p in model.parameters()}


def test_learning_rate_monitor_sees_the_schedule(tmp_path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    monitor = LearningRateMonitor(logging_interval="step")
    trainer = _trainer(tmp_path, max_epochs=2, logger=CSVLogger(tmp_path), callbacks=[monitor], log_every_n_steps=1)
    trainer.fit(TinyNet(), _loader())
    assert list(monitor.lrs) == ["lr-nadamw"]
    lrs = monitor.lrs["lr-nadamw"]
    assert lrs[0] == 0.0 and max(lrs) == pytest.approx(NADAMW_LIST[0].lr)


def test_resume_in_pieces_equals_uninterrupted(tmp_path) -> None:
    """A tuner trains a trial in several fit calls; with total_epochs the result is identical.

    Preset 4 has no dropout: dropout masks draw from the process RNG, which a plain
    Lightning checkpoint does not restore.
    """
    pl.seed_everything(0)
    whole = TinyNet(preset=4, total_epochs=4)
    init = {k: v.clone() for k, v in whole.state_dict().items()}
    _trainer(tmp_path / "a", max_epochs=4).fit(whole, _loader())

    piece = TinyNet(preset=4, total_epochs=4)
    piece.load_state_dict(init)
    first = _trainer(tmp_path / "b", max_epochs=2, enable_checkpointing=True)
    first.fit(piece, _loader())
    ckpt = tmp_path / "piece.ckpt"
    first.save_checkpoint(ckpt)
    resumed = TinyNet(preset=4, total_epochs=4)
    second = _trainer(tmp_path / "c", max_epochs=4)
    second.fit(resumed, _loader(), ckpt_path=str(ckpt))
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_bad_arguments() -> None:
    with pytest.raises(ConfigurationError, match="total_steps"):
        TinyNet(total_steps=0)
    with pytest.raises(ConfigurationError, match="total_epochs"):
        TinyNet(total_epochs=-3)
    with pytest.raises(KeyError, match="nadamw-list/1"):
        TinyNet(preset="best")
