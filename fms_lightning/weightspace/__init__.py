"""Weight-space featurization: parameter graphs of any ``nn.Module`` and their encoders.

* :func:`parameter_graph` turns a module (structure, via :mod:`torch.fx`) and a state
  dict (values) into a torch_geometric graph, FMS paper §3.1.
* :class:`GMNEncoder` embeds such graphs permutation-invariantly (eq. 6);
  :class:`FlatEncoder` is the FMS-FLAT ablation.
* :class:`NFNEncoder` is FMS-NFN: the NP layers of Zhou et al. (2023) over the weights of
  one MLP / plain CNN architecture (:func:`check_same_architecture` vets a set of them).
* :class:`GraphCache` converts each snapshot once, keyed by a hash of its content;
  :func:`load_state_dict_file` loads snapshots safely.
"""

from __future__ import annotations

from fms_lightning.weightspace.cache import GraphCache, load_state_dict_file, state_dict_hash
from fms_lightning.weightspace.encoders import FlatEncoder, GMNEncoder
from fms_lightning.weightspace.features import NODE_FEATURE_DIM, EdgeType, NodeType, edge_feature_dim
from fms_lightning.weightspace.graph import parameter_graph
from fms_lightning.weightspace.nfn import NFNEncoder
from fms_lightning.weightspace._chain import check_same_architecture

__all__ = [
    "parameter_graph",
    "GMNEncoder",
    "FlatEncoder",
    "NFNEncoder",
    "check_same_architecture",
    "GraphCache",
    "load_state_dict_file",
    "state_dict_hash",
    "NodeType",
    "EdgeType",
    "NODE_FEATURE_DIM",
    "edge_feature_dim",
]
