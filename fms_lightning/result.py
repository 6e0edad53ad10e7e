"""What a tuning run returns, and the pictures it leaves in the study folder."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fms_lightning.errors import StudyError
from fms_lightning.study import Observation, Study, TrialRecord, TrialStatus, atomic_write, check_safetensors_file

__all__ = ["TuneResult", "LeaderboardRow", "leaderboard", "plot_study"]


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


def leaderboard(study: Study, mode: str, *, trials: list[TrialRecord] | None = None) -> list[LeaderboardRow]:
    """Trials sorted best first (trials without observations last)."""
    rows = []
    by_trial: dict[int, list[Observation]] = {}
    for o in study.observations():
        by_trial.setdefault(o.trial_id, []).append(o)
    for t in trials if trials is not None else study.trials():
        obs = by_trial.get(t.trial_id, [])
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
    extra: dict[str, Any] = field(default_factory=dict)

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


def plot_study(study: Study, mode: str, path: str | os.PathLike[str], *, order: list[tuple[int, int]] | None = None,
               monitor: str = "value") -> str | None:
    """Learning curves of every trial (coloured by hub entry) and the incumbent over budget.

    Args:
        study: The study to draw.
        mode: ``"min"`` or ``"max"``.
        path: The PNG to write.
        order: ``(trial_id, epoch)`` in the order the epochs were trained; the
            default is the order in which they were recorded.
        monitor: The metric's name, for the axis labels.

    Returns:
        The path written, or ``None`` if there is nothing to draw.
    """
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
    for tid, os_ in curves.items():
        entry = str(trials[tid].hub_entry) if tid in trials else "None"
        ax1.plot([o.epoch for o in os_], [o.value for o in os_], color=colour.get(entry, "grey"), alpha=0.7,
                 marker="." if len(os_) < 3 else None)
    for e in entries:
        ax1.plot([], [], color=colour[e], label=e)
    if len(entries) > 1:
        ax1.legend(fontsize=7, title="hub entry", title_fontsize=7)
    ax1.set(xlabel="epoch", ylabel=monitor, title=f"Learning curves ({len(curves)} trials)")
    ax1.grid(alpha=0.3)
    index = {(o.trial_id, o.epoch): o for o in obs}
    seq = [index[k] for k in order if k in index] if order else sorted(obs, key=lambda o: o.created)
    inc, best = [], None
    for o in seq:
        best = o.value if best is None or (o.value > best if mode == "max" else o.value < best) else best
        inc.append(best)
    ax2.step(range(1, len(inc) + 1), inc, where="post")
    ax2.set(xlabel="budget used (epochs)", ylabel=f"best {monitor}", title="Incumbent over budget")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
