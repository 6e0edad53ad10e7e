"""The main job until the tuner lands: train the digits CNN with one NAdamW-list preset.

It prints the validation accuracy after every epoch and the final figure, writes
TensorBoard logs (``tensorboard --logdir <output_dir>``), the last checkpoint,
and ``curves.png`` (validation accuracy per epoch and the learning rate per step).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from fms_lightning.examples.digits import DigitsCNN
from fms_lightning.examples.sklearn_data import SklearnDataModule
from fms_lightning.optim.presets import NAdamWPoint, preset_name
from fms_lightning.optim.recipe import DemoData, DemoModel, DemoRecipe, resolve_preset_spec, validate_demo_recipe  # noqa: F401 - the schema lives in the library; these names stay importable here

__all__ = ["DemoRecipe", "DemoResult", "run_demo", "resolve_preset_spec", "validate_demo_recipe"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoResult:
    """What the demo measured."""

    preset: NAdamWPoint
    val_acc_per_epoch: tuple[float, ...]
    final_val_acc: float
    log_dir: str
    checkpoint: str
    plot: str | None


class _EpochPrinter(Callback):
    """Prints one line per validation epoch and remembers the accuracy and lr."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.val_acc: list[float] = []
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.lrs.append(float(trainer.optimizers[0].param_groups[0]["lr"]))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Validation runs inside the training epoch, so both losses are known here.
        metrics = trainer.callback_metrics
        if "val_acc" not in metrics:
            return
        acc = float(metrics["val_acc"])
        self.val_acc.append(acc)
        train = metrics.get("train_loss")
        train_s = f"train_loss={float(train):.4f}  " if train is not None else ""
        if trainer.is_global_zero:
            print(
                f"epoch {trainer.current_epoch + 1:>3}/{trainer.max_epochs}  {train_s}"
                f"val_loss={float(metrics['val_loss']):.4f}  val_acc={acc:.4f}",
                file=self.stream,
                flush=True,
            )


def _plot(printer: _EpochPrinter, path: Path, title: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(range(1, len(printer.val_acc) + 1), printer.val_acc, marker="o")
    ax1.set(xlabel="epoch", ylabel="validation accuracy", title="Validation accuracy")
    ax1.grid(alpha=0.3)
    ax2.plot(range(1, len(printer.lrs) + 1), printer.lrs)
    ax2.set(xlabel="optimizer step", ylabel="learning rate", title="Warmup + cosine schedule")
    ax2.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def run_demo(cfg: DictConfig | dict[str, Any], *, stream: TextIO | None = None, progress: bool = False) -> DemoResult:
    """Train the digits CNN with the recipe's preset.

    Args:
        cfg: A recipe (see ``recipes/digits_demo.yaml``).
        stream: Where the per-epoch lines go.
        progress: Show Lightning's progress bar as well.

    Returns:
        A :class:`DemoResult` with the per-epoch and final validation accuracy.

    Raises:
        ConfigurationError: For a recipe with unknown or bad keys (see :func:`validate_demo_recipe`).
    """
    stream = stream if stream is not None else sys.stdout
    cfg = validate_demo_recipe(cfg)
    point = resolve_preset_spec(cfg.preset)
    data_cfg, model_cfg, trainer_cfg = cfg.data, cfg.model, cfg.trainer
    out_dir = Path(str(cfg.output_dir))
    seed = int(cfg.seed)

    pl.seed_everything(seed, workers=True, verbose=False)
    dm = SklearnDataModule(
        data_cfg.name, batch_size=data_cfg.batch_size, val_fraction=data_cfg.val_fraction, seed=seed, as_image=True
    )
    model = DigitsCNN(
        point,
        channels=list(model_cfg.channels),
        hidden=int(model_cfg.hidden),
        variant=str(cfg.get("variant", "optax")),
    )
    name = preset_name(point) or "custom"
    logger = TensorBoardLogger(save_dir=str(out_dir), name="digits-cnn", default_hp_metric=False)
    printer = _EpochPrinter(stream)
    ckpt = ModelCheckpoint(dirpath=os.path.join(logger.log_dir, "checkpoints"), save_last=True, save_top_k=0)
    trainer = pl.Trainer(
        **OmegaConf.to_container(trainer_cfg, resolve=True),  # type: ignore[arg-type]
        logger=logger,
        callbacks=[printer, ckpt, LearningRateMonitor(logging_interval="step")],
        enable_progress_bar=progress,
        enable_model_summary=False,
        accelerator="cpu",
        deterministic=True,
        log_every_n_steps=5,
        num_sanity_val_steps=0,
    )
    print(f"Training DigitsCNN on digits with preset {name}: {point}", file=stream, flush=True)
    trainer.fit(model, datamodule=dm)
    final = float(printer.val_acc[-1]) if printer.val_acc else float("nan")
    plot = _plot(printer, Path(logger.log_dir) / "curves.png", f"DigitsCNN with {name}")
    print(f"final val_acc={final:.4f}", file=stream)
    print(f"TensorBoard logs: {logger.log_dir}  (view: tensorboard --logdir {out_dir})", file=stream)
    if plot:
        print(f"curves: {plot}", file=stream, flush=True)
    return DemoResult(point, tuple(printer.val_acc), final, logger.log_dir, ckpt.last_model_path, plot)
