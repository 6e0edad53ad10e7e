"""The FMS surrogate: rows without leakage, the feature extractor ψ, and the deep-kernel GP.

* :mod:`~fms_lightning.surrogate.dataset` turns observations into rows (x, j, Y_{i,j-1}, W_{i,j-1}).
* :class:`FeatureExtractor` is ψ of eq. 7 (hyperparameter MLP, curve CNN, weight features).
* :class:`Surrogate` fits the ``ExactGP`` (eq. 3) with the paper's schedule and predicts.
* :class:`WeightFeaturizer` embeds checkpointed weights once per snapshot (frozen GMN);
  :class:`SnapshotFeaturizer` and :class:`GraphReadout` train the GMN in the loop (:class:`GMNTraining`).
"""

from __future__ import annotations

from fms_lightning.surrogate.dataset import InputLayout, forecast_rows, make_row, training_rows
from fms_lightning.surrogate.features import FeatureExtractor
from fms_lightning.surrogate.gp import DeepKernelGP, Kernel, Surrogate, SurrogateConfig
from fms_lightning.surrogate.readout import GMNTraining, GraphReadout, SnapshotFeaturizer
from fms_lightning.surrogate.weights import WeightFeaturizer, model_graph_fn

__all__ = [
    "InputLayout",
    "make_row",
    "forecast_rows",
    "training_rows",
    "FeatureExtractor",
    "DeepKernelGP",
    "Kernel",
    "Surrogate",
    "SurrogateConfig",
    "WeightFeaturizer",
    "GMNTraining",
    "GraphReadout",
    "SnapshotFeaturizer",
    "model_graph_fn",
]
