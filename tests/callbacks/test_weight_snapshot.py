"""WeightSnapshot inside an ordinary Trainer.fit: rows, snapshots, missing metrics, resume."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fms_lightning.callbacks import WeightSnapshot
from fms_lightning.errors import ConfigurationError
from fms_lightning.study import Study, TrialStatus


class Tiny(pl.LightningModule):
    def __init__(self, lr: float = 0.05, log_name: str = "val_acc"):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        acc = (self.net(x).argmax(-1) == y).float().mean()
        self.log(self.hparams.log_name, acc)
        self.log("val_other", 1.0 - acc)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=16), DataLoader(TensorDataset(x, y), batch_size=64)


def _trainer(tmp_path, callbacks, **kw):
    return pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=callbacks, **({"max_epochs": 3, "enable_checkpointing": False} | kw))


def test_standalone_run_is_recorded(tmp_path) -> None:
    torch.manual_seed(0)
    model = Tiny()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    cb = WeightSnapshot(tmp_path / "study", monitor="val_acc", config={"lr": 0.05, "note": "baseline"})
    _trainer(tmp_path, [cb]).fit(model, *_data())
    with Study(tmp_path / "study", readonly=True) as study:
        (trial,) = study.trials()
        assert trial.config == {"lr": 0.05, "note": "baseline"} and trial.status is TrialStatus.COMPLETED
        obs = study.observations(trial.trial_id)
        assert [o.epoch for o in obs] == [1, 2, 3]
        assert all(o.metrics["val_acc"] == o.value and "val_other" in o.metrics for o in obs)
        # W_{i,0} is the initial model; W_{i,3} is the final one (BatchNorm buffers included).
        w0 = study.load_snapshot(study.start_weights_path(trial.trial_id))
        w3 = study.load_snapshot(obs[-1].snapshot)
        for k, v in model.state_dict().items():
            assert torch.equal(w0[k], initial[k]) and torch.equal(w3[k], v), k
        # Snapshots of different epochs differ: weights really are per epoch.
        w1 = study.load_snapshot(obs[0].snapshot)
        assert not torch.equal(w1["net.0.weight"], w3["net.0.weight"])


def test_hparams_are_the_default_config(tmp_path) -> None:
    cb = WeightSnapshot(tmp_path / "s", monitor="val_acc")
    _trainer(tmp_path, [cb], max_epochs=1).fit(Tiny(lr=0.01), *_data())
    with Study(tmp_path / "s", readonly=True) as study:
        assert study.trials()[0].config == {"lr": 0.01, "log_name": "val_acc"}


def test_missing_metric_lists_what_was_logged(tmp_path) -> None:
    cb = WeightSnapshot(tmp_path / "s", monitor="val_accuracy")
    with pytest.raises(ConfigurationError, match=r"val_accuracy.*\['val_acc', 'val_other'\]"):
        _trainer(tmp_path, [cb], max_epochs=1).fit(Tiny(), *_data())


def test_every_n_epochs_and_fp16(tmp_path) -> None:
    cb = WeightSnapshot(tmp_path / "s", monitor="val_acc", every_n_epochs=2, fp16=True)
    _trainer(tmp_path, [cb], max_epochs=4).fit(Tiny(), *_data())
    with Study(tmp_path / "s", readonly=True) as study:
        obs = study.observations()
        # Every 2nd epoch is recorded; numbering is in epochs trained, so rows are 2 and 4.
        assert [o.epoch for o in obs] == [2, 4]
        assert study.load_snapshot(obs[0].snapshot)["net.0.weight"].dtype == torch.float16
        assert study.load_snapshot(obs[0].snapshot)["net.1.num_batches_tracked"].dtype == torch.int64


def test_resumed_trainer_continues_the_same_trial(tmp_path) -> None:
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = WeightSnapshot(tmp_path / "s", monitor="val_acc")
    _trainer(tmp_path, [first, ckpt_cb], max_epochs=2, enable_checkpointing=True).fit(Tiny(), *_data())
    second = WeightSnapshot(tmp_path / "s", monitor="val_acc")
    trainer = _trainer(tmp_path, [second, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
                       max_epochs=4, enable_checkpointing=True)
    trainer.fit(Tiny(), *_data(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert second.trial_id == first.trial_id == 1
    with Study(tmp_path / "s", readonly=True) as study:
        assert len(study.trials()) == 1
        assert [o.epoch for o in study.observations(1)] == [1, 2, 3, 4]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"monitor": ""}, "monitor"), ({"monitor": "val_acc", "every_n_epochs": 0}, "every_n_epochs"),
])
def test_arguments_are_validated_in_init(tmp_path, kwargs, match) -> None:
    with pytest.raises(ConfigurationError, match=match):
        WeightSnapshot(tmp_path, **kwargs)


def test_records_go_to_an_injected_sink(tmp_path) -> None:
    """A SnapshotSink takes the records instead of a study (the tuner's workers write files only)."""
    from fms_lightning.callbacks.weight_snapshot import SnapshotSink

    class Memory(SnapshotSink):
        def __init__(self):
            self.records, self.events = [], []

        def open(self):
            self.events.append("open")

        def new_trial(self, config, hub_entry, *, monitor, mode):
            self.events.append(("new", dict(config), hub_entry, monitor, mode))
            return 9

        def needs_start_weights(self, trial_id):
            return True

        def record(self, trial_id, epoch, value, metrics, wall, weights, *, fp16, contiguous):
            self.records.append((trial_id, epoch, value, sorted(weights) == sorted(model.state_dict()), fp16))

        def close(self, trial_id, *, interrupted):
            self.events.append(("close", trial_id, interrupted))

    torch.manual_seed(0)
    model, sink = Tiny(), Memory()
    cb = WeightSnapshot(sink, monitor="val_acc", mode="max", config={"lr": 0.05}, hub_entry="m", fp16=True)
    _trainer(tmp_path, [cb], max_epochs=2).fit(model, *_data())
    assert sink.events == ["open", ("new", {"lr": 0.05}, "m", "val_acc", "max"), ("close", 9, False)]
    assert [(t, e, v is None, ok, fp16) for t, e, v, ok, fp16 in sink.records] == [
        (9, 0, True, True, True), (9, 1, False, True, True), (9, 2, False, True, True)]
    assert cb.trial_id == 9 and not (tmp_path / "study").exists()
