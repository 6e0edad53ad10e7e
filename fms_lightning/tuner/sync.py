"""The study and the optimizer: the study's rows are the only durable record of a trial.

A trial has one id, the study's. The optimizer's saved state (``tuner_state``) holds
only what the rows cannot rebuild: its random stream, the surrogate, the weight encoder
and its cache of embeddings. On resume the optimizer is built from that state and is
handed every trial of the tuner again from the rows (:func:`load_optimizer`).

Writes that belong together are one transaction: a suggestion's row and the optimizer
state after it (:func:`start_segment`); a segment's rows, its checkpoint and the trial's
new status (:func:`commit_segment`).

The state is saved once per step, with the suggestion: what :func:`tell` adds to the
optimizer (the segment's values and snapshots) is in the rows already, and a resume
replays it from them in the order it was committed. The parts of the state that never
change once made (parameter graphs, their wirings, the frozen encoder) are stored once
each, by content key, in the study's ``tuner_blobs``; the per-step state names them.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from fms_lightning.errors import ConfigurationError, FMSError, SearchSpaceError, StudyError
from fms_lightning.optimizer import FMSOptimizer, Method
from fms_lightning.space import SearchSpace
from fms_lightning.storage import Storage
from fms_lightning.study import Study, TrialRecord
from fms_lightning.trial import Suggestion, TrialStatus
from fms_lightning.tuner.segment import SegmentResult, SegmentSpec

__all__ = ["TUNER", "commit_segment", "load_optimizer", "learn_recorded_runs", "recorded_runs", "save_state",
           "start_segment", "tell"]

log = logging.getLogger(__name__)

#: The ``source`` of the trials a tuner runs; every other trial of a study is a recorded run.
TUNER = "tuner"


def load_optimizer(make: Callable[[], FMSOptimizer], study: Study, *, pretrain: Callable[[FMSOptimizer], Any],
                   random: bool, max_epochs: int) -> FMSOptimizer:
    """The optimizer as the study left it: its stored state, and the tuner's trials from the rows.

    Without a usable stored state the optimizer is rebuilt from the rows alone (after
    ``pretrain`` on the recorded runs): that costs the surrogate's fit and the random
    stream (later suggestions differ from an uninterrupted run), never an observation.
    """
    trials = study.trials(source=TUNER)
    opt = make()
    try:
        state = study.load_tuner_state()
        if state is not None:
            opt.load_state_dict(_without_trials(state, study, trials), blobs=study.tuner_blobs())
            _restore_trials(opt, study, trials, random=random, max_epochs=max_epochs)
            return opt
        if not trials:  # a new study: the caller pretrains on the recorded runs
            return opt
        problem = f"The study at {str(study.path)!r} has no tuner state."
    except (StudyError, ConfigurationError, KeyError, TypeError, ValueError, RuntimeError) as err:
        problem = str(err) if isinstance(err, StudyError) else (
            f"The tuner state stored in {str(study.path / 'study.sqlite')!r} does not fit this tuner "
            f"({type(err).__name__}: {err}).")
    warnings.warn(f"{problem} Rebuilding it from the study's {len(trials)} trials and "
                  f"{study.budget_used(source=TUNER)} recorded epochs, which are intact; the surrogate is "
                  "refit, so later suggestions differ from an uninterrupted run.", RuntimeWarning, stacklevel=3)
    opt = make()
    pretrain(opt)
    study.set_meta("recorded_runs_seen", [t.trial_id for t in study.trials() if t.source != TUNER])
    _restore_trials(opt, study, trials, random=random, max_epochs=max_epochs)
    save_state(opt, study)
    return opt


def save_state(opt: FMSOptimizer, study: Study) -> None:
    """Save the optimizer's state (without its trials) in the study; each new unchanging part once."""
    blobs: dict[str, Any] = {}
    study.save_tuner_state(opt.state_dict(trials=False, blobs=blobs), blobs)


def _without_trials(state: Mapping[str, Any], study: Study, trials: list[TrialRecord]) -> dict[str, Any]:
    """A stored state without the trials that states before version 2 kept (the rows replace them).

    Their weight keys are kept, by snapshot path, so no snapshot file has to be read again.
    """
    state = dict(state)
    old = state.pop("trials", None)
    if old and "weight_keys" not in state:
        keys: dict[str, str] = {}
        ordered = [old[k] for k in sorted(old, key=int)]
        for t, saved in zip(trials, ordered):
            for o in study.observations(t.trial_id):
                if o.snapshot and o.epoch < len(saved["keys"]) and saved["keys"][o.epoch] is not None:
                    keys[str(study.path / o.snapshot)] = saved["keys"][o.epoch]
        state["weight_keys"] = keys
    return state


