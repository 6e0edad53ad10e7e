"""FMSTuner: run Forecasting Model Search with Lightning, resumably, over a model hub.

Each step (Algorithm 1 of the FMS paper, one epoch at a time):

1. ask the :class:`~fms_lightning.optimizer.FMSOptimizer` for ``(trial, epoch)``;
2. restore that trial's last Lightning checkpoint (weights, optimizer,
   scheduler and loop state), or build it fresh with the hub weights;
3. train up to ``epoch`` with :class:`~fms_lightning.callbacks.WeightSnapshot`
   attached, which records the metric and the weights ``W_{i,j}`` into the study;
4. save the checkpoint atomically, tell the optimizer, and save its state.

The study folder holds everything; calling :meth:`FMSTuner.fit` again on the same
folder continues where the last run stopped (after a crash too): recorded epochs
are reused, and an interrupted trial restarts from its last complete checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import nn

from fms_lightning.callbacks.trial_guards import EpochSeeder, NonFiniteLossGuard
from fms_lightning.callbacks.weight_snapshot import WeightSnapshot
from fms_lightning.errors import ConfigurationError, FMSError, MissingMetricError, TrialFailedError
from fms_lightning.hub import HubEntry, ModelHub
from fms_lightning.optimizer import FMSOptimizer, Method, Suggestion
from fms_lightning.result import TuneResult, leaderboard, plot_study
from fms_lightning.space import SearchSpace
from fms_lightning.study import Study, TrialStatus, atomic_write

__all__ = ["FMSTuner", "load_hub_weights"]

log = logging.getLogger(__name__)

BuildFn = Callable[[dict[str, Any], HubEntry | None], pl.LightningModule]
DataModuleLike = pl.LightningDataModule | Callable[[dict[str, Any]], pl.LightningDataModule]


def load_hub_weights(module: nn.Module, state: Mapping[str, torch.Tensor], *, entry: str = "") -> str:
    """Load a hub entry's weights into the submodule of ``module`` whose parameter names match.

    The hub model is usually an attribute of the LightningModule (``self.model``);
    the first submodule (in ``named_modules`` order, the module itself first)
    whose ``state_dict`` keys equal the hub file's keys receives them.

    Returns:
        The qualified name of the submodule that was loaded (``""`` for the root).

    Raises:
        ConfigurationError: If no submodule has exactly the hub file's keys.
    """
    keys = set(state)
    for name, sub in module.named_modules():
        if set(sub.state_dict()) == keys:
            sub.load_state_dict(dict(state))
            return name
    sample = sorted(keys)[:3]
    raise ConfigurationError(
        f"build() returned a {type(module).__name__} with no submodule whose parameters match hub entry "
        f"{entry!r} (keys such as {sample}). Make build(config, hub_entry) hold the model built by "
        "hub_entry.build(load_weights=False) as an attribute, e.g. self.model."
    )


class _NullWriter:
    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __enter__(self) -> _NullWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _summary_writer(path: Path) -> Any:
    """A TensorBoard writer for the tuner's own curves (a no-op if tensorboard is unavailable)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        return _NullWriter()

    return SummaryWriter(str(path))


class _BuildError(ConfigurationError):
    """build() broke its contract: no trial can succeed, so the study stops."""


_FatalError = (_BuildError, MissingMetricError)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"lightning(\..*)?")
        warnings.filterwarnings("ignore", message=r".*(does not have many workers|LeafSpec|ckpt_path).*")
        try:
            yield
        finally:
            for lg, lvl in zip(loggers, levels):
                lg.setLevel(lvl)


