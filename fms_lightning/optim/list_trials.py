"""The trials a hyperparameter list is built from: P points × N workloads, read from CSV or studies.

Notation of §2.5 of the NAdamW-lists paper:

- ``P``: the candidate hyperparameter points (rows), ``p = 1..P``;
- ``N``: the workloads (columns), ``i = 1..N``;
- ``t_{pi}``: the first step at which point ``p`` reached workload ``i``'s
  validation target, ``∞`` if it never did;
- ``T_i``: workload ``i``'s step budget (the most steps a trial may run).

The CSV format has one row per (point, workload) pair and these columns:

==================  ===========================================================
``point``           an id of the point (any string); rows with the same id are
                    the same point on different workloads
``workload``        the workload's name
``step``            the first step the target was reached; empty, ``never``,
                    ``inf`` or ``nan`` when it was not reached
``budget``          ``T_i``: the workload's step budget (the same on every row of
                    the workload)
``lr`` … ``label_smoothing``  the seven fields of
                    :class:`~fms_lightning.optim.NAdamWPoint` (needed to write the
                    list as YAML; the same on every row of the point)
==================  ===========================================================

From studies, each study folder is one workload and each trial is one point
(its ``config`` must hold the seven NAdamW fields). A study's "step" is its
observation epoch, so ``t_{pi}`` is the first recorded epoch whose monitored
value (or ``metrics[metric]``) meets the target, and ``T_i`` is the given budget
or, by default, the most epochs any trial of the study recorded.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fms_lightning.errors import ConfigurationError
from fms_lightning.optim.presets import NAdamWPoint

__all__ = ["ListTrials", "WorkloadSpec", "read_trials_csv", "write_trials_csv", "read_trials_studies"]

_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(NAdamWPoint))
_NEVER = {"", "never", "inf", "+inf", "infinity", "nan", "none", "-"}
Missing = Literal["error", "never"]


@dataclass(frozen=True)
class ListTrials:
    """The outcome of P points on N workloads.

    Attributes:
        point_ids: `(P,)` ids of the points.
        points: `(P,)` the points' hyperparameters.
        workloads: `(N,)` workload names.
        steps: `(P, N)` float array: ``t_{pi}``, ``inf`` where never reached.
        budgets: `(N,)` float array: ``T_i``.

    Raises:
        ConfigurationError: For mismatched shapes, duplicate ids, negative steps
            or non-positive budgets.
    """

    point_ids: tuple[str, ...]
    points: tuple[NAdamWPoint, ...]
    workloads: tuple[str, ...]
    steps: np.ndarray
    budgets: np.ndarray

    def __post_init__(self) -> None:
        steps = np.asarray(self.steps, dtype=float)
        budgets = np.asarray(self.budgets, dtype=float)
        p, n = len(self.point_ids), len(self.workloads)
        if len(self.points) != p or steps.shape != (p, n) or budgets.shape != (n,):
            raise ConfigurationError(
                f"ListTrials got {p} point ids, {len(self.points)} points, {n} workloads, steps of shape "
                f"{steps.shape} and budgets of shape {budgets.shape}; expected steps (P, N) = ({p}, {n}) and "
                f"budgets ({n},)."
            )
        if p == 0 or n == 0:
            raise ConfigurationError(f"ListTrials needs at least one point and one workload, got P={p}, N={n}.")
        for label, names in (("point id", self.point_ids), ("workload", self.workloads)):
            dup = sorted({x for x in names if list(names).count(x) > 1})
            if dup:
                raise ConfigurationError(f"Duplicate {label}s {dup}; each must appear once.")
        if np.isnan(steps).any() or (steps < 0).any():
            raise ConfigurationError("Steps must be >= 0, or inf for 'never reached'; got NaN or negative values.")
        if not (np.isfinite(budgets).all() and (budgets > 0).all()):
            raise ConfigurationError(f"Step budgets T_i must be finite and > 0, got {budgets.tolist()}.")
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "budgets", budgets)

    @property
    def fractions(self) -> np.ndarray:
        """`(P, N)` step fractions ``t_{pi} / T_i`` (``inf`` where never reached)."""
        return self.steps / self.budgets[None, :]

    def select_workloads(self, keep: Sequence[int]) -> ListTrials:
        """The same points on a subset of the workloads (by column index)."""
        idx = list(keep)
        return ListTrials(
            self.point_ids, self.points, tuple(self.workloads[i] for i in idx), self.steps[:, idx], self.budgets[idx]
        )


@dataclass(frozen=True)
class WorkloadSpec:
    """How to read one workload from a study folder.

    Args:
        study_dir: The study folder (one workload).
        target: The validation target.
        mode: ``"max"``: reached when the value is ``>= target``; ``"min"``: ``<= target``.
        budget: ``T_i`` in epochs; default the most epochs any trial recorded.
        metric: Read ``metrics[metric]`` instead of the monitored value.
        name: The workload's name; default the folder's name.

    Raises:
        ConfigurationError: For a bad mode, target or budget.
    """

    study_dir: str
    target: float
    mode: Literal["min", "max"] = "max"
    budget: float | None = None
    metric: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ConfigurationError(f"WorkloadSpec.mode must be 'min' or 'max', got {self.mode!r}.")
        if not math.isfinite(float(self.target)):
            raise ConfigurationError(f"WorkloadSpec.target must be a finite number, got {self.target!r}.")
        if self.budget is not None and not float(self.budget) > 0:
            raise ConfigurationError(f"WorkloadSpec.budget must be > 0 epochs, got {self.budget!r}.")


def _parse_step(text: str, where: str) -> float:
    if text.strip().lower() in _NEVER:
        return math.inf
    try:
        value = float(text)
    except ValueError:
        raise ConfigurationError(
            f"{where}: step {text!r} is not a number; write the first step the target was reached, or 'never'."
        ) from None
    return math.inf if math.isnan(value) else value


def _assemble(
    rows: Mapping[tuple[str, str], float],
    points: Mapping[str, NAdamWPoint],
    budgets: Mapping[str, float],
    *,
    missing: Missing,
    where: str,
) -> ListTrials:
    point_ids = tuple(points)
    workloads = tuple(budgets)
    steps = np.full((len(point_ids), len(workloads)), math.inf)
    absent = []
    for a, pid in enumerate(point_ids):
        for b, w in enumerate(workloads):
            if (pid, w) in rows:
                steps[a, b] = rows[(pid, w)]
            else:
                absent.append((pid, w))
    if absent and missing == "error":
        raise ConfigurationError(
            f"{where}: {len(absent)} (point, workload) pairs have no trial, e.g. {absent[:3]}; every point must "
            "be run on every workload. Pass missing='never' (CLI: --missing never) to count them as never reached."
        )
    return ListTrials(point_ids, tuple(points.values()), workloads, steps, np.array(list(budgets.values())))


def read_trials_csv(path: str | os.PathLike[str], *, missing: Missing = "error") -> ListTrials:
    """Read trials from a CSV file in the format of this module's docstring.

    Args:
        path: The CSV file.
        missing: What a (point, workload) pair without a row means: an error, or never reached.

    Returns:
        The trials, points and workloads in order of first appearance.

    Raises:
        ConfigurationError: For a missing file or column, a bad value, or
            inconsistent budgets or hyperparameters.

    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "t.csv")
    >>> _ = open(f, "w").write("point,workload,step,budget,lr,warmup_fraction,beta1,beta2,"
    ...     "weight_decay,dropout,label_smoothing\\na,w1,10,100,0.001,0.05,0.9,0.99,0.01,0.0,0.0\\n")
    >>> read_trials_csv(f).fractions
    array([[0.1]])
    """
    where = os.fspath(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            records = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    except FileNotFoundError:
        raise ConfigurationError(f"Trials CSV {where!r} does not exist.") from None
    needed = ["point", "workload", "step", "budget", *_FIELDS]
    lacking = [c for c in needed if c not in header]
    if lacking:
        raise ConfigurationError(f"Trials CSV {where!r} lacks the columns {lacking}; it has {header}, needs {needed}.")
    rows: dict[tuple[str, str], float] = {}
    points: dict[str, NAdamWPoint] = {}
    budgets: dict[str, float] = {}
    for line, rec in enumerate(records, start=2):
        at = f"{where} line {line}"
        pid, w = rec["point"], rec["workload"]
        if not pid or not w:
            raise ConfigurationError(f"{at}: 'point' and 'workload' must not be empty.")
        try:
            point = NAdamWPoint.from_dict({f: float(rec[f]) for f in _FIELDS})
            budget = float(rec["budget"])
        except (ValueError, ConfigurationError) as err:
            raise ConfigurationError(f"{at}: {err}") from err
        if points.setdefault(pid, point) != point:
            raise ConfigurationError(f"{at}: point {pid!r} has other hyperparameters than on an earlier row.")
        if budgets.setdefault(w, budget) != budget:
            raise ConfigurationError(f"{at}: workload {w!r} has budget {budget}, but {budgets[w]} on an earlier row.")
        if (pid, w) in rows:
            raise ConfigurationError(f"{at}: a second row for point {pid!r} on workload {w!r}; keep one per pair.")
        rows[(pid, w)] = _parse_step(rec["step"], at)
    if not rows:
        raise ConfigurationError(f"Trials CSV {where!r} has no rows.")
    return _assemble(rows, points, budgets, missing=missing, where=where)


def write_trials_csv(trials: ListTrials, path: str | os.PathLike[str]) -> None:
    """Write trials as CSV (never-reached steps as ``never``); :func:`read_trials_csv` reads it back."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["point", "workload", "step", "budget", *_FIELDS])
        for a, (pid, point) in enumerate(zip(trials.point_ids, trials.points)):
            for b, w in enumerate(trials.workloads):
                t = trials.steps[a, b]
                step = "never" if math.isinf(t) else repr(float(t))
                writer.writerow([pid, w, step, repr(float(trials.budgets[b])), *(repr(getattr(point, f)) for f in _FIELDS)])


