"""Feature layouts of parameter graphs.

A parameter graph ``G(W)`` (FMS paper §3.1) has one node per neuron or channel and
one edge per weight (or per channel pair, for convolutions). This module fixes the
meaning of every column of the node features ``x`` and edge features ``edge_attr``
so that every graph built by :func:`~fms_lightning.weightspace.parameter_graph` has
the same layout.

Glossary:
    ``K``: ``max_kernel_size``, the number of weight-value columns of an edge.
    ``W``: the parameters of one network (a ``state_dict``).

Node feature layout (``x``, width :data:`NODE_FEATURE_DIM`)::

    0  bias            bias of the layer that created the node (Linear, Conv, Q/K/V, ...)
    1  gamma           affine weight of a normalization layer
    2  beta            affine bias of a normalization layer
    3  running_mean    BatchNorm running mean (0 elsewhere)
    4  running_var     BatchNorm running variance (0 elsewhere)
    5  aux             pooling kind (1 avg, 2 max, 3 sum) or log2 of the GroupNorm group size
    6  is_output       1 for the nodes of the model's output
    7  depth           index of the creating layer / index of the last layer, in ``[0, 1]``
    8: one-hot of :class:`NodeType`

Opaque nodes (modules the graph cannot read) reuse columns 0-4 for the mean, std,
min, max and ``log1p(numel)`` of the module's parameters.

Edge feature layout (``edge_attr``, width :func:`edge_feature_dim`)::

    0:K    weight values, zero-padded (see :func:`reduce_values`)
    K      depth of the creating layer, in ``[0, 1]``
    K+1:   one-hot of :class:`EdgeType`

Structural edges (residual, normalization, pooling, attention-head membership)
carry no values; their type tells them apart.
"""

from __future__ import annotations

import enum
import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "NodeType",
    "EdgeType",
    "NODE_FEATURE_DIM",
    "NODE_VALUE_SLOTS",
    "edge_feature_dim",
    "reduce_values",
]


class NodeType(enum.IntEnum):
    """What created a node. Stored one-hot in ``x`` and as ``data.node_type``."""

    INPUT = 0
    LINEAR = 1
    CONV = 2
    NORM = 3
    ADD = 4
    MUL = 5
    POOL = 6
    PARAM_TOKEN = 7
    EMBEDDING_ROW = 8
    EMBEDDING = 9
    ATTN_Q = 10
    ATTN_K = 11
    ATTN_V = 12
    ATTN_HEAD = 13
    ATTN_OUT = 14
    CONCAT_TOKENS = 15
    OPAQUE = 16


class EdgeType(enum.IntEnum):
    """What an edge stands for. Stored one-hot in ``edge_attr`` and as ``data.edge_type``."""

    LINEAR = 0
    CONV = 1
    FLATTEN_LINEAR = 2
    NORM = 3
    RESIDUAL = 4
    MUL = 5
    POOL = 6
    PARAM_TOKEN = 7
    EMBEDDING = 8
    ATTN_IN = 9
    ATTN_HEAD = 10
    ATTN_QK_PAIR = 11
    ATTN_OUT = 12
    OPAQUE = 13
    CONCAT_TOKENS = 14


#: Number of scalar node columns before the one-hot type.
NODE_SCALARS = 8
#: Columns of ``x`` that hold parameter values (bias, gamma, beta).
NODE_VALUE_SLOTS = (0, 1, 2)
#: Width of the node features ``x``.
NODE_FEATURE_DIM = NODE_SCALARS + len(NodeType)

COL_BIAS, COL_GAMMA, COL_BETA, COL_RMEAN, COL_RVAR, COL_AUX, COL_OUTPUT, COL_DEPTH = range(8)


def edge_feature_dim(max_kernel_size: int = 9) -> int:
    """Width of ``edge_attr`` for a given ``max_kernel_size``.

    Args:
        max_kernel_size: ``K``, the number of weight-value columns.

    Returns:
        ``K + 1 + len(EdgeType)``.
    """
    return max_kernel_size + 1 + len(EdgeType)


def reduce_values(values: Tensor, size: int, *, spatial: tuple[int, ...] | None = None) -> Tensor:
    """Fit per-edge weight vectors into ``size`` columns.

    Vectors of at most ``size`` values are copied unchanged and zero-padded on the
    right. Longer vectors are reduced by adaptive average pooling: a 2-D kernel
    (``spatial`` of length 2) is pooled to ``s x s`` with ``s = floor(sqrt(size))``
    when that keeps its layout (e.g. a ``7x7`` kernel becomes ``3x3``); anything
    else is pooled as a 1-D sequence to ``size`` values.

    Args:
        values: `(E, r)` weights of ``E`` edges.
        size: ``K``, the number of output columns.
        spatial: the kernel shape the ``r`` values come from, if any.

    Returns:
        `(E, size)` tensor.
    """
    num, r = values.shape
    if r <= size:
        return F.pad(values, (0, size - r)) if r < size else values
    side = math.isqrt(size)
    if spatial is not None and len(spatial) == 2 and side >= 1:
        pooled = F.adaptive_avg_pool2d(values.reshape(num, 1, *spatial), (min(side, spatial[0]), min(side, spatial[1])))
        flat = pooled.reshape(num, -1)
        return F.pad(flat, (0, size - flat.shape[1]))
    return F.adaptive_avg_pool1d(values.reshape(num, 1, r), size).reshape(num, size)


def one_hot(index: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """One-hot encode ``index`` (`(n,)`) into `(n, num_classes)` of ``dtype``."""
    return F.one_hot(index, num_classes).to(dtype)