def _restore_trials(opt: FMSOptimizer, study: Study, trials: list[TrialRecord], *, random: bool,
                    max_epochs: int) -> None:
    """Hand the optimizer each trial as its rows record it.

    A trial is paused or completed at its last recorded epoch. A running one (its
    segment was not committed) is pending again, to the epoch it was asked to reach:
    one past its committed checkpoint, or ``max_epochs`` for random search. A failed
    one failed at its next epoch, unless its epochs reached that target.

    Snapshots the stored state does not know yet (those committed after it was saved)
    are handed to the weight featurizer first, in the order they were committed, which
    is the order :func:`tell` gave them to the optimizer in an uninterrupted run.
    """
    configs = {t.trial_id: t.config for t in trials}
    opt.add_snapshots((configs[o.trial_id], str(study.path / o.snapshot))
                      for o in study.observations(order="commit") if o.trial_id in configs and o.snapshot)
    for t in trials:
        obs = study.observations(t.trial_id)
        checkpoint = study.checkpoint(t.trial_id)
        asked = max_epochs if random else (checkpoint[0] if checkpoint else 0) + 1
        done = len(obs)
        if t.status in (TrialStatus.PAUSED, TrialStatus.COMPLETED) and done:
            status, target = t.status, done
        else:
            status, target = (TrialStatus.FAILED if t.status is TrialStatus.FAILED else TrialStatus.RUNNING), asked
        failed_at = done + 1 if status is TrialStatus.FAILED and done < target else None
        opt.restore_trial(
            t.trial_id, t.config, values=[o.value for o in obs],
            weights=[str(study.path / o.snapshot) if o.snapshot else None for o in obs],
            status=status, target=min(max(target, 1), max_epochs), reason=t.reason, failed_at=failed_at,
        )


def start_segment(opt: FMSOptimizer, study: Study, s: Suggestion, hub_entry: str | None) -> SegmentSpec:
    """Record a suggestion (its trial running) and the optimizer's state after it, in one transaction."""
    with study.atomic():
        study.add_trial(s.config, hub_entry, source=TUNER, status=TrialStatus.RUNNING, trial_id=s.trial_id)
        study.set_status(s.trial_id, TrialStatus.RUNNING)
        save_state(opt, study)
    epoch, path = study.checkpoint(s.trial_id) or (0, None)
    return SegmentSpec(s.trial_id, dict(s.config), epoch, s.epoch, path)


def commit_segment(storage: Storage, study: Study, result: SegmentResult, status: TrialStatus, *,
                   opt: FMSOptimizer | None = None) -> None:
    """Record a finished segment and its trial's ``status`` in the study, in one transaction.

    Snapshot files written to another storage are first copied into the study folder;
    the trial's older checkpoints are removed afterwards.

    Args:
        storage: Where the segment's files are.
        study: The open study.
        result: The finished segment.
        status: The trial's status after it.
        opt: Also save this optimizer's state, in the same transaction. For a caller that
            changed the state since the last suggestion in a way the rows cannot give back
            (for example by installing a surrogate fit made while the segment trained):
            otherwise the state is saved with the next suggestion only, and a run stopped
            before it would resume without that change.
    """
    tid = result.spec.trial_id
    for rel in [r.snapshot for r in result.records] + ([result.start_snapshot] if result.start_snapshot else []):
        storage.copy_to(rel, study.path / rel)
    checkpoint = (result.spec.target, result.checkpoint) if result.checkpoint is not None else None
    with study.atomic():
        study.commit_segment(tid, [r.as_row() for r in result.records], start_snapshot=result.start_snapshot,
                             checkpoint=checkpoint)
        study.set_status(tid, status, reason=result.error)
        if opt is not None:
            save_state(opt, study)
    if result.checkpoint is not None:  # older checkpoints of the trial are no longer needed
        folder = result.checkpoint.rsplit("/", 1)[0]
        for rel in storage.list(folder):
            if rel != result.checkpoint:
                with contextlib.suppress(OSError):
                    storage.delete(rel)