def _point_from_config(config: Mapping[str, object], where: str) -> NAdamWPoint:
    lacking = [f for f in _FIELDS if f not in config]
    if lacking:
        raise ConfigurationError(
            f"{where}: the trial's config lacks the NAdamW fields {lacking} (it has {sorted(config)}); "
            "a list can only be built from trials whose configs are NAdamW points."
        )
    try:
        return NAdamWPoint.from_dict({f: config[f] for f in _FIELDS})
    except (TypeError, ValueError) as err:
        raise ConfigurationError(f"{where}: {err}") from err


def read_trials_studies(specs: Sequence[WorkloadSpec], *, missing: Missing = "error") -> ListTrials:
    """Read trials from study folders, one workload per study.

    Points are matched across studies by their seven hyperparameters (exact
    equality), and named ``p1, p2, ...`` in order of first appearance. When a
    point has several trials in one study, the earliest step is kept.

    Args:
        specs: One :class:`WorkloadSpec` per workload.
        missing: What a point absent from a study means: an error, or never reached.

    Returns:
        The trials.

    Raises:
        ConfigurationError: For no specs, a trial config without the NAdamW
            fields, a missing metric, or missing pairs with ``missing="error"``.
        StudyError: If a folder holds no study.
    """
    from fms_lightning.study import Study

    if not specs:
        raise ConfigurationError("read_trials_studies needs at least one WorkloadSpec (one per workload).")
    by_point: dict[NAdamWPoint, str] = {}
    rows: dict[tuple[str, str], float] = {}
    budgets: dict[str, float] = {}
    for spec in specs:
        name = spec.name or os.path.basename(os.path.normpath(spec.study_dir))
        if name in budgets:
            raise ConfigurationError(f"Two workloads are named {name!r}; give each WorkloadSpec a distinct name=.")
        with Study(spec.study_dir, readonly=True) as study:
            trials = study.trials()
            observations = study.observations()
        most = 0
        first: dict[int, float] = {}
        for obs in observations:
            most = max(most, obs.epoch)
            if spec.metric is None:
                value = obs.value
            elif spec.metric in obs.metrics:
                value = obs.metrics[spec.metric]
            else:
                raise ConfigurationError(
                    f"Study {spec.study_dir!r} trial {obs.trial_id} epoch {obs.epoch} has no metric "
                    f"{spec.metric!r}; it has {sorted(obs.metrics)}."
                )
            hit = value >= spec.target if spec.mode == "max" else value <= spec.target
            if hit and obs.trial_id not in first:
                first[obs.trial_id] = float(obs.epoch)
        budgets[name] = float(spec.budget) if spec.budget is not None else float(most)
        if budgets[name] <= 0:
            raise ConfigurationError(f"Study {spec.study_dir!r} has no observations; give WorkloadSpec a budget=.")
        for trial in trials:
            point = _point_from_config(trial.config, f"Study {spec.study_dir!r} trial {trial.trial_id}")
            pid = by_point.setdefault(point, f"p{len(by_point) + 1}")
            step = first.get(trial.trial_id, math.inf)
            rows[(pid, name)] = min(rows.get((pid, name), math.inf), step)
    points = {pid: point for point, pid in by_point.items()}
    return _assemble(rows, points, budgets, missing=missing, where="the studies")