class FMSTuner:
    """Tune hyperparameters and the choice of pretrained model with FMS on Lightning.

    Args:
        build: ``build(config, hub_entry) -> LightningModule``. The tuner loads the
            hub entry's weights into it (see :func:`load_hub_weights`).
        datamodule: A ``LightningDataModule``, or ``config -> LightningDataModule``
            so that e.g. ``batch_size`` can be a hyperparameter.
        space: The search space; a :class:`~fms_lightning.space.HubChoice`
            dimension picks the hub entry.
        hub: The :class:`~fms_lightning.hub.ModelHub` (required when the space has
            a hub dimension).
        monitor: The logged validation metric to optimise, e.g. ``"val_acc"``.
        mode: ``"max"`` or ``"min"``.
        budget_epochs: Total epochs to train over all trials.
        max_epochs_per_trial: The longest any trial trains; also the schedule
            horizon (``NAdamWListModule`` gets ``total_epochs`` set to it).
        method: ``"fms-gmn"``, ``"fms-flat"``, ``"dyhpo"``, ``"gp"`` or ``"random"``.
        study_dir: The study folder (created, or continued when it exists).
        seed: Seeds the optimizer and every trial's training epochs.
        trainer_kwargs: Extra ``lightning.Trainer`` arguments (e.g. ``accelerator``).
        optimizer_kwargs: Extra :class:`~fms_lightning.optimizer.FMSOptimizer`
            arguments (``n_candidates``, ``learning_curve``, ...).
        progress: Show a progress bar over the budget.
        max_consecutive_failures: Stop with an error after this many trials in a
            row fail.

    Raises:
        ConfigurationError: For a bad mode, budget, method, or a hub dimension
            without a hub (each message says what was expected).

    >>> tuner = FMSTuner(build, dm, space, hub, monitor="val_acc", mode="max",  # doctest: +SKIP
    ...                  budget_epochs=40, max_epochs_per_trial=10, study_dir="runs/study")
    >>> result = tuner.fit()  # doctest: +SKIP
    >>> result.best_config, result.best_value  # doctest: +SKIP
    """

    def __init__(
        self,
        build: BuildFn,
        datamodule: DataModuleLike,
        space: SearchSpace,
        hub: ModelHub | None = None,
        *,
        monitor: str,
        mode: Literal["min", "max"],
        budget_epochs: int,
        max_epochs_per_trial: int,
        method: str = "fms-gmn",
        study_dir: str | os.PathLike[str],
        seed: int = 0,
        trainer_kwargs: Mapping[str, Any] | None = None,
        optimizer_kwargs: Mapping[str, Any] | None = None,
        progress: bool = True,
        max_consecutive_failures: int = 5,
    ) -> None:
        if not callable(build):
            raise ConfigurationError(f"build must be callable as build(config, hub_entry), got {build!r}.")
        if not (isinstance(datamodule, pl.LightningDataModule) or callable(datamodule)):
            raise ConfigurationError(
                f"datamodule must be a LightningDataModule or a callable config -> LightningDataModule, got {datamodule!r}."
            )
        if not isinstance(space, SearchSpace):
            raise ConfigurationError(f"space must be a SearchSpace, got {type(space).__name__}.")
        if mode not in ("min", "max"):
            raise ConfigurationError(f"mode must be 'min' or 'max', got {mode!r}.")
        if not isinstance(monitor, str) or not monitor:
            raise ConfigurationError(f"monitor must name a logged metric such as 'val_acc', got {monitor!r}.")
        if not isinstance(max_epochs_per_trial, int) or max_epochs_per_trial < 1:
            raise ConfigurationError(f"max_epochs_per_trial must be an integer >= 1, got {max_epochs_per_trial!r}.")
        if not isinstance(budget_epochs, int) or budget_epochs < 1:
            raise ConfigurationError(
                f"budget_epochs must be at least one epoch (an integer >= 1), got {budget_epochs!r}."
            )
        try:
            Method(method)
        except ValueError:
            raise ConfigurationError(f"Unknown method {method!r}; expected one of {[m.value for m in Method]}.") from None
        if space.hub_name is not None:
            if hub is None:
                raise ConfigurationError(
                    f"The search space has a hub dimension {space.hub_name!r} but no hub was given; pass hub=ModelHub(...)."
                )
            missing = [v for v in space[space.hub_name].values if v not in hub.names]  # type: ignore[attr-defined]
            if missing:
                raise ConfigurationError(f"Hub dimension values {missing} are not entries of the hub {hub.names}.")
        self.build = build
        self.datamodule = datamodule
        self.space = space
        self.hub = hub
        self.monitor = monitor
        self.mode = mode
        self.budget_epochs = budget_epochs
        self.max_epochs_per_trial = max_epochs_per_trial
        self.method = Method(method)
        self.study_dir = Path(study_dir)
        self.seed = int(seed)
        self.trainer_kwargs = dict(trainer_kwargs or {})
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.progress = progress
        self.max_consecutive_failures = int(max_consecutive_failures)
        self._start_cache: dict[str, dict[str, torch.Tensor]] = {}
        self._graph_modules: dict[str, pl.LightningModule] = {}
        self.study: Study | None = None
        self.optimizer: FMSOptimizer | None = None

    # ------------------------------------------------------------------ helpers
    def _entry(self, config: Mapping[str, Any]) -> HubEntry | None:
        if self.space.hub_name is None or self.hub is None:
            return None
        return self.hub.get(config[self.space.hub_name])

    def _entry_key(self, config: Mapping[str, Any]) -> str:
        """The cache key of a config's architecture and starting weights: its hub entry."""
        entry = self._entry(config)
        return entry.name if entry is not None else "__fresh__"

    def _settings(self) -> dict[str, Any]:
        return {"space": self.space.to_dict(), "monitor": self.monitor, "mode": self.mode,
                "max_epochs_per_trial": self.max_epochs_per_trial, "method": self.method.value, "seed": self.seed}

    def _make_module(self, config: dict[str, Any], *, load_weights: bool) -> pl.LightningModule:
        entry = self._entry(config)
        module = self.build(dict(config), entry)
        if not isinstance(module, pl.LightningModule):
            raise _BuildError(
                f"build(config, hub_entry) must return a LightningModule, got {type(module).__name__}."
            )
        if hasattr(module, "total_epochs") and hasattr(module, "schedule_horizon"):
            module.total_epochs = self.max_epochs_per_trial  # NAdamWListModule: the whole trial is the horizon
            module.total_steps = None
        if load_weights and entry is not None and entry.weights is not None:
            try:
                load_hub_weights(module, entry.state_dict(), entry=entry.name)
            except ConfigurationError as err:
                raise _BuildError(str(err)) from err
        return module

    def _start_weights(self, config: dict[str, Any]) -> dict[str, torch.Tensor]:
        """W_{i,0} of a new config: the module built with its hub weights (cached per entry)."""
        key = self._entry_key(config)
        if key not in self._start_cache:
            torch.manual_seed(self.seed)
            module = self._make_module(config, load_weights=True)
            self._start_cache[key] = {k: v.detach().clone() for k, v in module.state_dict().items()}
        return self._start_cache[key]

    def _graph(self, config: dict[str, Any], state_dict: Mapping[str, torch.Tensor]) -> Any:
        """G(W): the parameter graph of a trial's module with weights ``state_dict``.

        The module's architecture depends on the hub entry only, so one module per
        entry is traced. A LightningModule's ``example_input_array`` (if set) is
        passed along so shapes can be propagated (needed e.g. for DeepSets pooling).
        """
        from fms_lightning.weightspace import parameter_graph

        key = self._entry_key(config)
        module = self._graph_modules.get(key)
        if module is None:
            module = self._graph_modules[key] = self._make_module(config, load_weights=False)
        example = getattr(module, "example_input_array", None)
        return parameter_graph(module, state_dict, example_input=example)

    def _datamodule(self, config: dict[str, Any]) -> pl.LightningDataModule:
        if isinstance(self.datamodule, pl.LightningDataModule):
            return self.datamodule
        dm = self.datamodule(dict(config))
        if not isinstance(dm, pl.LightningDataModule):
            raise ConfigurationError(f"datamodule(config) must return a LightningDataModule, got {type(dm).__name__}.")
        return dm

    def _checkpoint_dir(self, study_trial: int) -> Path:
        return self.study_dir / "checkpoints" / f"trial_{study_trial:05d}"

    def _checkpoint(self, study_trial: int) -> tuple[int, Path | None]:
        """(epoch, path) of the trial's last complete Lightning checkpoint, or (0, None)."""
        folder = self._checkpoint_dir(study_trial)
        best = (0, None)
        for p in folder.glob("epoch_*.ckpt") if folder.is_dir() else []:
            with contextlib.suppress(ValueError):
                epoch = int(p.stem.split("_")[1])
                if epoch > best[0]:
                    best = (epoch, p)
        return best

    # ------------------------------------------------------------------ the loop
    def _new_optimizer(self) -> FMSOptimizer:
        kwargs = dict(self.optimizer_kwargs)
        if self.method.uses_weights:
            kwargs.setdefault("graph_fn", self._graph)
            kwargs.setdefault("starting_weights_fn", self._start_weights)
        return FMSOptimizer(self.space, max_epochs=self.max_epochs_per_trial, method=self.method.value,
                            mode=self.mode, seed=self.seed, **kwargs)

    def _train_segment(self, study: Study, study_trial: int, config: dict[str, Any], target: int) -> None:
        """Train ``study_trial`` from its last complete checkpoint up to ``target`` epochs.

        The new epochs are committed when their checkpoint is saved (atomically).
        """
        ckpt_epoch, ckpt = self._checkpoint(study_trial)
        # Observations past the last checkpoint were not committed: they are retrained (and replaced).
        # Seeded exactly as in _start_weights, so parameters the hub does not cover start
        # from the same values that the optimizer was told are W_{i,0}.
        torch.manual_seed(self.seed)
        module = self._make_module(config, load_weights=ckpt is None)
        from lightning.pytorch.loggers import TensorBoardLogger

        snapshot = WeightSnapshot(study, monitor=self.monitor, trial_id=study_trial, save_start_weights=True)
        logger = TensorBoardLogger(str(self.study_dir / "tensorboard"), name="trials", version=f"trial_{study_trial:05d}",
                                   default_hp_metric=False)
        kwargs = {
            "accelerator": "cpu", "logger": logger, "enable_progress_bar": False, "enable_model_summary": False,
            "enable_checkpointing": False, "num_sanity_val_steps": 0, "deterministic": True, "log_every_n_steps": 1,
        } | self.trainer_kwargs
        kwargs["callbacks"] = [snapshot, EpochSeeder(self.seed, f"trial-{study_trial}", first_epoch=ckpt_epoch), NonFiniteLossGuard(),
                               *kwargs.get("callbacks", [])]
        kwargs["max_epochs"] = target
        study.set_status(study_trial, TrialStatus.RUNNING)
        with _quiet_lightning():
            trainer = pl.Trainer(**kwargs)
            trainer.fit(module, datamodule=self._datamodule(config), ckpt_path=str(ckpt) if ckpt else None,
                        weights_only=True)
        if trainer.interrupted:
            raise KeyboardInterrupt
        if trainer.current_epoch < target:
            raise TrialFailedError(f"training stopped at epoch {trainer.current_epoch} before epoch {target}")
        # The checkpoint is the commit point of the new epochs.
        path = self._checkpoint_dir(study_trial) / f"epoch_{target:04d}.ckpt"
        atomic_write(path, lambda tmp: trainer.save_checkpoint(tmp, weights_only=False))
        if ckpt is not None and ckpt != path:
            ckpt.unlink(missing_ok=True)

    def _tell(self, opt: FMSOptimizer, study: Study, opt_trial: int, study_trial: int) -> None:
        """Feed the optimizer every committed observation of the trial it has not seen.

        The optimizer's state is saved only when something was observed.
        """
        known = len(opt.trials[opt_trial].curve)
        ckpt_epoch, _ = self._checkpoint(study_trial)
        new = [o for o in study.observations(study_trial) if known < o.epoch <= ckpt_epoch]
        for o in new:
            weights = str(study.path / o.snapshot) if o.snapshot else None
            opt.observe(opt_trial, o.epoch, o.value, weights=weights)
        if new:
            study.save_tuner_state(opt.state_dict())

    def _pretrain_from_recorded_runs(self, opt: FMSOptimizer, study: Study) -> int:
        """Pretrain the surrogate on runs that ``WeightSnapshot`` recorded outside the tuner.

        A run is used when its config fits the search space and its epochs are
        contiguous from 1 (and, for the fms methods, its starting weights were
        recorded). Returns the number of runs used.
        """
        from fms_lightning.errors import SearchSpaceError

        runs = []
        for t in study.trials():
            if t.opt_trial_id is not None:
                continue
            obs = study.observations(t.trial_id)
            config = {k: t.config[k] for k in self.space.names if k in t.config}
            try:
                self.space.validate(config)
            except SearchSpaceError as err:
                log.info("Not learning from recorded trial %s: %s", t.trial_id, err)
                continue
            if not obs or [o.epoch for o in obs] != list(range(1, len(obs) + 1)):
                continue
            run: dict[str, Any] = {"config": config, "curve": [o.value for o in obs]}
            if self.method.uses_weights:
                start = study.start_weights_path(t.trial_id)
                if start is None or any(o.snapshot is None for o in obs):
                    continue
                run["weights"] = [str(study.path / start)] + [str(study.path / str(o.snapshot)) for o in obs]
            runs.append(run)
        if runs:
            opt.pretrain(runs)
            log.info("Pretrained the surrogate on %d run(s) recorded in the study.", len(runs))
        return len(runs)

    def _committed_budget(self, study: Study) -> int:
        total = 0
        for t in study.trials():
            if t.opt_trial_id is not None:
                total += min(study.last_epoch(t.trial_id), self._checkpoint(t.trial_id)[0])
        return total

    def fit(self) -> TuneResult:
        """Run (or continue) the study until ``budget_epochs`` epochs are trained.

        The last segment may go past the budget when it trains several epochs at
        once (``method="random"`` trains each trial to ``max_epochs_per_trial``).

        Returns:
            A :class:`~fms_lightning.result.TuneResult`.

        Raises:
            StudyLockedError: If another process is running this study.
            ConfigurationError: If the study folder holds a study with other
                settings, ``build`` does not return a LightningModule, or
                ``monitor`` is never logged.
            TrialFailedError: If every trial failed (the message quotes the reasons),
                or ``max_consecutive_failures`` trials failed in a row.
        """
        from fms_lightning._progress import BudgetProgress

        with Study(self.study_dir) as study:
            self.study = study
            stored = study.get_meta("tuner_settings")
            if stored is not None and stored != self._settings():
                raise ConfigurationError(
                    f"The study at {str(self.study_dir)!r} was created with other settings ({stored}); "
                    "use a new study_dir, or the same settings to continue it."
                )
            study.set_meta("tuner_settings", self._settings())
            opt = self.optimizer = self._new_optimizer()
            state = study.load_tuner_state()
            if state is not None:
                opt.load_state_dict(state)
            else:
                self._pretrain_from_recorded_runs(opt, study)
            for t in study.trials():  # observations committed after the last saved optimizer state
                if t.opt_trial_id in opt.trials:
                    self._tell(opt, study, t.opt_trial_id, t.trial_id)
            # Trials the optimizer handed out but that never finished: train them first.
            unfinished = [Suggestion(tid, dict(t.config), t.target) for tid, t in opt.trials.items()
                          if t.status is TrialStatus.RUNNING]
            used = self._committed_budget(study)
            failures: list[str] = []
            writer = _summary_writer(self.study_dir / "tensorboard" / "tuner")
            with BudgetProgress(self.budget_epochs, enabled=self.progress, initial=used) as bar, writer:
                while used < self.budget_epochs:
                    t0 = time.perf_counter()
                    s = unfinished.pop(0) if unfinished else opt.suggest()
                    suggest_seconds = time.perf_counter() - t0
                    study.save_tuner_state(opt.state_dict())  # the suggestion is now durable
                    entry = self._entry(s.config)
                    sid = study.add_trial(s.config, entry.name if entry else None, opt_trial_id=s.trial_id)
                    try:
                        self._train_segment(study, sid, dict(s.config), s.epoch)
                        self._tell(opt, study, s.trial_id, sid)
                        done = s.epoch >= self.max_epochs_per_trial
                        study.set_status(sid, TrialStatus.COMPLETED if done else TrialStatus.PAUSED)
                        failures.clear()
                    except KeyboardInterrupt:
                        raise
                    except _FatalError:
                        raise
                    except Exception as err:  # noqa: BLE001 - one trial's failure must not end the study
                        reason = f"{type(err).__name__}: {err}"
                        log.warning("Trial %s failed: %s", sid, reason)
                        study.set_status(sid, TrialStatus.FAILED, reason=reason)
                        with contextlib.suppress(FMSError):
                            self._tell(opt, study, s.trial_id, sid)
                        opt.mark_failed(s.trial_id, reason)
                        study.save_tuner_state(opt.state_dict())
                        failures.append(f"trial {sid}: {reason}")
                        if len(failures) >= self.max_consecutive_failures:
                            raise TrialFailedError(
                                f"{len(failures)} trials in a row failed; stopping. Reasons:\n  " + "\n  ".join(failures)
                            ) from err
                    used = self._committed_budget(study)
                    best = opt.best()
                    bar.update_to(used, None if best is None else best[3])
                    if best is not None:
                        writer.add_scalar("tuner/incumbent", best[3], used)
                    writer.add_scalar("tuner/suggest_seconds", suggest_seconds, used)
                    fit_loss = getattr(opt.surrogate, "last_fit_loss", None)
                    if fit_loss is not None:
                        writer.add_scalar("tuner/surrogate_fit_loss", fit_loss, used)
            return self._result(study)

    def _result(self, study: Study) -> TuneResult:
        board = leaderboard(study, self.mode, trials=[t for t in study.trials() if t.opt_trial_id is not None])
        if not board or board[0].best_value is None:
            reasons = [f"trial {r.trial_id}: {r.reason}" for r in board if r.reason]
            raise TrialFailedError("Every trial failed. Reasons:\n  " + "\n  ".join(reasons or ["(none recorded)"]))
        top = board[0]
        snap = next(o.snapshot for o in study.observations(top.trial_id) if o.epoch == top.best_epoch)
        plot = plot_study(study, self.mode, self.study_dir / "study.png", monitor=self.monitor)
        assert top.best_epoch is not None and top.best_value is not None
        return TuneResult(
            best_trial_id=top.trial_id, best_config=top.config, best_hub_entry=top.hub_entry,
            best_epoch=top.best_epoch, best_value=top.best_value, best_checkpoint=str(study.path / str(snap)),
            leaderboard=board, budget_used=self._committed_budget(study), study_dir=str(self.study_dir), plot=plot,
        )

