"""FMSTuner end to end on a tiny task: budget, resume, crash recovery, failures, bad input."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from fms_lightning.errors import ConfigurationError, MissingMetricError, TrialFailedError
from fms_lightning.space import Choice
from fms_lightning.study import Study, TrialStatus
from fms_lightning.tuner import FMSTuner, sync
from tests import tiny_task

REPO = Path(__file__).resolve().parents[2]


def _tuner(tmp_path, method="dyhpo", budget=6, study="study", space=None, **kw):
    hub = tiny_task.make_hub(tmp_path / "hub")
    return FMSTuner(tiny_task.build, tiny_task.datamodule, space or tiny_task.space(hub), hub, monitor="val_acc",
                    mode="max", budget_epochs=budget, max_epochs_per_trial=3, method=method,
                    study_dir=tmp_path / study, seed=0, optimizer_kwargs=tiny_task.FAST_OPT, progress=False, **kw)


def _check_study(study_dir: Path, budget: int) -> None:
    """Contiguous epochs from 1, every snapshot on disk and whole, starting weights recorded, and
    exactly ``budget`` epochs recorded (as the study's own budget count says)."""
    from fms_lightning.study import check_safetensors_file

    with Study(study_dir, readonly=True) as study:
        total = 0
        for t in study.trials():
            epochs = [o.epoch for o in study.observations(t.trial_id)]
            assert epochs == list(range(1, len(epochs) + 1)), (t.trial_id, epochs)
            for o in study.observations(t.trial_id):
                check_safetensors_file(study.path / o.snapshot)
            if epochs:
                assert study.start_weights_path(t.trial_id) is not None
            total += len(epochs)
        assert total == budget == study.budget_used(tuner_only=True)


def test_fit_spends_the_budget_and_reports_the_best(tmp_path) -> None:
    result = _tuner(tmp_path, budget=7).fit()
    _check_study(tmp_path / "study", 7)
    assert result.budget_used == 7
    with Study(tmp_path / "study", readonly=True) as study:
        best = study.best("max")
    assert result.best_value == best.value and result.best_epoch == best.epoch
    assert result.best_hub_entry in ("mlp8", "mlp16") and result.best_config["model"] == result.best_hub_entry
    assert result.leaderboard[0].best_value == result.best_value
    assert Path(result.plot).stat().st_size > 10_000
    out = result.export_best(tmp_path / "export")
    from fms_lightning.study import load_weights_file

    weights = load_weights_file(out / "weights.safetensors")
    assert any(k.startswith("model.") for k in weights) and (out / "config.yaml").is_file()
    assert "mlp" in result.format_leaderboard()
    # TensorBoard: one run per trial, plus the tuner's own incumbent and surrogate curves.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted(p.name for p in (tmp_path / "study" / "tensorboard" / "trials").iterdir())
    assert runs == [f"trial_{t.trial_id:05d}" for t in Study(tmp_path / "study", readonly=True).trials()]
    acc = EventAccumulator(str(tmp_path / "study" / "tensorboard" / "tuner"))
    acc.Reload()
    incumbent = [e.value for e in acc.Scalars("tuner/incumbent")]
    assert incumbent == sorted(incumbent) and incumbent[-1] == pytest.approx(result.best_value)
    assert "tuner/surrogate_fit_loss" in acc.Tags()["scalars"]
    # Each trial's config is in TensorBoard (hparams.yaml and the HParams plugin), and its metrics by epoch.
    import yaml

    for t in Study(tmp_path / "study", readonly=True).trials():
        run = tmp_path / "study" / "tensorboard" / "trials" / f"trial_{t.trial_id:05d}"
        assert yaml.safe_load((run / "hparams.yaml").read_text()) == t.config
        acc = EventAccumulator(str(run))
        acc.Reload()
        epochs = [e.step for e in acc.Scalars("by_epoch/val_acc")]
        with Study(tmp_path / "study", readonly=True) as study:
            assert epochs == [o.epoch for o in study.observations(t.trial_id)]
        assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")


def test_hub_weights_are_the_starting_weights(tmp_path) -> None:
    _tuner(tmp_path, budget=2).fit()
    hub = tiny_task.make_hub(tmp_path / "hub")
    with Study(tmp_path / "study", readonly=True) as study:
        for t in study.trials():
            w0 = study.load_snapshot(study.start_weights_path(t.trial_id))
            ref = hub[t.hub_entry].state_dict()
            assert all(torch.equal(w0[f"model.{k}"], v) for k, v in ref.items())


def test_fit_again_continues_without_repeating(tmp_path) -> None:
    _tuner(tmp_path, budget=4).fit()
    result = _tuner(tmp_path, budget=7).fit()
    _check_study(tmp_path / "study", 7)
    assert result.budget_used == 7
    result = _tuner(tmp_path, budget=7).fit()  # nothing left to do
    _check_study(tmp_path / "study", 7)


@pytest.mark.parametrize("gmn_training", ["readout", "full"])
def test_fit_again_continues_a_study_with_a_trained_gmn(tmp_path, gmn_training) -> None:
    """The saved optimizer names snapshots by path; the continued study rebuilds their graphs."""
    first = _tuner(tmp_path, method="fms-gmn", budget=4, gmn_training=gmn_training)
    first.fit()
    state = first.optimizer.state_dict()
    assert state["gmn_training"] == gmn_training
    assert any("path" in g for g in state["featurizer"]["graphs"])
    again = _tuner(tmp_path, method="fms-gmn", budget=7, gmn_training=gmn_training)
    result = again.fit()
    _check_study(tmp_path / "study", 7)
    assert result.budget_used == 7
    assert again.optimizer.featurizer.keys[: len(state["featurizer"]["keys"])] == state["featurizer"]["keys"]


def test_resume_in_segments_equals_straight_training(tmp_path) -> None:
    """1+1+1 epochs through the tuner's resume path == 3 epochs in one go, same seed."""
    config = {"model": "mlp16", "lr": 0.05, "batch_size": 16}
    finals = []
    for name, targets in (("pieces", (1, 2, 3)), ("straight", (3,))):
        tuner = _tuner(tmp_path, study=name)
        with Study(tmp_path / name) as study:
            sid = study.add_trial(config, "mlp16", source="tuner")
            for target in targets:
                tiny_task.train_segment(tuner, study, sid, config, target)
            finals.append(study.load_snapshot(study.observations(sid)[-1].snapshot))
            assert [o.epoch for o in study.observations(sid)] == [1, 2, 3]
    for k in finals[0]:
        torch.testing.assert_close(finals[0][k], finals[1][k], rtol=1e-6, atol=1e-7, msg=k)


KILLABLE = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from tests import tiny_task
    from fms_lightning.tuner import FMSTuner
    hub = tiny_task.make_hub(__import__("pathlib").Path({hub!r}))
    FMSTuner(tiny_task.build, tiny_task.datamodule, tiny_task.space(hub), hub, monitor="val_acc", mode="max",
             budget_epochs={budget}, max_epochs_per_trial=3, method="dyhpo", study_dir={study!r}, seed=0,
             optimizer_kwargs=tiny_task.FAST_OPT, progress=False).fit()
    print("finished", flush=True)
    """
)


def test_sigkill_and_rerun_loses_nothing(tmp_path) -> None:
    budget = 8
    code = KILLABLE.format(repo=str(REPO), hub=str(tmp_path / "hub"), budget=budget, study=str(tmp_path / "study"))
    tiny_task.make_hub(tmp_path / "hub")
    rng = random.Random(0)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        # Wait until the study exists, then kill at a random moment of the tuning.
        deadline = time.time() + 120
        while not (tmp_path / "study" / "study.sqlite").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.2, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "finished" in done.stdout, done.stderr[-2000:]
    _check_study(tmp_path / "study", budget)


def test_failing_trials_are_recorded_and_the_study_goes_on(tmp_path) -> None:
    hub = tiny_task.make_hub(tmp_path / "hub")
    space = tiny_task.space(hub, fail=Choice(values=("raise", "nan", "none")))
    result = _tuner(tmp_path, budget=6, space=space, max_consecutive_failures=50).fit()
    with Study(tmp_path / "study", readonly=True) as study:
        failed = study.trials(TrialStatus.FAILED)
        assert failed, "some trials should have failed"
        reasons = {t.reason for t in failed}
        assert all(t.config["fail"] in ("raise", "nan") for t in failed)
        assert any("planned failure" in r for r in reasons) or any("non-finite" in r for r in reasons)
    assert result.best_config["fail"] == "none"


def test_every_trial_failing_raises_with_the_reasons(tmp_path) -> None:
    hub = tiny_task.make_hub(tmp_path / "hub")
    space = tiny_task.space(hub, fail=Choice(values=("raise",)))
    with pytest.raises(TrialFailedError, match="planned failure"):
        _tuner(tmp_path, space=space, max_consecutive_failures=3).fit()


def test_bad_inputs_get_clear_errors(tmp_path) -> None:
    hub = tiny_task.make_hub(tmp_path / "hub")
    common = dict(monitor="val_acc", budget_epochs=3, max_epochs_per_trial=2, study_dir=tmp_path / "s")
    with pytest.raises(ConfigurationError, match="'min' or 'max'"):
        FMSTuner(tiny_task.build, tiny_task.datamodule, tiny_task.space(hub), hub, mode="maximize", **common)
    with pytest.raises(ConfigurationError, match="at least one epoch"):
        FMSTuner(tiny_task.build, tiny_task.datamodule, tiny_task.space(hub), hub, mode="max",
                 **(common | {"budget_epochs": 0}))
    with pytest.raises(ConfigurationError, match="no hub was given"):
        FMSTuner(tiny_task.build, tiny_task.datamodule, tiny_task.space(hub), None, mode="max", **common)
    with pytest.raises(ConfigurationError, match="Unknown method"):
        FMSTuner(tiny_task.build, tiny_task.datamodule, tiny_task.space(hub), hub, mode="max", method="bohb", **common)
    not_lightning = FMSTuner(lambda c, e: e.build(), tiny_task.datamodule, tiny_task.space(hub), hub, mode="max",
                             method="dyhpo", progress=False, optimizer_kwargs=tiny_task.FAST_OPT, **common)
    with pytest.raises(ConfigurationError, match="must return a LightningModule"):
        not_lightning.fit()
    never_logged = FMSTuner(tiny_task.build, tiny_task.datamodule, tiny_task.space(hub), hub, mode="max",
                            method="dyhpo", progress=False, optimizer_kwargs=tiny_task.FAST_OPT,
                            **(common | {"monitor": "val_f1", "study_dir": tmp_path / "s2"}))
    with pytest.raises(MissingMetricError, match=r"val_f1.*val_acc"):
        never_logged.fit()


def test_runs_recorded_by_the_callback_pretrain_the_surrogate(tmp_path) -> None:
    """A user's ordinary Trainer.fit with WeightSnapshot feeds later tuning (fms-gmn, with weights)."""
    import lightning.pytorch as pl

    from fms_lightning.callbacks import WeightSnapshot

    hub = tiny_task.make_hub(tmp_path / "hub")
    recorded = [({"model": "mlp8", "lr": 0.05, "batch_size": 16}, True), ({"lr": 0.05, "width": 3}, False)]
    for config, _ in recorded:
        module = tiny_task.TinyModule(hub["mlp8"].build(), config["lr"])
        trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[WeightSnapshot(tmp_path / "study", monitor="val_acc", config=config)])
        trainer.fit(module, datamodule=tiny_task.TinyData())
    tuner = _tuner(tmp_path, method="fms-gmn", budget=2)
    with Study(tmp_path / "study") as study:
        runs = sync.recorded_runs(study, tuner.space, monitor="val_acc", mode="max", max_epochs=2,
                                  method=tuner.method)
    assert len(runs) == 1  # the run whose config does not fit the space is skipped
    assert len(runs[0]["weights"]) == 3 and len(runs[0]["curve"]) == 2  # W_0..W_2 and y_1, y_2
    result = tuner.fit()  # a fresh study state: pretrains, then tunes
    assert result.budget_used == 2


