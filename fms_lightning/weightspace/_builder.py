"""Accumulates nodes and edges of a parameter graph with per-layer tensor ops."""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch_geometric.data import Data

from fms_lightning.weightspace.features import (
    COL_DEPTH,
    COL_OUTPUT,
    NODE_SCALARS,
    EdgeType,
    NodeType,
    edge_feature_dim,
    one_hot,
    reduce_values,
)

logger = logging.getLogger(__name__)

_WARNED: set[str] = set()


def warn_once(key: str, message: str, *, stacklevel: int = 4) -> None:
    """Issue ``message`` as a ``UserWarning`` the first time ``key`` is seen."""
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(message, UserWarning, stacklevel=stacklevel)


@dataclass
class GraphBuilder:
    """Collects node and edge blocks; :meth:`build` concatenates them once.

    Args:
        max_kernel_size: ``K``, weight-value columns per edge.
        dtype: floating dtype of the features.
    """

    max_kernel_size: int = 9
    dtype: torch.dtype = torch.float32
    layer: int = 0
    num_nodes: int = 0
    placed: int = 0
    _node_types: list[Tensor] = field(default_factory=list)
    _node_feats: list[Tensor] = field(default_factory=list)
    _node_layers: list[Tensor] = field(default_factory=list)
    _edges: list[tuple[Tensor, Tensor, Tensor | None, int, int]] = field(default_factory=list)
    _outputs: list[Tensor] = field(default_factory=list)

    def next_layer(self) -> int:
        """Start a new layer; returns its index (used for the depth features)."""
        self.layer += 1
        return self.layer

    def add_nodes(
        self, n: int, node_type: NodeType, feats: dict[int, Tensor] | None = None, *, params: int = 0
    ) -> Tensor:
        """Add ``n`` nodes of ``node_type``.

        Args:
            n: number of nodes.
            node_type: what created them.
            feats: column index -> `(n,)` values for the scalar node columns.
            params: number of parameter elements placed in ``feats`` (for accounting).

        Returns:
            `(n,)` long tensor of the new node ids.
        """
        ids = torch.arange(self.num_nodes, self.num_nodes + n)
        self.num_nodes += n
        block = torch.zeros(n, NODE_SCALARS, dtype=self.dtype)
        for col, val in (feats or {}).items():
            block[:, col] = val.detach().reshape(-1).to(self.dtype)
        self._node_types.append(torch.full((n,), int(node_type), dtype=torch.long))
        self._node_feats.append(block)
        self._node_layers.append(torch.full((n,), self.layer, dtype=torch.long))
        self.placed += params
        return ids

    def add_edges(
        self,
        src: Tensor,
        dst: Tensor,
        edge_type: EdgeType,
        values: Tensor | None = None,
        *,
        spatial: tuple[int, ...] | None = None,
        count: bool = True,
    ) -> None:
        """Add edges ``src[i] -> dst[i]``.

        Args:
            src: `(E,)` source node ids.
            dst: `(E,)` target node ids.
            edge_type: what the edges stand for.
            values: `(E, r)` weight values or ``None`` for structural edges; reduced
                to ``K`` columns with :func:`reduce_values`.
            spatial: kernel shape of the ``r`` values, if any.
            count: whether the values are parameters (counted for accounting).
        """
        values_k: Tensor | None = None
        if values is not None:
            values = values.detach().reshape(src.numel(), -1)
            if count:
                self.placed += values.numel()
            if values.shape[1] > self.max_kernel_size:
                values_k = reduce_values(values.to(self.dtype), self.max_kernel_size, spatial=spatial)
            else:
                values_k = values  # copied into edge_attr by build()
        self._edges.append((src.reshape(-1), dst.reshape(-1), values_k, int(edge_type), self.layer))

    def mark_output(self, ids: Tensor) -> None:
        """Flag ``ids`` as output nodes of the model."""
        self._outputs.append(ids.reshape(-1))

    def build(self, **meta: object) -> Data:
        """Concatenate all blocks into a :class:`~torch_geometric.data.Data`.

        Args:
            **meta: extra attributes stored on the graph.

        Returns:
            The parameter graph.
        """
        k = self.max_kernel_size
        dt = self.dtype
        last = max(self.layer, 1)
        if self.num_nodes:
            node_type = torch.cat(self._node_types)
            scalars = torch.cat(self._node_feats)
            scalars[:, COL_DEPTH] = torch.cat(self._node_layers).to(dt) / last
        else:
            node_type = torch.zeros(0, dtype=torch.long)
            scalars = torch.zeros(0, NODE_SCALARS, dtype=dt)
        if self._outputs:
            scalars[torch.cat(self._outputs), COL_OUTPUT] = 1.0
        x = torch.cat([scalars, one_hot(node_type, len(NodeType), dt)], dim=1)
        num_edges = sum(e[0].numel() for e in self._edges)
        edge_index = torch.empty(2, num_edges, dtype=torch.long)
        edge_type = torch.empty(num_edges, dtype=torch.long)
        edge_attr = torch.zeros(num_edges, edge_feature_dim(k), dtype=dt)
        offset = 0
        for src, dst, vals, etype, layer in self._edges:  # one slice write per block, no (E, .) temporaries
            end = offset + src.numel()
            edge_index[0, offset:end] = src
            edge_index[1, offset:end] = dst
            edge_type[offset:end] = etype
            if vals is not None:
                edge_attr[offset:end, : vals.shape[1]] = vals
            edge_attr[offset:end, k] = layer / last
            edge_attr[offset:end, k + 1 + etype] = 1.0
            offset = end
        signature = wiring_signature(edge_index, node_type, edge_type, k)
        data = Data(x=x, edge_index=edge_index, edge_attr=edge_attr, num_nodes=self.num_nodes)
        data.node_type = node_type
        data.edge_type = edge_type
        data.num_param_elements = self.placed
        data.signature = signature
        for key, val in meta.items():
            setattr(data, key, val)
        return data


def wiring_signature(edge_index: Tensor, node_type: Tensor, edge_type: Tensor, max_kernel_size: int) -> str:
    """Hash of a graph's wiring (not its weights): equal iff same architecture layout."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"K={max_kernel_size};N={node_type.numel()};E={edge_type.numel()};".encode())
    for t in (edge_index, node_type, edge_type):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def summary_stats(tensors: list[Tensor]) -> dict[int, Tensor]:
    """Mean, std, min, max and ``log1p(numel)`` of a module's parameters (opaque nodes)."""
    if not tensors:
        return {}
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    std = flat.std() if flat.numel() > 1 else torch.zeros((), dtype=flat.dtype)
    vals = [flat.mean(), std, flat.min(), flat.max(), torch.tensor(math.log1p(flat.numel()))]
    return {i: v.reshape(1) for i, v in enumerate(vals)}
