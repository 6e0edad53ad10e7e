"""What a tuning run returns, and the pictures it leaves in the study folder."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from fms_lightning.errors import StudyError
from fms_lightning.study import Observation, Study, TrialRecord, TrialStatus, atomic_write, check_safetensors_file

__all__ = ["TuneResult", "LeaderboardRow", "leaderboard", "plot_study", "study_objective", "best_result"]


@dataclass(frozen=True)
class LeaderboardRow:
    """One trial's summary: its best epoch and value."""

    trial_id: int
    hub_entry: str | None
    config: dict[str, Any]
    status: str
    epochs: int
    best_epoch: int | None
    best_value: float | None
    reason: str | None = None


def _in_monitor(study: Study, trial: TrialRecord, obs: list[Observation], monitor: str | None) -> list[Observation]:
    """A trial's observations valued in ``monitor`` (those that did not log it are left out).

    A run that ``WeightSnapshot`` recorded with another monitor has that metric as
    its value; the study's ``monitor`` is then read from the other logged metrics.
    """
    if monitor is None:
        return obs
    if trial.source == "tuner":
        own = (study.get_meta("tuner_settings") or {}).get("monitor")
    else:
        own = study.run_settings(trial.trial_id).get("monitor")
    same = own in (None, monitor)
    out = []
    for o in obs:
        value = o.metrics.get(monitor, o.value if same else None)
        if value is not None:
            out.append(o if value == o.value else replace(o, value=float(value)))
    return out


def leaderboard(study: Study, mode: str, *, trials: list[TrialRecord] | None = None,
                monitor: str | None = None) -> list[LeaderboardRow]:
    """Trials sorted best first (trials without observations last).

    With ``monitor``, every trial is ranked by that logged metric, also runs that
    ``WeightSnapshot`` recorded with another monitor (if they logged it).
    """
    rows = []
    by_trial: dict[int, list[Observation]] = {}
    for o in study.observations():
        by_trial.setdefault(o.trial_id, []).append(o)
    for t in trials if trials is not None else study.trials():
        obs = _in_monitor(study, t, by_trial.get(t.trial_id, []), monitor)
        best = (max if mode == "max" else min)(obs, key=lambda o: o.value) if obs else None
        rows.append(LeaderboardRow(t.trial_id, t.hub_entry, t.config, t.status.value, len(obs),
                                   best.epoch if best else None, best.value if best else None, t.reason))
    sign = -1.0 if mode == "max" else 1.0
    return sorted(rows, key=lambda r: (r.best_value is None, sign * (r.best_value or 0.0), r.trial_id))


