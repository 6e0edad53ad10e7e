"""`fms-lightning tune` and `status`: recipes are validated, run, and summarised."""

from __future__ import annotations

import pytest
import yaml

from fms_lightning.cli import main
from fms_lightning.errors import ConfigurationError
from fms_lightning.recipe_tune import validate_recipe
from fms_lightning.recipes import load_recipe
from tests import tiny_task


def test_shipped_recipe_is_valid_and_uses_fms_gmn() -> None:
    cfg = validate_recipe(load_recipe("digits_hub"))
    assert cfg.method == "fms-gmn" and cfg.search_space.model["values"] == "all"
    assert set(cfg.search_space) == {"model", "dropout", "batch_size", "lr", "momentum", "weight_decay"}


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("budget_epoch=3", r"'budget_epoch'.*accepted keys are .*budget_epochs"),
        ("budget_epochs=lots", r"'budget_epochs'.*expected a value of type int"),
        ("progress=maybe", r"'progress'.*type bool"),
    ],
)
def test_bad_recipes_name_the_key(override: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        validate_recipe(load_recipe("digits_hub", [override]))


def test_tune_and_status_on_a_user_module(tmp_path, capsys) -> None:
    tiny_task.make_hub(tmp_path / "hub")
    manifest = {"entries": [
        {"name": f"mlp{w}", "factory": "tests.tiny_task:make_mlp", "kwargs": {"width": w}, "weights": f"mlp{w}.safetensors"}
        for w in (8, 16)
    ]}
    (tmp_path / "hub" / "hub.yaml").write_text(yaml.safe_dump(manifest))
    recipe = {
        "study_dir": str(tmp_path / "study"), "method": "dyhpo", "budget_epochs": 4, "max_epochs_per_trial": 2,
        "hub": str(tmp_path / "hub"), "module": "tests.tiny_task:build", "datamodule": "tests.tiny_task:datamodule",
        "search_space": {"model": {"type": "hub", "values": "all"}, "lr": {"type": "log_uniform", "low": 1e-3, "high": 0.3},
                         "batch_size": {"type": "choice", "values": [16, 32]}},
        "optimizer": tiny_task.FAST_OPT, "progress": False, "trusted_factories": ["tests.tiny_task:make_mlp"],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    # The datamodule may be named as a class: batch_size from the config reaches its __init__.
    assert main(["tune", str(path), "seed=1", "datamodule=tests.tiny_task:TinyData"]) == 0
    out = capsys.readouterr().out
    assert "Leaderboard" in out and "Best: val_acc=" in out and "hub model 'mlp" in out
    assert main(["status", str(tmp_path / "study")]) == 0
    status = capsys.readouterr().out
    assert "budget used 4 epochs" in status and "method dyhpo" in status and "best:" in status


def test_status_of_a_missing_study_is_a_clear_error(tmp_path, capsys) -> None:
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert "No study" in capsys.readouterr().err


def test_datamodule_class_gets_the_config_values_it_accepts() -> None:
    from fms_lightning.recipe_tune import _datamodule_factory

    make = _datamodule_factory(tiny_task.TinyData)
    assert make({"batch_size": 32, "lr": 0.1, "model": "mlp8"}).batch_size == 32
    assert _datamodule_factory(tiny_task.datamodule) is tiny_task.datamodule
    with pytest.raises(ConfigurationError, match="datamodule"):
        _datamodule_factory(42)


def test_recipe_executor_keys_reach_the_tuner(tmp_path) -> None:
    from fms_lightning.recipe_tune import tuner_from_recipe

    def recipe(**over):
        return {"hub": None, "search_space": {"lr": {"type": "log_uniform", "low": 1e-3, "high": 0.1}},
                "study_dir": str(tmp_path / "s"), **over}

    tuner, plain = tuner_from_recipe(recipe(executor="ray", max_concurrent=2, storage=f"file://{tmp_path}/bucket",
                                            ray_address="auto"))
    assert (tuner.executor, tuner.max_concurrent, tuner.ray_address) == ("ray", 2, "auto")
    assert tuner.storage.root == f"file://{tmp_path}/bucket" and plain["max_concurrent"] == 2
    local, _ = tuner_from_recipe(recipe())
    assert local.executor == "local" and local.storage.root == str(tmp_path / "s")
    with pytest.raises(ConfigurationError, match="needs executor='ray'"):
        tuner_from_recipe(recipe(max_concurrent=3))
    with pytest.raises(ConfigurationError, match="executor must be one of"):
        tuner_from_recipe(recipe(executor="spark"))


@pytest.mark.parametrize("mode", ["frozen", "full"])
def test_recipe_gmn_training_reaches_the_optimizer(tmp_path, mode) -> None:
    from fms_lightning.recipe_tune import tuner_from_recipe

    tuner, plain = tuner_from_recipe({"hub": None, "method": "fms-gmn", "gmn_training": mode,
                                      "search_space": {"lr": {"type": "log_uniform", "low": 1e-3, "high": 0.1}},
                                      "study_dir": str(tmp_path / "s")})
    assert plain["gmn_training"] == mode
    assert tuner._new_optimizer().gmn_training.value == mode


def _tiny_hub_recipe(tmp_path, **over):
    tiny_task.make_hub(tmp_path / "hub")
    manifest = {"entries": [{"name": "mlp8", "factory": "tests.tiny_task:make_mlp", "weights": "mlp8.safetensors"}]}
    (tmp_path / "hub" / "hub.yaml").write_text(yaml.safe_dump(manifest))
    return {"study_dir": str(tmp_path / "study"), "hub": str(tmp_path / "hub"), "module": "tests.tiny_task:build",
            "datamodule": "tests.tiny_task:datamodule", "method": "random", "budget_epochs": 1,
            "max_epochs_per_trial": 1, "progress": False,
            "search_space": {"model": {"type": "hub", "values": "all"},
                             "lr": {"type": "log_uniform", "low": 1e-3, "high": 0.3}}, **over}


def test_a_hub_folder_factory_needs_trust_from_the_recipe_or_the_command_line(tmp_path, capsys) -> None:
    from fms_lightning.errors import HubError
    from fms_lightning.recipe_tune import tuner_from_recipe

    with pytest.raises(HubError, match=r"'mlp8'.*'tests.tiny_task:make_mlp', which is not trusted.*trusted_factories"):
        tuner_from_recipe(_tiny_hub_recipe(tmp_path))
    tuner, _ = tuner_from_recipe(_tiny_hub_recipe(tmp_path, trusted_factories=["tests.tiny_task:make_mlp"]))
    assert tuner.hub.names == ["mlp8"]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_tiny_hub_recipe(tmp_path)))
    assert main(["tune", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HubError" in err and "--trust-hub-code" in err
    assert main(["tune", str(path), "--trust-hub-code"]) == 0
    assert "Best: val_acc=" in capsys.readouterr().out


def test_max_consecutive_failures_can_be_set_from_a_recipe(tmp_path) -> None:
    from fms_lightning.recipe_tune import tuner_from_recipe

    recipe = _tiny_hub_recipe(tmp_path, trusted_factories=["tests.tiny_task:make_mlp"])
    assert tuner_from_recipe(recipe)[0].max_consecutive_failures == 5
    assert tuner_from_recipe({**recipe, "max_consecutive_failures": 2})[0].max_consecutive_failures == 2
    for bad, match in ((0, ">= 1"), ("many", "type int")):
        with pytest.raises(ConfigurationError, match=match):
            tuner_from_recipe({**recipe, "max_consecutive_failures": bad})


def test_an_empty_override_means_what_it_says() -> None:
    cfg = load_recipe("digits_hub", ["search_space={}", "optimizer={}"])
    assert dict(cfg.search_space) == {} and dict(cfg.optimizer) == {}
    with pytest.raises(ConfigurationError, match="search_space is empty"):
        validate_recipe(cfg)
    assert set(load_recipe("digits_hub", ["search_space.lr.low=0.01"]).search_space) == {
        "model", "dropout", "batch_size", "lr", "momentum", "weight_decay"}  # a non-empty value still merges


def test_every_tuner_argument_is_a_recipe_key() -> None:
    """The recipe schema is read from FMSTuner's signature: adding an argument adds a recipe key."""
    import dataclasses
    import inspect

    from fms_lightning.recipe_tune import TuneRecipe
    from fms_lightning.tuner import FMSTuner

    keys = {f.name for f in dataclasses.fields(TuneRecipe)}
    renamed = {"build": "module", "space": "search_space", "trainer_kwargs": "trainer",
               "optimizer_kwargs": "optimizer"}
    arguments = list(inspect.signature(FMSTuner.__init__).parameters)[1:]
    missing = [a for a in arguments if renamed.get(a, a) not in keys]
    assert not missing, f"FMSTuner arguments without a recipe key: {missing}"
    assert keys - {renamed.get(a, a) for a in arguments} == {"trusted_factories", "trust_hub_code", "threads"}


def test_the_late_tuner_arguments_can_be_set_from_a_recipe(tmp_path) -> None:
    from fms_lightning.recipe_tune import tuner_from_recipe

    recipe = _tiny_hub_recipe(tmp_path, trusted_factories=["tests.tiny_task:make_mlp"])
    tuner = tuner_from_recipe({**recipe, "max_lost_worker_retries": 1, "resources_per_trial": {"num_cpus": 2}})[0]
    assert tuner.max_lost_worker_retries == 1 and dict(tuner.resources_per_trial) == {"num_cpus": 2}
    with pytest.raises(ConfigurationError, match="max_lost_worker_retries.*type int"):
        validate_recipe({**recipe, "max_lost_worker_retries": "often"})
