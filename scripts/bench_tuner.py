"""Where the wall time of one tuning run goes: training against the tuner's own overhead (issue 15).

Runs the ``make demo`` tuning (``fms-lightning tune digits_hub``: FMS-GMN, the embedded
digits hub) through the recipe machinery and times the real calls with
``time.perf_counter``, by wrapping them in this process only (nothing in the library
changes, and nothing is timed unless this script runs). The wall time of
``FMSTuner.fit()`` is split into parts that do not overlap:

- ``training``: the epochs themselves, the sum of the ``wall_time`` of the run's
  observations (train and validation loop of each epoch, as ``WeightSnapshot`` measures);
- ``segment_setup``: each segment's time beyond its epochs (scratch clean-up, checkpoint
  fetch, ``build``, Trainer and DataModule construction, checkpoint restore, dataloaders,
  waiting for snapshot writes, saving the checkpoint);
- ``surrogate_fit``: the surrogate's fits inside ``FMSOptimizer.suggest``;
- ``acquisition``: the rest of ``suggest`` (candidates, hub starting weights, EI_MF);
- ``observe``: ``FMSOptimizer.observe`` (reads each snapshot and embeds it);
- ``study_io``: the study's transactions (``start_segment``, with the optimizer-state save,
  ``commit_segment``, and ``tell`` beyond ``observe``);
- ``fit_ahead_wait``: with ``fit_while_training``, the wait after a segment for the surrogate
  fit running in a forked process alongside it, and installing that fit (the fit's own time,
  in the other process, is reported as ``fit_ahead``: what of it exceeds this wait was
  hidden behind the segment);
- ``fit_setup``: ``fit()`` outside its loop (study open, optimizer load, result and plot);
- ``loop_other``: the rest of the loop (progress bar, TensorBoard scalars);
- ``unaccounted``: what is left of the wall time.

The overhead share is everything but ``training`` over the wall time. The report also
counts the optimizer-state saves and gives the size of the stored state after the run
(the last save) and of the parts stored once (``tuner_blobs``). The surrogate time
per suggestion is reported at 5, 10, 25 and 50 observations (the nearest suggestion
available). A table goes to stdout and, with ``--json``, the full report to a file.

    .venv/bin/python scripts/bench_tuner.py --budget 40 --seed 0 --json bench_tuner.json
    .venv/bin/python scripts/bench_tuner.py --initial-steps 200 --refine-steps 20
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

#: The parts of the wall time, disjoint, in table order (``unaccounted`` is the remainder).
PARTS = ("training", "segment_setup", "surrogate_fit", "acquisition", "observe", "study_io", "fit_ahead_wait",
         "fit_setup", "loop_other")
#: Observation counts at which the surrogate time per suggestion is reported.
AT_OBSERVATIONS = (5, 10, 25, 50)


class Timers:
    """Seconds per key, from wrapped callables (thread-safe: ``list.append`` only)."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.main = threading.main_thread()

    def total(self, key: str) -> float:
        return float(sum(self.calls.get(key, ())))

    def count(self, key: str) -> int:
        return len(self.calls.get(key, ()))

    def wrapper(self, fn: Callable[..., Any], key: str | Callable[[], str],
                after: Callable[[Any, float, tuple, dict], None] | None = None) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                out = fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                self.calls[key() if callable(key) else key].append(dt)
            if after is not None:
                after(out, dt, args, kwargs)
            return out

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed


@contextlib.contextmanager
def _patched(patches: Sequence[tuple[Any, str, Callable[[Callable[..., Any]], Callable[..., Any]]]]) -> Iterator[None]:
    """Replace ``owner.name`` by ``make(original)`` for each patch; restored on exit."""
    saved = []
    try:
        for owner, name, make in patches:
            original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
            saved.append((owner, name, original))
            setattr(owner, name, make(getattr(owner, name)))
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def measure(tuner: Any) -> dict[str, Any]:
    """Run ``tuner.fit()`` with its parts timed; the report (see the module docstring)."""
    import lightning.pytorch as pl

    from fms_lightning.callbacks.weight_snapshot import WeightSnapshot
    from fms_lightning.optimizer import FMSOptimizer, _model
    from fms_lightning.storage import Storage
    from fms_lightning._study_store import _StudyStore
    from fms_lightning.tuner import _loop, core, segment, sync

    t = Timers()
    per_suggestion: list[dict[str, Any]] = []
    segments: list[dict[str, Any]] = []
    state = {"in_suggest": False, "fit_in_suggest": 0.0, "n_obs": 0}

    def suggest(fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(opt: Any, *args: Any, **kwargs: Any) -> Any:
            state.update(in_suggest=True, fit_in_suggest=0.0, n_obs=opt.n_observations)
            t0 = time.perf_counter()
            try:
                return fn(opt, *args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                state["in_suggest"] = False
                t.calls["suggest"].append(dt)
                per_suggestion.append({"observations": state["n_obs"], "seconds": dt,
                                       "fit_seconds": state["fit_in_suggest"]})
        return timed

    def model_fit(fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(opt: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(opt)
            finally:
                dt = time.perf_counter() - t0
                t.calls["surrogate_fit" if state["in_suggest"] else "surrogate_fit_outside_suggest"].append(dt)
                if state["in_suggest"]:
                    state["fit_in_suggest"] += dt
        return timed

    def after_segment(result: Any, dt: float, args: tuple, kwargs: dict) -> None:
        segments.append({"trial_id": result.spec.trial_id, "epochs": result.spec.target - result.spec.start_epoch,
                         "resumed": result.spec.checkpoint is not None, "seconds": dt,
                         "training": float(sum(r.wall_time for r in result.records)), "error": result.error})

    def storage_write(fn: Callable[..., Any]) -> Callable[..., Any]:
        # The segment's checkpoint is written by the training thread; snapshots by WeightSnapshot's writer thread.
        key = lambda: ("seg.checkpoint_save" if threading.current_thread() is t.main  # noqa: E731
                       else "seg.snapshot_writes_background")
        return t.wrapper(fn, key)

    w = t.wrapper
    patches = [
        (FMSOptimizer, "suggest", suggest),
        (FMSOptimizer, "observe", lambda fn: w(fn, "observe")),
        (_model, "fit", model_fit),
        (sync, "start_segment", lambda fn: w(fn, "study.start_segment")),
        (sync, "commit_segment", lambda fn: w(fn, "study.commit_segment")),
        (sync, "tell", lambda fn: w(fn, "tell")),
        (_loop.TrainingLoop, "run", lambda fn: w(fn, "loop")),
        (segment.SegmentRunner, "run", lambda fn: w(fn, "segment", after_segment)),
        (segment.SegmentRunner, "make_module", lambda fn: w(fn, "seg.build_module")),
        (segment.SegmentRunner, "make_datamodule", lambda fn: w(fn, "seg.make_datamodule")),
        (segment.SegmentRunner, "_trainer", lambda fn: w(fn, "seg.trainer_construction")),
        (segment, "clean_stale_scratch", lambda fn: w(fn, "seg.clean_stale_scratch")),
        (pl.Trainer, "fit", lambda fn: w(fn, "seg.trainer_fit")),
        (WeightSnapshot, "flush", lambda fn: w(fn, "seg.snapshot_flush_wait")),
        (Storage, "fetch", lambda fn: w(fn, "seg.checkpoint_fetch")),
        (Storage, "write", storage_write),
        (core, "build_result", lambda fn: w(fn, "fit.build_result")),
        (_StudyStore, "save_tuner_state", lambda fn: w(fn, "study.state_save")),
    ]
    with _patched(patches):
        t0 = time.perf_counter()
        result = tuner.fit()
        wall = time.perf_counter() - t0

    training = float(sum(s["training"] for s in segments))
    segment_total = t.total("segment")
    suggest_total, fit_total = t.total("suggest"), t.total("surrogate_fit")
    observe_total = t.total("observe")
    study_io = t.total("study.start_segment") + t.total("study.commit_segment") + (t.total("tell") - observe_total)
    loop_total = t.total("loop")
    ahead = list(getattr(tuner, "fit_ahead_seconds", []))
    ahead_fit = float(sum(f for f, _ in ahead if f is not None))
    ahead_wait = float(sum(w for _, w in ahead))
    parts = {
        "training": training,
        "segment_setup": segment_total - training,
        "surrogate_fit": fit_total,
        "acquisition": suggest_total - fit_total,
        "observe": observe_total,
        "study_io": study_io,
        "fit_ahead_wait": ahead_wait,
        "fit_setup": wall - loop_total,
        "loop_other": loop_total - segment_total - suggest_total - t.total("study.start_segment")
        - t.total("study.commit_segment") - t.total("tell") - ahead_wait,
    }
    parts = {k: max(0.0, v) for k, v in parts.items()}  # rounding only: each is a difference of nested timings
    unaccounted = max(0.0, wall - sum(parts.values()))
    setup_keys = ["seg.clean_stale_scratch", "seg.checkpoint_fetch", "seg.build_module", "seg.trainer_construction",
                  "seg.make_datamodule", "seg.snapshot_flush_wait", "seg.checkpoint_save"]
    setup_named = sum(t.total(k) for k in setup_keys)
    in_fit = t.total("seg.trainer_fit") - training  # Trainer.fit beyond the epochs: restore, loaders, hooks, teardown
    setup = {k.removeprefix("seg."): t.total(k) for k in setup_keys}
    setup["trainer_fit_beyond_epochs"] = max(0.0, in_fit)
    setup["rest"] = max(0.0, parts["segment_setup"] - setup_named - max(0.0, in_fit))
    io = {"start_segment": t.total("study.start_segment"), "commit_segment": t.total("study.commit_segment"),
          "tell_state_save": max(0.0, t.total("tell") - observe_total)}
    db = Path(tuner.study_dir) / "study.sqlite"
    study_training = _study_wall_time(tuner.study_dir)
    return {
        "wall_seconds": wall,
        "parts": parts,
        "unaccounted": unaccounted,
        "overhead_seconds": wall - parts["training"],
        "overhead_share": (wall - parts["training"]) / wall if wall > 0 else 0.0,
        "segment_setup_breakdown": setup,
        "study_io_breakdown": io,
        "background_snapshot_writes": t.total("seg.snapshot_writes_background"),
        "fit_ahead": {"segments": len(ahead), "failed": sum(f is None for f, _ in ahead), "fit_seconds": ahead_fit,
                      "wait_seconds": ahead_wait, "hidden_seconds": max(0.0, ahead_fit - ahead_wait)},
        "study_observations_wall_time": study_training,
        "state_saves": t.count("study.state_save"),
        "stored_state": _stored_state_bytes(tuner.study_dir),
        "suggestions": per_suggestion,
        "surrogate_at": surrogate_at(per_suggestion),
        "median_suggest": _medians(per_suggestion, getattr(getattr(tuner.optimizer, "surrogate_config", None),
                                                           "full_fit_until", 10)),
        "segments": segments,
        "n_segments": len(segments),
        "resumed_segments": sum(s["resumed"] for s in segments),
        "budget_used": result.budget_used,
        "best_value": result.best_value,
        "study": str(db),
    }


def _study_wall_time(study_dir: Any) -> float | None:
    """The sum of the ``wall_time`` column of the study's tuner observations (the issue's epoch time)."""
    from fms_lightning.study import Study
    from fms_lightning.tuner.sync import TUNER

    with Study(study_dir) as study:
        ids = {tr.trial_id for tr in study.trials(source=TUNER)}
        return float(sum(o.wall_time or 0.0 for o in study.observations() if o.trial_id in ids))


def _stored_state_bytes(study_dir: Any) -> dict[str, int]:
    """Bytes of the stored optimizer state (the last save) and of the parts stored once, and their count."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{Path(study_dir) / 'study.sqlite'}?mode=ro", uri=True)) as conn:
        state = conn.execute("SELECT COALESCE(SUM(LENGTH(state)), 0) FROM tuner_state").fetchone()[0]
        try:
            n, parts = conn.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(blob)), 0) FROM tuner_blobs").fetchone()
        except sqlite3.OperationalError:  # a library version without the table
            n, parts = 0, 0
    return {"state": int(state), "parts_stored_once": int(parts), "n_parts": int(n)}


def surrogate_at(per_suggestion: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The suggestion made with the observation count nearest each of :data:`AT_OBSERVATIONS`."""
    model = [s for s in per_suggestion if s["observations"] > 0]  # the very first one is a random draw
    out: dict[str, dict[str, Any]] = {}
    for n in AT_OBSERVATIONS:
        if not model:
            break
        s = min(model, key=lambda s: (abs(s["observations"] - n), s["observations"]))
        out[str(n)] = dict(s)
    return out


def _medians(per_suggestion: list[dict[str, Any]], full_fit_until: int) -> dict[str, float | None]:
    """Median seconds per suggestion in the initial phase (<= ``full_fit_until`` observations) and after."""
    model = [s for s in per_suggestion if s["observations"] > 0]
    first = [s["seconds"] for s in model if s["observations"] <= full_fit_until]
    later = [s["seconds"] for s in model if s["observations"] > full_fit_until]
    return {"initial_phase": statistics.median(first) if first else None,
            "afterwards": statistics.median(later) if later else None}


def format_table(report: dict[str, Any], title: str = "") -> str:
    wall = report["wall_seconds"]
    lines = [title] if title else []
    lines.append(f"{'part':<26}{'seconds':>9}{'share':>8}")
    rows = [*report["parts"].items(), ("unaccounted", report["unaccounted"])]
    for name, sec in rows:
        lines.append(f"{name:<26}{sec:>9.2f}{sec / wall if wall else 0:>8.1%}")
        if name == "segment_setup":
            for k, v in report["segment_setup_breakdown"].items():
                lines.append(f"  {k:<24}{v:>9.2f}")
        if name == "study_io":
            for k, v in report["study_io_breakdown"].items():
                lines.append(f"  {k:<24}{v:>9.2f}")
    lines.append(f"{'wall (FMSTuner.fit)':<26}{wall:>9.2f}")
    lines.append(f"overhead share: {report['overhead_share']:.1%} ({report['overhead_seconds']:.2f} s of {wall:.2f} s)")
    lines.append(f"segments: {report['n_segments']} ({report['resumed_segments']} resumed), budget used "
                 f"{report['budget_used']}, snapshot writes in the background thread {report['background_snapshot_writes']:.2f} s")
    stored = report["stored_state"]
    lines.append(f"optimizer state: {report['state_saves']} saves, {stored['state'] / 1e6:.2f} MB stored after the "
                 f"run, plus {stored['parts_stored_once'] / 1e6:.2f} MB of parts stored once ({stored['n_parts']})")
    ahead = report.get("fit_ahead") or {}
    if ahead.get("segments"):
        lines.append(f"fit while training: {ahead['segments']} segments ({ahead['failed']} failed), surrogate fits "
                     f"{ahead['fit_seconds']:.2f} s in the forked process, waited {ahead['wait_seconds']:.2f} s "
                     f"after training: {ahead['hidden_seconds']:.2f} s hidden")
    med = report["median_suggest"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f} s"  # noqa: E731
    lines.append(f"median suggest: initial phase {fmt(med['initial_phase'])}, afterwards {fmt(med['afterwards'])}")
    lines.append("surrogate time per suggestion (suggest = fit + acquisition):")
    for n, s in report["surrogate_at"].items():
        lines.append(f"  at {n:>2} obs (nearest {s['observations']:>2}): {s['seconds']:.3f} s, fit {s['fit_seconds']:.3f} s")
    best = report["best_value"]
    lines.append(f"best value: {best:.4f}" if best is not None else "best value: n/a")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="digits_hub", help="the tuning recipe (default: the demo's)")
    p.add_argument("--budget", type=int, default=40, help="budget_epochs (default 40, as the demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--study-dir", default=None, help="the study folder (default: a new temporary folder, removed)")
    p.add_argument("--initial-steps", type=int, default=None, help="FMSOptimizer initial_steps (default: its own)")
    p.add_argument("--refine-steps", type=int, default=None, help="FMSOptimizer refine_steps (default: its own)")
    p.add_argument("--json", default=None, help="also write the full report to this JSON file")
    p.add_argument("--epoch-sleep", type=float, default=0.0,
                   help="make every epoch this many seconds longer by sleeping (a stand-in for a slower workload)")
    p.add_argument("--epoch-work", type=float, default=0.0,
                   help="make every epoch about this many seconds longer with CPU work (matrix products)")
    p.add_argument("--fit-ahead-thread", action="store_true",
                   help="for comparison only: with fit_while_training, fit in a thread of this process instead of a "
                   "forked one (training then shares torch's random stream, threads and the GIL with the fit)")
    p.add_argument("overrides", nargs="*", help="further recipe overrides, key=value")
    return p.parse_args(argv)


def _slower_epochs(sleep: float, work: float) -> Any:
    """A Lightning callback that lengthens every training epoch: ``sleep`` idle seconds, ``work`` busy ones."""
    import lightning.pytorch as pl
    import torch

    class SlowerEpochs(pl.Callback):
        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            time.sleep(sleep)
            end = time.perf_counter() + work
            a = torch.ones(256, 256)
            while time.perf_counter() < end:
                a = (a @ a).clamp_(-1.0, 1.0)

    return SlowerEpochs()


class ThreadFitAhead:
    """``--fit-ahead-thread``: the tuner's ``FitAhead`` interface, fitting in a thread of this process."""

    def __init__(self, opt: Any) -> None:
        self.opt, self.seconds, self.error = opt, 0.0, None
        self.thread = threading.Thread(target=self._run, name="fit-ahead", daemon=True)

    def _run(self) -> None:
        t0 = time.perf_counter()
        try:
            self.opt.fit_ahead()
        except Exception as err:  # noqa: BLE001 - reported by finish()
            self.error = err
        self.seconds = time.perf_counter() - t0

    def start(self) -> bool:
        self.thread.start()
        return True

    def finish(self) -> float | None:
        self.thread.join()
        return None if self.error is not None else self.seconds

    def cancel(self) -> None:
        self.thread.join()


def recipe_tuner(args: argparse.Namespace) -> Any:
    """The demo's tuner from its recipe, with the script's arguments as overrides."""
    from fms_lightning.recipe_tune import tuner_from_recipe
    from fms_lightning.recipes import load_recipe

    overrides = [f"budget_epochs={args.budget}", f"seed={args.seed}", f"study_dir={args.study_dir}", "progress=false"]
    if args.initial_steps is not None:
        overrides.append(f"optimizer.initial_steps={args.initial_steps}")
    if args.refine_steps is not None:
        overrides.append(f"optimizer.refine_steps={args.refine_steps}")
    tuner, _ = tuner_from_recipe(load_recipe(args.recipe, [*overrides, *args.overrides]))
    if args.epoch_sleep or args.epoch_work:
        kwargs = tuner.runner.trainer_kwargs
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), _slower_epochs(args.epoch_sleep, args.epoch_work)]
    return tuner


def main(argv: Sequence[str] | None = None, make_tuner: Callable[[argparse.Namespace], Any] | None = None) -> dict[str, Any]:
    """Build the tuner (``make_tuner(args)``, default the recipe's), run it timed, print the table; the report."""
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.study_dir is None:
            args.study_dir = str(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-tuner-"))) / "study")
        t0 = time.perf_counter()
        tuner = (make_tuner or recipe_tuner)(args)
        construction = time.perf_counter() - t0
        if args.fit_ahead_thread:
            from fms_lightning.tuner import _loop

            stack.enter_context(_patched([(_loop, "FitAhead", lambda fn: ThreadFitAhead)]))
        report = measure(tuner)
    report["construction_seconds"] = construction  # recipe, hub load, FMSTuner(); not part of the wall time
    report["settings"] = {"recipe": args.recipe, "budget": args.budget, "seed": args.seed,
                          "initial_steps": args.initial_steps, "refine_steps": args.refine_steps,
                          "epoch_sleep": args.epoch_sleep, "epoch_work": args.epoch_work,
                          "fit_ahead_thread": args.fit_ahead_thread,
                          "overrides": list(args.overrides)}
    steps = f"initial_steps={args.initial_steps or 'default'}, refine_steps={args.refine_steps or 'default'}"
    print(format_table(report, f"bench_tuner: {args.recipe}, budget {args.budget}, seed {args.seed}, {steps} "
                               f"(construction before fit: {construction:.2f} s)"), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return report


if __name__ == "__main__":
    main()
