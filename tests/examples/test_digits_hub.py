"""The embedded default: the digits hub builds, and the shipped recipe tunes over it with FMS-GMN."""

from __future__ import annotations

import io

import pytest
import torch

from fms_lightning.examples.digits_hub import HUB_SPEC, digits_hub, digits_split
from fms_lightning.examples.hub_models import ARCHITECTURES
from fms_lightning.recipe_tune import run_tune_recipe
from fms_lightning.recipes import load_recipe
from fms_lightning.study import Study


def test_target_is_a_different_part_and_a_transform() -> None:
    xp, _ = digits_split("pretrain")
    xt, _ = digits_split("target")
    assert xp.shape[1:] == xt.shape[1:] == (1, 8, 8) and abs(len(xp) - len(xt)) <= 1
    flat_p = {row.tobytes() for row in xp.reshape(len(xp), -1)}
    # No target image (un-mirrored) appears in the pretraining part.
    assert not any(row.tobytes() in flat_p for row in xt[..., ::-1].copy().reshape(len(xt), -1))


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("hub-cache"))


def test_hub_builds_once_and_the_default_recipe_runs(tmp_path, monkeypatch, hub_cache) -> None:
    monkeypatch.setenv("FMS_LIGHTNING_CACHE", hub_cache)
    log = io.StringIO()
    hub = digits_hub(stream=log)
    assert len(hub) == len(HUB_SPEC) >= 8
    assert {e.kwargs["arch"] for e in hub} == set(ARCHITECTURES)
    assert log.getvalue().count("[digits hub") == len(HUB_SPEC)  # a progress line per model
    accs = [e.metadata["pretrain_val_acc"] for e in hub]
    assert max(accs) > 0.9 and min(accs) < 0.6  # members of varied quality
    hub_again = digits_hub(stream=log)  # cached: no rebuild
    assert log.getvalue().count("[digits hub") == len(HUB_SPEC) and hub_again.names == hub.names
    for entry in hub:
        assert entry.build()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)

    cfg = load_recipe("digits_hub", [f"study_dir={tmp_path / 'study'}", "budget_epochs=4", "progress=false",
                                     "optimizer.n_candidates=32", "optimizer.initial_steps=30"])
    out = io.StringIO()
    result = run_tune_recipe(cfg, stream=out)
    assert "Leaderboard" in out.getvalue() and result.best_hub_entry in hub.names
    with Study(tmp_path / "study", readonly=True) as study:
        assert study.budget_used() == 4


def test_demo_task_resumed_1_1_1_equals_3_straight(tmp_path, hub_cache) -> None:
    """On the demo task, with dropout and shuffling, three 1-epoch segments == one 3-epoch run."""
    from fms_lightning.examples.digits_hub import build_hub_classifier, target_datamodule
    from fms_lightning.space import HubChoice, SearchSpace, Uniform
    from fms_lightning.tuner import FMSTuner
    from tests import tiny_task

    hub = digits_hub(hub_cache, stream=io.StringIO())
    space = SearchSpace({"model": HubChoice(values=tuple(hub.names)), "lr": Uniform(0.01, 0.1)})
    config = {"model": "mlp-wide", "lr": 0.05, "momentum": 0.9, "dropout": 0.5, "batch_size": 32}
    finals = []
    for name, targets in (("pieces", (1, 2, 3)), ("straight", (3,))):
        tuner = FMSTuner(build_hub_classifier, target_datamodule, space, hub, monitor="val_acc", mode="max",
                         budget_epochs=3, max_epochs_per_trial=3, method="dyhpo", study_dir=tmp_path / name,
                         seed=7, progress=False)
        with Study(tmp_path / name) as study:
            sid = study.add_trial(config, "mlp-wide", source="tuner")
            for target in targets:
                tiny_task.train_segment(tuner, study, sid, config, target)
            finals.append(study.load_snapshot(study.observations(sid)[-1].snapshot))
    assert finals[0].keys() == finals[1].keys()
    for k in finals[0]:
        torch.testing.assert_close(finals[0][k], finals[1][k], rtol=1e-6, atol=1e-7, msg=k)


def test_the_target_data_is_read_once_and_each_datamodule_holds_its_own(monkeypatch) -> None:
    """The tuner builds a DataModule per segment: the file is parsed once, and nothing is shared
    between two of them (their tensors, nor a loader's shuffle, which draws on torch's global RNG)."""
    import sklearn.datasets

    from fms_lightning.examples import digits_hub as dh

    reads = []
    load = sklearn.datasets.load_digits
    monkeypatch.setattr(sklearn.datasets, "load_digits", lambda *a, **k: (reads.append(1), load(*a, **k))[1])
    dh._digits.cache_clear()
    dh._target_split.cache_clear()
    try:
        first, second = dh.target_datamodule({"batch_size": 16}), dh.target_datamodule({"batch_size": 16})
        assert len(reads) == 1
        x1, y1 = first.train_set.tensors
        x2, y2 = second.train_set.tensors
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.data_ptr() != x2.data_ptr()
        x1.zero_()  # a trial that changed its data in place changes no other trial's
        assert not torch.equal(x1, x2) and torch.equal(dh.target_datamodule({}).train_set.tensors[0], x2)
        orders = []
        for dm in (first, second):
            torch.manual_seed(3)
            orders.append([b[1].tolist() for b in dm.train_dataloader()])
        assert orders[0] == orders[1]  # the shuffle is drawn from the seed, not from an earlier loader
    finally:
        dh._digits.cache_clear()
        dh._target_split.cache_clear()
    x, y = digits_split("target")  # the cached reading is the uncached one
    x[:] = 0.0  # new writable arrays every call
    assert digits_split("target")[0].any()


def test_sklearn_arrays_are_read_once_and_handed_out_as_copies() -> None:
    from fms_lightning.examples.sklearn_data import load_arrays

    a = load_arrays("wine")
    a.x[:] = 0.0
    b = load_arrays("wine")
    assert b.x.any() and b.x.flags.writeable and b.num_classes == 3
