"""``NAdamWListModule``: a LightningModule base class configured by a NAdamW-list preset.

Subclass it, build the model in ``__init__`` (after ``super().__init__``), write
``training_step`` / ``validation_step``, and pass ``preset=``. The module then

- returns :class:`~fms_lightning.optim.NAdamW` with the preset's lr, betas and
  weight decay, plus :func:`~fms_lightning.optim.warmup_cosine` stepped every
  optimizer step (``interval="step"``), from ``configure_optimizers``;
- sets the preset's dropout on every dropout module (see
  :meth:`NAdamWListModule.apply_dropout` for exactly what is touched);
- exposes ``self.label_smoothing`` and :meth:`NAdamWListModule.cross_entropy`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch  # noqa: F401  (used by the doctest)
import torch.nn.functional as F
from torch import Tensor, nn

from fms_lightning.errors import ConfigurationError
from fms_lightning.optim.nadamw import NAdamW, Variant
from fms_lightning.optim.presets import NAdamWPoint, get_preset, preset_name
from fms_lightning.optim.schedule import warmup_cosine, warmup_steps_from_fraction

__all__ = ["NAdamWListModule", "set_dropout", "split_decay_groups"]

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)

PresetLike = int | str | NAdamWPoint | Mapping[str, Any]


def set_dropout(model: nn.Module, p: float) -> list[str]:
    """Set the dropout probability of every dropout module in ``model``.

    Touched: every ``nn.Dropout``, ``nn.Dropout1d/2d/3d``, ``nn.AlphaDropout`` and
    ``nn.FeatureAlphaDropout`` (their ``p``), and the attention-weight dropout of
    every ``nn.MultiheadAttention`` (its ``dropout`` attribute).
    ``nn.TransformerEncoderLayer`` / ``DecoderLayer`` are covered through the
    ``nn.Dropout`` and ``nn.MultiheadAttention`` modules they contain. Calls to
    ``torch.nn.functional.dropout`` in a ``forward`` cannot be reached; read
    ``NAdamWListModule.dropout`` there instead.

    Args:
        model: The module tree to edit in place.
        p: The probability, in ``[0, 1)``.

    Returns:
        The qualified names of the modules that were changed.
    """
    touched = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = p
            touched.append(name)
        elif isinstance(module, nn.MultiheadAttention):
            module.dropout = p
            touched.append(name)
    return touched


def split_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Param groups with weight decay on weights, and none on biases and norm parameters.

    A parameter is exempt when it is 1-D or smaller (biases, scales) or belongs to
    a normalization layer (BatchNorm, LayerNorm, GroupNorm, RMSNorm, LRN).
    """
    exempt: set[int] = set()
    for module in model.modules():
        if isinstance(module, _NORM_TYPES):
            exempt.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if id(p) in exempt or p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


