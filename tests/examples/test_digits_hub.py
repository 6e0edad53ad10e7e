"""The embedded default: the digits hub builds, and the shipped recipe tunes over it with FMS-GMN."""

from __future__ import annotations

import io

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


def test_hub_builds_once_and_the_default_recipe_runs(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FMS_LIGHTNING_CACHE", str(tmp_path / "cache"))
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