def test_a_study_from_before_committed_checkpoints_is_refused_clearly(tmp_path) -> None:
    _tuner(tmp_path, budget=2).fit()
    with Study(tmp_path / "study") as study:
        study.set_meta("schema_version", 1)  # as written by the earlier development version
    with pytest.raises(ConfigurationError, match="earlier development version.*new study_dir"):
        _tuner(tmp_path, budget=4).fit()


def test_a_segment_whose_worker_keeps_dying_fails_its_trial_after_the_retries(tmp_path) -> None:
    from fms_lightning._parallel import LostWorkerRetries
    from fms_lightning.executors import LostWorker
    from fms_lightning.tuner._loop import rerun_or_fail
    from fms_lightning.tuner.segment import SegmentSpec

    spec, retries = SegmentSpec(1, {"lr": 0.1}, 0, 1), LostWorkerRetries(2)
    assert rerun_or_fail(spec, LostWorker("WorkerCrashedError: a"), retries) is None
    assert rerun_or_fail(spec, LostWorker("WorkerCrashedError: b"), retries) is None
    assert rerun_or_fail(SegmentSpec(2, {"lr": 0.2}, 0, 1), LostWorker("x"), retries) is None  # counted per trial
    failed = rerun_or_fail(spec, LostWorker("NodeDiedError: c"), retries)
    assert failed is not None and failed.checkpoint is None and failed.records == ()
    assert "lost 3 times" in failed.error and "NodeDiedError: c" in failed.error
    with pytest.raises(ConfigurationError, match="max_lost_worker_retries"):
        _tuner(tmp_path, max_lost_worker_retries=-1)


