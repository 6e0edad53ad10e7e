"""Lightning plumbing of the tuner: hub weights into a module, per-trial data, quiet runs, trial logs."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from typing_extensions import override

from fms_lightning.errors import ConfigurationError

__all__ = ["load_hub_weights", "datamodule_factory", "quiet_lightning"]

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


class _DataModuleFromClass:
    """``config -> cls(**the config values that cls.__init__ names)``; picklable, for Ray workers."""

    def __init__(self, cls: type[pl.LightningDataModule]) -> None:
        import inspect

        self.cls = cls
        params = inspect.signature(cls.__init__).parameters
        self.names = tuple(n for n, p in params.items() if n != "self"
                           and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

    def __call__(self, config: Mapping[str, Any]) -> pl.LightningDataModule:
        return self.cls(**{k: v for k, v in config.items() if k in self.names})

    def __repr__(self) -> str:
        return f"{self.cls.__name__}(<config values for {', '.join(self.names) or 'no parameters'}>)"


def datamodule_factory(obj: Any) -> pl.LightningDataModule | Callable[[dict[str, Any]], pl.LightningDataModule]:
    """What the tuner calls to get a trial's data: a LightningDataModule, or ``config -> LightningDataModule``.

    A LightningDataModule *class* is instantiated per trial with the config's values
    for the parameters its ``__init__`` names (so ``batch_size`` in the search space
    reaches it); its other parameters keep their defaults.

    Raises:
        ConfigurationError: If ``obj`` is neither a LightningDataModule, nor its class, nor callable.
    """
    if isinstance(obj, type) and issubclass(obj, pl.LightningDataModule):
        return _DataModuleFromClass(obj)
    if isinstance(obj, pl.LightningDataModule) or (callable(obj) and not isinstance(obj, type)):
        return obj
    raise ConfigurationError(
        f"datamodule must be a LightningDataModule, a LightningDataModule class, or a callable "
        f"config -> LightningDataModule; got {obj!r}."
    )


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's per-run chatter (its INFO logs and advisory warnings)."""
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


class _TrialLogs(Callback):
    """A trial's TensorBoard extras: its config in the HParams plugin, and its metrics by epoch.

    Lightning logs a trial's metrics by global step, which differs between trials
    with different batch sizes; ``by_epoch/<metric>`` has the epoch as its step, so
    trials line up.
    """

    def __init__(self, config: Mapping[str, Any], monitor: str, first_segment: bool) -> None:
        self.config = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.items()}
        self.monitor = monitor
        self.first_segment = first_segment

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = trainer.logger
        if logger is None or not trainer.is_global_zero:
            return
        logger.log_hyperparams(self.config)  # hparams.yaml
        if self.first_segment and hasattr(logger, "experiment"):
            with contextlib.suppress(Exception):  # the HParams plugin's table (TensorBoard only)
                from torch.utils.tensorboard.summary import hparams

                writer = logger.experiment._get_file_writer()
                for summary in hparams(self.config, {f"by_epoch/{self.monitor}": 0.0}):
                    writer.add_summary(summary)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.logger is None or not trainer.is_global_zero:
            return
        metrics = {f"by_epoch/{k}": float(v) for k, v in trainer.callback_metrics.items()
                   if isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)}
        if metrics:
            trainer.logger.log_metrics(metrics, step=trainer.current_epoch + 1)