class NAdamWListModule(pl.LightningModule):
    """A LightningModule whose optimizer, schedule and regularisation come from a NAdamW-list preset.

    Args:
        preset: A rank (1..5), a name (``"nadamw-list/3"``), a
            :class:`~fms_lightning.optim.NAdamWPoint`, or a mapping of its fields.
        total_steps: The schedule horizon ``T`` in optimizer steps. Takes
            precedence over ``total_epochs``.
        total_epochs: The horizon in epochs; ``T = total_epochs × optimizer steps
            per epoch``. A tuner that trains a trial in several ``fit`` calls
            passes the whole trial's length here.
        exclude_bias_and_norm: When True, biases and normalization parameters get
            no weight decay. Default False: decay on everything, as in the paper.
        variant: The NAdamW rule (``"optax"``, the paper's, or ``"algoperf"``).
        apply_preset_dropout: When True (default), the preset's dropout is set on
            every dropout module when training starts.

    Raises:
        ConfigurationError: For a bad horizon, or at fit time when no horizon
            can be worked out.
        UnknownPresetError: For an unknown preset rank or name.

    Without ``total_steps`` or ``total_epochs``, ``T`` is
    ``trainer.estimated_stepping_batches``.

    >>> class Net(NAdamWListModule):
    ...     def __init__(self, preset=1):
    ...         super().__init__(preset=preset)
    ...         self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(), torch.nn.Linear(8, 3))
    ...     def training_step(self, batch, batch_idx):
    ...         x, y = batch
    ...         return self.cross_entropy(self.net(x), y)
    >>> Net(preset="nadamw-list/2").dropout
    0.1
    """

    def __init__(
        self,
        preset: PresetLike = 1,
        *,
        total_steps: int | None = None,
        total_epochs: int | None = None,
        exclude_bias_and_norm: bool = False,
        variant: Variant = "optax",
        apply_preset_dropout: bool = True,
    ) -> None:
        super().__init__()
        point = get_preset(preset)
        if total_steps is not None and int(total_steps) <= 0:
            raise ConfigurationError(f"total_steps must be a positive integer, got {total_steps!r}.")
        if total_epochs is not None and int(total_epochs) <= 0:
            raise ConfigurationError(f"total_epochs must be a positive integer, got {total_epochs!r}.")
        if variant not in ("optax", "algoperf"):
            raise ConfigurationError(f"Unknown NAdamW variant {variant!r}; expected 'optax' or 'algoperf'.")
        self.preset: NAdamWPoint = point
        self.total_steps = total_steps
        self.total_epochs = total_epochs
        self.exclude_bias_and_norm = exclude_bias_and_norm
        self.variant: Variant = variant
        self.apply_preset_dropout = apply_preset_dropout
        self.save_hyperparameters(self._preset_hparams())

    def _preset_hparams(self) -> dict[str, Any]:
        return {
            "nadamw_preset": self.preset.to_dict(),
            "nadamw_preset_name": preset_name(self.preset),
            "nadamw_variant": self.variant,
            "total_steps": self.total_steps,
            "total_epochs": self.total_epochs,
            "exclude_bias_and_norm": self.exclude_bias_and_norm,
        }

    @property
    def label_smoothing(self) -> float:
        """The preset's label smoothing, for use in the loss."""
        return self.preset.label_smoothing

    @property
    def dropout(self) -> float:
        """The preset's dropout probability."""
        return self.preset.dropout

    def cross_entropy(self, logits: Tensor, target: Tensor, **kwargs: Any) -> Tensor:
        """Cross-entropy with the preset's label smoothing.

        Args:
            logits: `(batch, classes)` or `(batch, classes, ...)` unnormalised scores.
            target: `(batch,)` or `(batch, ...)` class indices, or class probabilities.
            **kwargs: Passed to ``torch.nn.functional.cross_entropy``.

        Returns:
            The loss (a scalar under the default ``reduction="mean"``).
        """
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing, **kwargs)

    def apply_dropout(self) -> list[str]:
        """Set the preset's dropout on every dropout module; see :func:`set_dropout`.

        Returns:
            The qualified names of the modules that were changed.
        """
        return set_dropout(self, self.preset.dropout)

    def schedule_horizon(self) -> int:
        """The schedule length ``T`` in optimizer steps (needs an attached trainer for the defaults).

        Raises:
            ConfigurationError: If no finite horizon can be worked out.
        """
        if self.total_steps is not None:
            return int(self.total_steps)
        trainer = self.trainer
        estimated = trainer.estimated_stepping_batches  # also sets up the train dataloader
        if self.total_epochs is not None:
            per_epoch = math.ceil(trainer.num_training_batches / max(trainer.accumulate_grad_batches, 1))
            if not math.isfinite(per_epoch) or per_epoch <= 0:
                raise ConfigurationError(
                    "Cannot convert total_epochs into optimizer steps: the training dataloader has "
                    f"{trainer.num_training_batches} batches. Pass total_steps= instead."
                )
            return int(self.total_epochs * per_epoch)
        if not math.isfinite(estimated) or estimated <= 0:
            raise ConfigurationError(
                "The NAdamW-list schedule needs a finite training horizon, but the Trainer has none "
                f"(estimated_stepping_batches={estimated}). Set max_epochs or max_steps on the Trainer, "
                "or pass total_steps= or total_epochs= to the module."
            )
        return int(estimated)

    def configure_optimizers(self) -> dict[str, Any]:
        """NAdamW with the preset, and the warmup-cosine schedule on interval ``"step"``."""
        if "nadamw_preset" not in self.hparams:  # a subclass's own save_hyperparameters() replaced ours
            self.hparams.update(self._preset_hparams())
        if self.apply_preset_dropout:
            self.apply_dropout()
        point = self.preset
        if self.exclude_bias_and_norm:
            params: Any = split_decay_groups(self, point.weight_decay)
        else:
            params = [p for p in self.parameters() if p.requires_grad]
        optimizer = NAdamW(
            params,
            lr=point.lr,
            betas=(point.beta1, point.beta2),
            weight_decay=point.weight_decay,
            variant=self.variant,
        )
        total = self.schedule_horizon()
        scheduler = warmup_cosine(
            optimizer, warmup_steps=warmup_steps_from_fraction(point.warmup_fraction, total), total_steps=total
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1, "name": "lr-nadamw"},
        }