@dataclass(frozen=True)
class TuneResult:
    """The outcome of :meth:`fms_lightning.FMSTuner.fit`.

    Attributes:
        best_trial_id: The trial with the best observed value.
        best_config: Its configuration.
        best_hub_entry: The hub model it fine-tuned (``None`` without a hub).
        best_epoch: The epoch at which the best value was observed.
        best_value: The best value of the monitored metric.
        best_checkpoint: The weights after ``best_epoch`` (a safetensors file of
            the LightningModule's ``state_dict``).
        leaderboard: Every trial, best first.
        budget_used: Epochs trained.
        study_dir: The study folder.
    """

    best_trial_id: int
    best_config: dict[str, Any]
    best_hub_entry: str | None
    best_epoch: int
    best_value: float
    best_checkpoint: str
    leaderboard: list[LeaderboardRow]
    budget_used: int
    study_dir: str
    plot: str | None = None

    def export_best(self, path: str | os.PathLike[str]) -> Path:
        """Copy the best weights and write their config next to them.

        Writes ``PATH/weights.safetensors`` and ``PATH/config.yaml`` (config, hub
        entry, trial, epoch and value).

        Returns:
            The folder written.

        Raises:
            StudyError: If the best snapshot no longer exists, or is damaged
                (its safetensors header and size are checked before and after the copy).
        """
        out = Path(path)
        src = Path(self.best_checkpoint)
        if not src.is_file():
            raise StudyError(f"The best snapshot {str(src)!r} is missing; was the study folder moved or pruned?")
        check_safetensors_file(src)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "weights.safetensors", lambda tmp: (shutil.copyfile(src, tmp), check_safetensors_file(tmp)))
        info = {"config": self.best_config, "hub_entry": self.best_hub_entry, "trial_id": self.best_trial_id,
                "epoch": self.best_epoch, "value": self.best_value}
        (out / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(info)), sort_keys=False))
        return out

    def format_leaderboard(self, top: int = 10) -> str:
        """A plain-text table of the ``top`` trials."""
        lines = [f"{'rank':>4}  {'trial':>5}  {'hub entry':<16}{'epochs':>6}  {'best':>8}  config"]
        for rank, r in enumerate(self.leaderboard[:top], 1):
            best = f"{r.best_value:.4f}" if r.best_value is not None else "-"
            cfg = ", ".join(f"{k}={_short(v)}" for k, v in r.config.items() if v != r.hub_entry)
            status = "" if r.status != TrialStatus.FAILED.value else "  [failed]"
            lines.append(f"{rank:>4}  {r.trial_id:>5}  {str(r.hub_entry or '-'):<16}{r.epochs:>6}  {best:>8}  {cfg}{status}")
        return "\n".join(lines)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def study_objective(study: Study, *, mode: str | None = None) -> tuple[str | None, str, str]:
    """What a study optimises: ``(monitor, mode, where the mode came from)``.

    The tuner's settings win; a study that only ``WeightSnapshot`` wrote uses the
    monitor and mode its runs recorded. A ``mode`` passed here overrides both. When
    no mode is known, names with ``loss`` or ``err`` are minimised, others maximised
    (where: ``"guessed"``).
    """
    settings = study.get_meta("tuner_settings") or {}
    monitor, known = settings.get("monitor"), settings.get("mode")
    if monitor is None:
        recorded = [study.run_settings(t.trial_id) for t in study.trials() if t.source != "tuner"]
        monitors = sorted({r["monitor"] for r in recorded if r.get("monitor")})
        modes = sorted({r["mode"] for r in recorded if r.get("mode") and r.get("monitor") == monitors[0]}) \
            if monitors else []
        monitor = monitors[0] if len(monitors) == 1 else None
        known = modes[0] if monitor is not None and len(modes) == 1 else None
    if mode is not None:
        return monitor, mode, "given"
    if known is not None:
        return monitor, known, "study"
    name = (monitor or "").lower()
    return monitor, "min" if ("loss" in name or "err" in name) else "max", "guessed"


def best_result(study: Study, mode: str, *, monitor: str | None = None, tuner_only: bool | None = None,
                trial_id: int | None = None) -> TuneResult:
    """The best epoch of a study (or of one trial) as a :class:`TuneResult`, e.g. to ``export_best``.

    Args:
        study: The study.
        mode: ``"min"`` or ``"max"``.
        monitor: Rank by this logged metric (default: each trial's own value).
        tuner_only: Only the tuner's trials (default: when the study has any, as
            ``FMSTuner.fit`` reports; otherwise the recorded runs).
        trial_id: Only this trial.

    Raises:
        StudyError: If no trial has an observation (or ``trial_id`` does not exist).
    """
    trials = study.trials()
    if trial_id is not None:
        trials = [study.trial(trial_id)]
    else:
        if tuner_only is None:
            tuner_only = any(t.source == "tuner" for t in trials)
        if tuner_only:
            trials = [t for t in trials if t.source == "tuner"]
    board = leaderboard(study, mode, trials=trials, monitor=monitor)
    if not board or board[0].best_value is None:
        raise StudyError(f"No observations of {monitor or 'the monitored metric'} in the study at "
                         f"{str(study.path)!r}{'' if trial_id is None else f' for trial {trial_id}'}.")
    top = board[0]
    snap = next(o.snapshot for o in study.observations(top.trial_id) if o.epoch == top.best_epoch)
    assert top.best_epoch is not None and top.best_value is not None
    return TuneResult(
        best_trial_id=top.trial_id, best_config=top.config, best_hub_entry=top.hub_entry, best_epoch=top.best_epoch,
        best_value=top.best_value, best_checkpoint=str(study.path / str(snap)), leaderboard=board,
        budget_used=study.budget_used(source="tuner"), study_dir=str(study.path),
    )


