"""Encoders of parameter graphs: the permutation-invariant GMN and the FLAT ablation.

Glossary (FMS paper §3.1, eq. 6):
    ``G^(0)(W)``: the parameter graph of weights ``W`` (:func:`parameter_graph`).
    ``h_v^l``: the state of node ``v`` after layer ``l``.
    ``xi``: the graph embedding, the mean of ``h_v^L`` over nodes.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import MessagePassing, global_mean_pool

from fms_lightning.errors import ConfigurationError, IncompatibleWeightsError
from fms_lightning.weightspace._sparse import Csr, GatedSpMM, StructureCache, concat_csr
from fms_lightning.weightspace.features import NODE_FEATURE_DIM, NODE_VALUE_SLOTS, edge_feature_dim

logger = logging.getLogger(__name__)

__all__ = ["GMNEncoder", "FlatEncoder"]


def _leaky_mlp(widths: Sequence[int], negative_slope: float) -> nn.Sequential:
    """``Linear`` layers of ``widths`` with a leaky ReLU between them (none after the last)."""
    mods: list[nn.Module] = []
    for i in range(len(widths) - 1):
        mods.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            mods.append(nn.LeakyReLU(negative_slope))
    return nn.Sequential(*mods)


class _GatedEdgeConv(MessagePassing):
    """One GMN layer: an edge-conditioned convolution with rank-``C`` edge weights.

    In the style of NNConv (Gilmer et al.; Simonovsky & Komodakis), the message along
    ``u -> v`` is ``Theta(e_uv) h_u`` with ``Theta(e) = sum_c g_c(e) A_c``: ``C`` learned
    matrices mixed by gates ``g(e)`` computed from the edge features. Messages are
    averaged over the in-edges of ``v`` and, with separate matrices, over its
    out-edges; then ``h_v' = act(U [h_v, m_in, m_out])``.

    :meth:`message` is the reference definition; :meth:`forward` computes the same sums
    with a CSR product when the graph's CSR structure is given (no `(E, d)` tensor).
    """

    def __init__(self, in_dim: int, out_dim: int, msg_dim: int, rank: int, slope: float) -> None:
        super().__init__(aggr="mean", node_dim=0)
        self.rank, self.msg_dim, self.slope = rank, msg_dim, slope
        self.lin_fwd = nn.Linear(in_dim, rank * msg_dim)
        self.lin_bwd = nn.Linear(in_dim, rank * msg_dim)
        self.update_lin = nn.Linear(in_dim + 2 * msg_dim, out_dim)

    def forward(
        self, x: Tensor, edge_index: Tensor, gates: tuple[Tensor, Tensor], structure: tuple[Csr, Csr] | None = None
    ) -> Tensor:
        """Args: ``x`` `(N, in_dim)`; ``edge_index`` `(2, E)`; ``gates`` two `(E, C)` tensors
        (in edge order without ``structure``, in each CSR's order with it).
        Returns: `(N, out_dim)`."""
        hf, hb = self.lin_fwd(x), self.lin_bwd(x)
        if structure is None:
            mf = self.propagate(edge_index, h=hf.view(-1, self.rank, self.msg_dim), gate=gates[0])
            mb = self.propagate(edge_index.flip(0), h=hb.view(-1, self.rank, self.msg_dim), gate=gates[1])
        else:
            fwd, bwd = structure
            mf = GatedSpMM.apply(gates[0], hf.reshape(-1, self.msg_dim), fwd, bwd) / fwd.deg.unsqueeze(1).to(x.dtype)
            mb = GatedSpMM.apply(gates[1], hb.reshape(-1, self.msg_dim), bwd, fwd) / bwd.deg.unsqueeze(1).to(x.dtype)
        return F.leaky_relu(self.update_lin(torch.cat([x, mf, mb], dim=-1)), self.slope)

    def message(self, h_j: Tensor, gate: Tensor) -> Tensor:
        return (gate.unsqueeze(-1) * h_j).sum(dim=1)


class GMNEncoder(nn.Module):
    """Permutation-invariant graph metanetwork over parameter graphs (eq. 6).

    ``xi(G) = mean_v h_v^L`` after ``L = len(hidden)`` edge-conditioned message-passing
    layers that read node features and, through per-edge gates, edge features; an
    optional linear head maps ``xi`` to ``out_dim``. Node ids never enter the
    computation, so permuting hidden neurons (which permutes nodes of ``G``) leaves the
    embedding unchanged.

    Cost: one `(E, edge_dim) x (edge_dim, 2 L C)` product for the gates, then per layer
    two sparse products with ``E * C`` non-zeros; the CSR structure of each wiring
    (``data.signature``) is computed once and cached (``structure_cache_size`` entries).

    Args:
        node_in_dim: width of ``x``; defaults to :data:`NODE_FEATURE_DIM`.
        edge_in_dim: width of ``edge_attr``; defaults to ``edge_feature_dim(max_kernel_size)``.
        hidden: node-state widths of the layers (paper A.6: 64, 128, 256).
        out_dim: output width; ``None`` means ``hidden[-1]`` with no head.
        msg_dim: width of messages.
        rank: ``C``, the number of edge-gated matrices per layer and direction.
        max_kernel_size: ``K`` the graphs were built with (only for the default ``edge_in_dim``).
        negative_slope: leaky-ReLU slope.
        sparse: use the CSR path (``False``: PyG ``propagate``, same result, more memory).
        structure_cache_size: wirings whose CSR structure is kept.

    Raises:
        ConfigurationError: for empty ``hidden`` or non-positive widths.

    >>> from fms_lightning.weightspace import parameter_graph
    >>> enc = GMNEncoder(out_dim=8)
    >>> enc(parameter_graph(nn.Linear(3, 2))).shape
    torch.Size([1, 8])
    """

    def __init__(
        self,
        node_in_dim: int | None = None,
        edge_in_dim: int | None = None,
        *,
        hidden: Sequence[int] = (64, 128, 256),
        out_dim: int | None = None,
        msg_dim: int = 32,
        rank: int = 2,
        max_kernel_size: int = 9,
        negative_slope: float = 0.01,
        sparse: bool = True,
        structure_cache_size: int = 64,
    ) -> None:
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if not hidden or min(hidden) < 1 or msg_dim < 1 or rank < 1 or (out_dim is not None and out_dim < 1):
            raise ConfigurationError(
                f"GMNEncoder needs non-empty positive widths, got hidden={hidden}, msg_dim={msg_dim}, rank={rank}, "
                f"out_dim={out_dim}. Use e.g. hidden=(64, 128, 256)."
            )
        self.node_in_dim = int(node_in_dim or NODE_FEATURE_DIM)
        self.edge_in_dim = int(edge_in_dim or edge_feature_dim(max_kernel_size))
        self.rank = int(rank)
        self.sparse = bool(sparse)
        self.negative_slope = float(negative_slope)
        dims = (self.node_in_dim, *hidden)
        # no bias: every edge has exactly one type column set, which plays the bias's role
        self.gate_lin = nn.Linear(self.edge_in_dim, 2 * len(hidden) * self.rank, bias=False)
        self.layers = nn.ModuleList(
            _GatedEdgeConv(dims[i], dims[i + 1], int(msg_dim), self.rank, negative_slope) for i in range(len(hidden))
        )
        self.head = nn.Linear(hidden[-1], out_dim) if out_dim is not None else None
        self.out_dim = int(out_dim) if out_dim is not None else hidden[-1]
        self._structures = StructureCache(structure_cache_size)
        # batches of wirings (keyed by their signatures in order) -> block-diagonal structure
        self._batch_structures: OrderedDict[tuple[str, ...], tuple[Csr, Csr]] = OrderedDict()

    def forward(self, data: Data | Batch) -> Tensor:
        """Embed one graph or a batch of graphs.

        Args:
            data: a graph from :func:`parameter_graph`, or a ``Batch`` of them.

        Returns:
            `(num_graphs, out_dim)` embeddings, in the dtype of the encoder's parameters.

        Raises:
            IncompatibleWeightsError: if the feature widths differ from the encoder's.
        """
        h = self._message_passing(data)
        num_graphs = int(getattr(data, "num_graphs", 1) or 1)
        batch = getattr(data, "batch", None)
        if batch is None:
            batch = torch.zeros(h.shape[0], dtype=torch.long, device=h.device)
        xi = global_mean_pool(h, batch, size=num_graphs)
        return self.head(xi) if self.head is not None else xi

    def node_states(self, data: Data | Batch) -> Tensor:
        """The final node states before pooling (the head, if any, applied per node).

        ``forward(data)`` is the per-graph mean of these rows (the head is affine, so it
        commutes with the mean); a trainable readout can pool them differently.

        Args:
            data: a graph from :func:`parameter_graph`, or a ``Batch`` of them.

        Returns:
            `(num_nodes, out_dim)`, rows in the order of ``data.x``.

        Raises:
            IncompatibleWeightsError: if the feature widths differ from the encoder's.
        """
        h = self._message_passing(data)
        return self.head(h) if self.head is not None else h

    def _message_passing(self, data: Data | Batch) -> Tensor:
        """``h^L``: node states after the last layer, `(num_nodes, hidden[-1])`."""
        dtype = self.gate_lin.weight.dtype
        x, edge_attr = data.x.to(dtype), data.edge_attr.to(dtype)
        if x.shape[1] != self.node_in_dim or edge_attr.shape[1] != self.edge_in_dim:
            raise IncompatibleWeightsError(
                f"GMNEncoder expects node/edge feature widths ({self.node_in_dim}, {self.edge_in_dim}), got "
                f"({x.shape[1]}, {edge_attr.shape[1]}). Build graphs with the same max_kernel_size as the encoder."
            )
        num_graphs = int(getattr(data, "num_graphs", 1) or 1)
        gates = F.leaky_relu_(self.gate_lin(edge_attr), self.negative_slope)  # (E, 2 L C)
        half = len(self.layers) * self.rank
        structure = self._structure(data, num_graphs) if self.sparse else None
        if structure is not None:
            g_fwd = gates[:, :half].index_select(0, structure[0].perm)
            g_bwd = gates[:, half:].index_select(0, structure[1].perm)
        else:
            g_fwd, g_bwd = gates[:, :half], gates[:, half:]
        # (L, E, C): one contiguous block of gates per layer
        g_fwd = g_fwd.reshape(-1, len(self.layers), self.rank).transpose(0, 1).contiguous()
        g_bwd = g_bwd.reshape(-1, len(self.layers), self.rank).transpose(0, 1).contiguous()
        for i, layer in enumerate(self.layers):
            x = layer(x, data.edge_index, (g_fwd[i], g_bwd[i]), structure)
        return x

    def _structure(self, data: Data | Batch, num_graphs: int) -> tuple[Csr, Csr]:
        sig = getattr(data, "signature", None)
        if num_graphs == 1 or isinstance(sig, str):
            key = sig if isinstance(sig, str) else (sig[0] if sig else None)
            return self._structures.get(key, data.edge_index, int(data.num_nodes))
        batch_key = tuple(sig) if sig and all(isinstance(s, str) for s in sig) else None
        if batch_key is not None:  # the same wirings in the same order: reuse the block-diagonal structure
            hit = self._batch_structures.get(batch_key)
            if hit is not None:
                self._batch_structures.move_to_end(batch_key)
                return hit
        ptr = data.ptr.tolist()
        edge_counts = torch.bincount(data.batch[data.edge_index[0]], minlength=num_graphs).tolist()
        eo = [0]
        for c in edge_counts[:-1]:
            eo.append(eo[-1] + c)
        parts_f, parts_b = [], []
        for i in range(num_graphs):
            local = data.edge_index[:, eo[i] : eo[i] + edge_counts[i]] - ptr[i]
            f, b = self._structures.get(sig[i] if sig else None, local, ptr[i + 1] - ptr[i])
            parts_f.append(f)
            parts_b.append(b)
        pair = concat_csr(parts_f, ptr[:-1], eo), concat_csr(parts_b, ptr[:-1], eo)
        if batch_key is not None:
            self._batch_structures[batch_key] = pair
            if len(self._batch_structures) > self._structures.max_entries:
                self._batch_structures.popitem(last=False)
        return pair


class FlatEncoder(nn.Module):
    """FMS-FLAT ablation: the weights flattened into one vector, then an MLP.

    The vector is the parameter-value columns of every node (bias, gamma, beta) and
    every edge (the ``K`` weight columns), in graph order. It is not permutation
    invariant, and only accepts graphs with the reference's layout. Vectors longer
    than ``max_inputs`` are adaptive-average-pooled to ``max_inputs`` values.

    Args:
        reference: a graph of the architecture this encoder will read.
        hidden: hidden widths of the MLP.
        out_dim: output width.
        max_inputs: bound on the MLP input width.
        negative_slope: leaky-ReLU slope.

    Raises:
        ConfigurationError: for non-positive widths.

    >>> from fms_lightning.weightspace import parameter_graph
    >>> g = parameter_graph(nn.Linear(3, 2))
    >>> FlatEncoder(g, out_dim=4)(g).shape
    torch.Size([1, 4])
    """

    def __init__(
        self,
        reference: Data,
        *,
        hidden: Sequence[int] = (64, 128),
        out_dim: int = 256,
        max_inputs: int = 4096,
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        if out_dim < 1 or max_inputs < 1 or any(h < 1 for h in hidden):
            raise ConfigurationError(f"FlatEncoder widths must be positive, got hidden={hidden}, out_dim={out_dim}.")
        self.signature = str(getattr(reference, "signature", ""))
        self.num_nodes = int(reference.num_nodes)
        self.num_edges = int(reference.edge_index.shape[1])
        self.max_kernel_size = int(reference.edge_attr.shape[1] - edge_feature_dim(0))
        raw = self.num_nodes * len(NODE_VALUE_SLOTS) + self.num_edges * self.max_kernel_size
        self.in_dim = min(raw, int(max_inputs))
        self.mlp = _leaky_mlp((self.in_dim, *[int(h) for h in hidden], int(out_dim)), negative_slope)
        self.out_dim = int(out_dim)

    def forward(self, data: Data | Batch) -> Tensor:
        """Embed one graph or a batch of graphs of the reference layout.

        Args:
            data: a graph from :func:`parameter_graph`, or a ``Batch`` of them.

        Returns:
            `(num_graphs, out_dim)` embeddings.

        Raises:
            IncompatibleWeightsError: if a graph has another architecture than the reference.
        """
        g = int(getattr(data, "num_graphs", 1) or 1)
        sigs = getattr(data, "signature", self.signature)
        sigs = [sigs] if isinstance(sigs, str) else list(sigs)
        bad = [s for s in sigs if s != self.signature]
        if bad or data.num_nodes != g * self.num_nodes or data.edge_index.shape[1] != g * self.num_edges:
            raise IncompatibleWeightsError(
                f"FlatEncoder was built for one parameter layout ({self.num_nodes} nodes, {self.num_edges} edges, "
                f"signature {self.signature[:8]}), got {data.num_nodes} nodes and {data.edge_index.shape[1]} edges "
                f"in {g} graph(s) (signature {(bad or sigs)[0][:8]}). FMS-FLAT only compares weights of one "
                "architecture; use GMNEncoder for mixed architectures."
            )
        dtype = self.mlp[0].weight.dtype
        nodes = data.x[:, list(NODE_VALUE_SLOTS)].to(dtype).reshape(g, -1)
        edges = data.edge_attr[:, : self.max_kernel_size].to(dtype).reshape(g, -1)
        flat = torch.cat([nodes, edges], dim=1)
        if flat.shape[1] > self.in_dim:
            flat = F.adaptive_avg_pool1d(flat.unsqueeze(1), self.in_dim).squeeze(1)
        return self.mlp(flat)