def tell(opt: FMSOptimizer, study: Study, result: SegmentResult) -> None:
    """Feed the optimizer a committed segment's epochs, and mark its trial failed if it failed.

    Nothing is saved: the segment's rows are committed already, and the optimizer's state
    is saved with the next suggestion (:func:`start_segment`). A run stopped in between
    resumes from the rows to the same optimizer (:func:`load_optimizer`).
    """
    tid = result.spec.trial_id
    known = opt.trial(tid).epochs
    new = [r for r in result.records if r.epoch > known]
    with contextlib.suppress(FMSError) if result.error is not None else contextlib.nullcontext():
        for r in new:
            opt.observe(tid, r.epoch, r.value, weights=str(study.path / r.snapshot))
    if result.error is not None:
        opt.mark_failed(tid, result.error)


def recorded_runs(study: Study, space: SearchSpace, *, monitor: str, mode: str, max_epochs: int,
                  method: Method) -> list[dict[str, Any]]:
    """The runs ``WeightSnapshot`` recorded outside the tuner, as :meth:`FMSOptimizer.pretrain` takes them.

    A run is used when its config (with its hub entry as the hub dimension) fits
    the search space, it logged the tuner's ``monitor`` at every epoch, its epochs
    are contiguous from 1 and, for the methods that read weights, its weights were recorded.
    The values are the tuner's ``monitor``, whatever the run monitored, over the
    run's first ``max_epochs`` epochs. A run that is skipped, or that monitored
    another metric or mode, is named in a warning.
    """
    runs, other = [], []
    for t in study.trials():
        if t.source == TUNER:
            continue
        obs = study.observations(t.trial_id)
        config = {k: t.config[k] for k in space.names if k in t.config}
        hub_name = space.hub_name
        if hub_name is not None and hub_name not in config and t.hub_entry is not None:
            config[hub_name] = t.hub_entry  # WeightSnapshot(hub_entry=...)
        try:
            space.validate(config)
        except SearchSpaceError as err:
            hint = (f" Pass WeightSnapshot(..., hub_entry=<the hub model's name>)."
                    if hub_name is not None and hub_name not in config else "")
            log.warning("Not learning from recorded trial %s: %s%s", t.trial_id, err, hint)
            continue
        if not obs or [o.epoch for o in obs] != list(range(1, len(obs) + 1)):
            log.warning("Not learning from recorded trial %s: its epochs %s are not 1, 2, ... (every_n_epochs > 1, "
                        "or none recorded).", t.trial_id, [o.epoch for o in obs])
            continue
        obs = obs[:max_epochs]  # the surrogate's budgets end there
        recorded = study.run_settings(t.trial_id)
        same = recorded.get("monitor") in (None, monitor)
        values = [o.metrics.get(monitor, o.value if same else None) for o in obs]
        if any(v is None for v in values):
            log.warning("Not learning from recorded trial %s: it monitored %r and did not log the tuner's %r "
                        "(it logged %s).", t.trial_id, recorded.get("monitor"), monitor, sorted(obs[0].metrics))
            continue
        if not same or recorded.get("mode") not in (None, mode):
            other.append(f"{t.trial_id} ({recorded.get('monitor')}, mode {recorded.get('mode')})")
        run: dict[str, Any] = {"config": config, "curve": values}
        if method.uses_weights:
            start = study.start_weights_path(t.trial_id)
            if start is None or any(o.snapshot is None for o in obs):
                log.warning("Not learning from recorded trial %s: %s needs its weight snapshots, and its "
                            "starting weights were not recorded.", t.trial_id, method.value)
                continue
            run["weights"] = [str(study.path / start)] + [str(study.path / str(o.snapshot)) for o in obs]
        runs.append(run)
    if other:
        log.warning("Recorded trials %s were run with another monitor or mode; the tuner learns their logged %r "
                    "as values to %simise.", ", ".join(other), monitor, mode)
    return runs


def learn_recorded_runs(opt: FMSOptimizer, study: Study, pretrain: Callable[[FMSOptimizer], Any]) -> list[Suggestion]:
    """Pretrain again if runs were recorded since the last fit; returns the suggestions still to train."""
    recorded = [t.trial_id for t in study.trials() if t.source != TUNER]
    seen = set(study.get_meta("recorded_runs_seen", []))
    new = [tid for tid in recorded if tid not in seen]
    if new:
        if opt.trial_ids:
            log.warning("Trials %s were recorded into the study since it was last tuned; pretraining the "
                        "surrogate again on every recorded run.", new)
        pretrain(opt)
        study.set_meta("recorded_runs_seen", recorded)
        save_state(opt, study)
    return opt.pending()  # trials handed out that never finished: train them first