def test_pace_waits_only_for_segments_due_before_a_refit(monkeypatch) -> None:
    from fms_lightning import executors
    from fms_lightning.tuner.segment import SegmentSpec

    clock = [100.0]
    monkeypatch.setattr(executors.time, "monotonic", lambda: clock[0])
    pace = executors.RefitPacer()
    a, b = SegmentSpec(1, {}, 0, 1), SegmentSpec(2, {}, 0, 1)
    assert pace.wait_seconds([3.0]) == 0.0  # nothing known yet: take only what has finished
    pace.submitted(a)
    pace.submitted(b)
    clock[0] = 101.0
    pace.finished(a, 1.0)  # segments take about 1 s
    assert pace.wait_seconds([3.0]) == pytest.approx(0.25)  # b is due now: wait a little for it
    assert pace.wait_seconds([0.1]) == pytest.approx(0.1)  # never longer than a refit
    pace.finished(b, 1.0)
    pace.submitted(a)  # a new 1 s segment, with refits of 3 s: wait for it
    assert pace.wait_seconds([3.0]) == pytest.approx(1.25)
    assert pace.wait_seconds([0.5]) == 0.0  # a refit is quicker than waiting: suggest now
    pace.finished(a, None)  # lost: no duration
    for _ in range(10):  # long epochs (60 s) against 3 s refits: never wait
        pace.submitted(b)
        clock[0] += 60.0
        pace.finished(b, 60.0)
    pace.submitted(b)
    assert pace.wait_seconds([3.0]) == 0.0