def _robust_limits(values: list[float], mode: str) -> tuple[float, float] | None:
    """y-limits that keep every good value and clip the bad outliers (Tukey's fence on the bad side only)."""
    import numpy as np

    if len(values) < 4:
        return None
    v = np.asarray(values, dtype=float)
    q1, q3 = np.quantile(v, [0.25, 0.75])
    fence = 1.5 * (q3 - q1)
    lo, hi = (float(v.min()), float(min(v.max(), q3 + fence))) if mode == "min" \
        else (float(max(v.min(), q1 - fence)), float(v.max()))
    pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.05
    return lo - pad, hi + pad


def plot_study(study: Study, mode: str, path: str | os.PathLike[str], *, order: list[tuple[int, int]] | None = None,
               monitor: str = "value") -> str | None:
    """Learning curves of every trial (coloured by hub entry) and the incumbent over budget.

    Trials that trained more than one epoch are drawn as lines; those stopped after
    their first epoch as faint dots. The y-axes keep every good value and leave out
    the bad outliers (the panel's title counts them).

    Args:
        study: The study to draw.
        mode: ``"min"`` or ``"max"``.
        path: The PNG to write.
        order: ``(trial_id, epoch)`` in the order the epochs were trained; the
            default is the order in which they were recorded.
        monitor: The metric's name, for the axis labels (and the values of runs
            recorded with another monitor).

    Returns:
        The path written, or ``None`` if there is nothing to draw.
    """
    fig = _draw_study(study, mode, order=order, monitor=monitor)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _draw_study(study: Study, mode: str, *, order: list[tuple[int, int]] | None = None,
                monitor: str = "value") -> Any:
    obs = study.observations()
    if not obs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = {t.trial_id: t for t in study.trials()}
    entries = sorted({str(t.hub_entry) for t in trials.values()})
    cmap = plt.get_cmap("tab10")
    colour = {e: cmap(i % 10) for i, e in enumerate(entries)}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    curves: dict[int, list[Observation]] = {}
    for o in obs:
        curves.setdefault(o.trial_id, []).append(o)
    name = None if monitor == "value" else monitor
    curves = {tid: c for tid, os_ in curves.items() if tid in trials and (c := _in_monitor(study, trials[tid], os_, name))}
    values = [o.value for os_ in curves.values() for o in os_]
    short = 0
    for tid, os_ in curves.items():
        entry = str(trials[tid].hub_entry) if tid in trials else "None"
        if len(os_) == 1:
            short += 1
            ax1.plot([os_[0].epoch], [os_[0].value], linestyle="none", marker="o", markersize=3,
                     color=colour.get(entry, "grey"), alpha=0.35, zorder=1)
        else:
            ax1.plot([o.epoch for o in os_], [o.value for o in os_], color=colour.get(entry, "grey"), alpha=0.85,
                     linewidth=1.3, marker="o", markersize=2.5, zorder=2)
    for e in entries:
        ax1.plot([], [], color=colour[e], label=e)
    if len(entries) > 1:
        ax1.legend(fontsize=7, title="hub entry", title_fontsize=7)
    title = f"Learning curves ({len(curves)} trials, {short} stopped after epoch 1)"
    limits = _robust_limits(values, mode)
    if limits is not None:
        ax1.set_ylim(*limits)
        off = sum(not limits[0] <= v <= limits[1] for v in values)
        if off:
            title += f"\n{off} worse value(s) off the scale"
    ax1.set(xlabel="epoch", ylabel=monitor, title=title)
    ax1.title.set_fontsize(9)
    ax1.xaxis.get_major_locator().set_params(integer=True)
    ax1.grid(alpha=0.3)
    index = {(o.trial_id, o.epoch): o for os_ in curves.values() for o in os_}
    seq = [index[k] for k in order if k in index] if order else sorted(index.values(), key=lambda o: o.created)
    inc, best = [], None
    for o in seq:
        best = o.value if best is None or (o.value > best if mode == "max" else o.value < best) else best
        inc.append(best)
    ax2.step(range(1, len(inc) + 1), inc, where="post")
    inc_limits = _robust_limits(inc, mode)
    if inc_limits is not None:
        ax2.set_ylim(*inc_limits)
    ax2.set(xlabel="budget used (epochs)", ylabel=f"best {monitor}", title="Incumbent over budget")
    ax2.title.set_fontsize(9)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig
