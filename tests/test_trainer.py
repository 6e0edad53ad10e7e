"""fms_lightning._trainer: the Trainer options of one trial."""

from __future__ import annotations

from fms_lightning._trainer import TRIAL_TRAINER_DEFAULTS, trial_trainer_kwargs


def test_user_options_override_the_callers_and_the_librarys_defaults() -> None:
    kwargs = trial_trainer_kwargs({"accelerator": "gpu", "log_every_n_steps": 5}, logger=False, log_every_n_steps=1)
    assert kwargs["accelerator"] == "gpu" and kwargs["log_every_n_steps"] == 5 and kwargs["logger"] is False
    assert kwargs["deterministic"] is True and kwargs["enable_checkpointing"] is False
    assert set(TRIAL_TRAINER_DEFAULTS) <= set(kwargs)


def test_callbacks_go_around_the_users() -> None:
    kwargs = trial_trainer_kwargs({"callbacks": ["user"]}, before=["a", "b"], after=["z"])
    assert kwargs["callbacks"] == ["a", "b", "user", "z"]
    assert trial_trainer_kwargs({})["callbacks"] == []