def test_a_datamodule_class_is_instantiated_per_trial_with_config_values(tmp_path) -> None:
    """FMSTuner(build, MyDataModule, ...) works as in a recipe (it used to fail every trial)."""
    seen = []

    class Data(tiny_task.TinyData):
        def __init__(self, batch_size: int = 16, shuffle_seed: int = 0) -> None:
            super().__init__(batch_size)
            seen.append(batch_size)

    hub = tiny_task.make_hub(tmp_path / "hub")
    result = FMSTuner(tiny_task.build, Data, tiny_task.space(hub), hub, monitor="val_acc", mode="max",
                      budget_epochs=3, max_epochs_per_trial=2, method="dyhpo", study_dir=tmp_path / "study",
                      optimizer_kwargs=tiny_task.FAST_OPT, progress=False).fit()
    assert result.budget_used == 3 and seen
    with Study(tmp_path / "study", readonly=True) as study:
        assert {t.config["batch_size"] for t in study.trials()} >= set(seen[:1])
        assert not study.trials(TrialStatus.FAILED)


def test_a_datamodule_class_needing_what_the_space_lacks_is_refused_at_construction(tmp_path) -> None:
    class Data(tiny_task.TinyData):
        def __init__(self, root: str, batch_size: int = 16) -> None:
            super().__init__(batch_size)

    hub = tiny_task.make_hub(tmp_path / "hub")
    with pytest.raises(ConfigurationError, match=r"requires \['root'\].*lambda config"):
        FMSTuner(tiny_task.build, Data, tiny_task.space(hub), hub, monitor="val_acc", mode="max", budget_epochs=3,
                 max_epochs_per_trial=2, study_dir=tmp_path / "study")
    with pytest.raises(ConfigurationError, match="LightningDataModule class"):
        FMSTuner(tiny_task.build, 42, tiny_task.space(hub), hub, monitor="val_acc", mode="max", budget_epochs=3,
                 max_epochs_per_trial=2, study_dir=tmp_path / "study")


