"""Lightning callbacks, shipped as ``fms_lightning.callbacks``."""

from fms_lightning.callbacks.weight_snapshot import WeightSnapshot

__all__ = ["WeightSnapshot"]
