"""Lightning callbacks shipped as ``fms_lightning.callbacks``."""