def test_consecutive_failures_show_the_first_failing_trials_traceback(tmp_path) -> None:
    hub = tiny_task.make_hub(tmp_path / "hub")
    space = tiny_task.space(hub, fail=Choice(values=("raise",)))
    with pytest.raises(TrialFailedError) as info:
        _tuner(tmp_path, space=space, max_consecutive_failures=2).fit()
    message = str(info.value)
    assert "2 trials in a row failed" in message
    assert "Traceback of trial 1" in message and "in training_step" in message and "planned failure" in message
    saved = tmp_path / "study" / "failures" / "trial_00001.txt"
    assert str(saved) in message and "in training_step" in saved.read_text()


def test_resuming_with_other_settings_names_the_setting_that_differs(tmp_path) -> None:
    _tuner(tmp_path, budget=1).fit()
    hub = tiny_task.make_hub(tmp_path / "hub")
    other = FMSTuner(tiny_task.build, tiny_task.datamodule, tiny_task.space(hub), hub, monitor="val_acc", mode="max",
                     budget_epochs=2, max_epochs_per_trial=2, method="dyhpo", study_dir=tmp_path / "study",
                     optimizer_kwargs=tiny_task.FAST_OPT, progress=False)
    with pytest.raises(ConfigurationError, match=r"max_epochs_per_trial is 3 in the study, 2 here\. Use a new") as info:
        other.fit()
    assert "'space'" not in str(info.value) and "seed" not in str(info.value)


def test_build_is_called_once_per_hub_entry_by_the_tuner_and_once_per_segment(tmp_path) -> None:
    calls: Counter[str] = Counter()

    def build(config, entry):
        calls[entry.name] += 1
        return tiny_task.build(config, entry)

    hub = tiny_task.make_hub(tmp_path / "hub")
    tuner = FMSTuner(build, tiny_task.datamodule, tiny_task.space(hub), hub, monitor="val_acc", mode="max",
                     budget_epochs=3, max_epochs_per_trial=2, method="fms-gmn", study_dir=tmp_path / "study",
                     optimizer_kwargs=tiny_task.FAST_OPT, progress=False)
    tuner.fit()
    segments = Counter(s.spec.config["model"] for s in tuner.segments)
    assert sum(segments.values()) >= 2
    for name in hub.names:
        assert calls[name] == (1 if name in tuner.start_weights.cache else 0) + segments[name], (name, calls, segments)


class _TwoMetrics(tiny_task.TinyModule):
    """Logs val_loss as well as val_acc."""

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self(x), y))


def _record(study_dir, hub, *, epochs=2, module_cls=tiny_task.TinyModule, **snapshot):
    import lightning.pytorch as pl

    from fms_lightning.callbacks import WeightSnapshot

    module = module_cls(hub["mlp8"].build(), 0.05)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[WeightSnapshot(study_dir, **snapshot)])
    trainer.fit(module, datamodule=tiny_task.TinyData())


