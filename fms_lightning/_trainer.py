"""The ``lightning.Trainer`` options of one trial, shared by the tuner's segments and the list sweep.

Building the options does not import Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["TRIAL_TRAINER_DEFAULTS", "trial_trainer_kwargs"]

#: What a trial's Trainer does unless the user's ``trainer_kwargs`` say otherwise:
#: train on the CPU, quietly, deterministically, without Lightning's own checkpoints.
TRIAL_TRAINER_DEFAULTS: Mapping[str, Any] = {
    "accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False,
    "enable_checkpointing": False, "num_sanity_val_steps": 0, "deterministic": True,
}


def trial_trainer_kwargs(user: Mapping[str, Any], *, before: Sequence[Any] = (), after: Sequence[Any] = (),
                         **defaults: Any) -> dict[str, Any]:
    """Keyword arguments for the ``lightning.Trainer`` of one trial.

    Args:
        user: The user's ``trainer_kwargs``; they override every default.
        before: Callbacks that run before the user's ``callbacks``.
        after: Callbacks that run after the user's ``callbacks``.
        **defaults: The caller's defaults on top of :data:`TRIAL_TRAINER_DEFAULTS`
            (e.g. ``logger=False``).

    Returns:
        :data:`TRIAL_TRAINER_DEFAULTS`, then ``defaults``, then ``user``, with
        ``callbacks`` set to ``[*before, *user callbacks, *after]``.

    >>> kwargs = trial_trainer_kwargs({"max_steps": 3, "deterministic": False}, logger=False, after=["cb"])
    >>> kwargs["max_steps"], kwargs["deterministic"], kwargs["logger"], kwargs["callbacks"]
    (3, False, False, ['cb'])
    """
    kwargs = {**TRIAL_TRAINER_DEFAULTS, **defaults, **user}
    kwargs["callbacks"] = [*before, *user.get("callbacks", []), *after]
    return kwargs