def _pretrained_runs(monkeypatch):
    from fms_lightning.optimizer import FMSOptimizer

    calls = []
    original = FMSOptimizer.pretrain

    def spy(self, trials, **kw):
        trials = list(trials)
        calls.append(trials)
        return original(self, trials, **kw)

    monkeypatch.setattr(FMSOptimizer, "pretrain", spy)
    return calls


def test_weight_snapshot_hub_entry_fills_the_hub_dimension(tmp_path, monkeypatch, caplog) -> None:
    """The README's WeightSnapshot(..., config=hparams, hub_entry=...) is learned from (it used to be skipped)."""
    hub = tiny_task.make_hub(tmp_path / "hub")
    _record(tmp_path / "study", hub, monitor="val_acc", config={"lr": 0.05, "batch_size": 16, "other": 1},
            hub_entry=hub["mlp8"], epochs=4)  # longer than the tuner's trials: its first 3 epochs are used
    calls = _pretrained_runs(monkeypatch)
    with caplog.at_level("WARNING", logger="fms_lightning.tuner"):
        _tuner(tmp_path, method="fms-gmn", budget=1).fit()
    assert len(calls) == 1 and len(calls[0]) == 1
    assert calls[0][0]["config"] == {"model": "mlp8", "lr": 0.05, "batch_size": 16}
    assert len(calls[0][0]["curve"]) == 3 and len(calls[0][0]["weights"]) == 4
    assert not [r for r in caplog.records if r.name == "fms_lightning.tuner" and r.levelname == "WARNING"]


def test_recorded_runs_are_learned_in_the_tuners_monitor_with_a_warning(tmp_path, monkeypatch, caplog) -> None:
    hub = tiny_task.make_hub(tmp_path / "hub")
    config = {"model": "mlp8", "lr": 0.05, "batch_size": 16}
    _record(tmp_path / "study", hub, module_cls=_TwoMetrics, monitor="val_acc", mode="max", config=config)
    _record(tmp_path / "study", hub, monitor="val_acc", config=config)  # never logs val_loss
    calls = _pretrained_runs(monkeypatch)
    tuner = FMSTuner(tiny_task.build, tiny_task.datamodule, tiny_task.space(hub), hub, monitor="val_loss", mode="min",
                     budget_epochs=1, max_epochs_per_trial=3, method="dyhpo", study_dir=tmp_path / "study",
                     optimizer_kwargs=tiny_task.FAST_OPT, progress=False)
    with caplog.at_level("WARNING", logger="fms_lightning.tuner"):
        with pytest.raises(MissingMetricError):  # TinyModule (the tuner's build) logs no val_loss; pretraining came first
            tuner.fit()
    with Study(tmp_path / "study", readonly=True) as study:
        losses = [o.metrics["val_loss"] for o in study.observations(1)]
        accs = [o.value for o in study.observations(1)]
    assert len(calls) == 1 and [r["curve"] for r in calls[0]] == [losses] and losses != accs
    text = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "Not learning from recorded trial 2" in text and "'val_loss'" in text
    assert "Recorded trials 1 (val_acc, mode max)" in text


def test_runs_recorded_after_tuning_are_learned_on_the_next_fit(tmp_path, monkeypatch, caplog) -> None:
    hub = tiny_task.make_hub(tmp_path / "hub")
    calls = _pretrained_runs(monkeypatch)
    _tuner(tmp_path, budget=2).fit()
    assert calls == []
    _record(tmp_path / "study", hub, monitor="val_acc", config={"lr": 0.05, "batch_size": 16}, hub_entry="mlp16")
    with caplog.at_level("WARNING", logger="fms_lightning.tuner"):
        assert _tuner(tmp_path, budget=3).fit().budget_used == 3
    assert len(calls) == 1 and calls[0][0]["config"]["model"] == "mlp16"
    assert any("recorded into the study since it was last tuned" in r.getMessage() for r in caplog.records)
    _tuner(tmp_path, budget=4).fit()
    assert len(calls) == 1  # already learned from: not again
