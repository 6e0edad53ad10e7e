"""Sparse aggregation for the GMN: CSR structures of parameter graphs and a fused SpMM.

Aggregating ``sum_u g(e_uv) * (A h_u)`` with a gather/scatter materializes an
`(E, d)` tensor per layer, which for a ResNet-18 graph (~2M edges) costs seconds
on a CPU. Multiplying a CSR matrix of edge gates by the node states does the same
sum without that tensor. The CSR structure depends only on the wiring, so it is
computed once per architecture (keyed by the graph's ``signature``) and reused.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Csr:
    """Rows = targets, columns = sources of one aggregation direction.

    Attributes:
        perm: `(E,)` edge order sorted by target.
        crow: `(N + 1,)` row pointers of the single-channel matrix.
        col: `(E,)` source of each sorted edge.
        row: `(E,)` target of each sorted edge.
        deg: `(N,)` in-degree clamped to 1 (for the mean).
        to_other: `(E,)` position in this order of each edge of the other direction's order.
    """

    perm: Tensor
    crow: Tensor
    col: Tensor
    row: Tensor
    deg: Tensor
    to_other: Tensor | None = None
    _expanded: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False)
    _patterns: dict[tuple[int, torch.dtype], Tensor] = field(default_factory=dict, repr=False)
    _transposed: dict[int, tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict, repr=False)

    def expanded(self, channels: int) -> tuple[Tensor, Tensor]:
        """int32 row pointers and columns of the ``channels``-interleaved matrix (cached)."""
        if channels not in self._expanded:
            col = (self.col.unsqueeze(1) * channels + torch.arange(channels)).reshape(-1)
            self._expanded[channels] = ((self.crow * channels).to(torch.int32), col.to(torch.int32))
        return self._expanded[channels]

    def pattern(self, channels: int, dtype: torch.dtype) -> Tensor:
        """The ``channels``-interleaved edge pattern as an all-ones CSR matrix (cached)."""
        if (channels, dtype) not in self._patterns:
            n = self.crow.numel() - 1
            crow, col = self.expanded(channels)
            ones = torch.ones(col.numel(), dtype=dtype)
            self._patterns[(channels, dtype)] = _csr(crow, col, ones, (n, n * channels))
        return self._patterns[(channels, dtype)]

    def transposed(self, channels: int, other: Csr) -> tuple[Tensor, Tensor, Tensor]:
        """Row pointers, columns and value gather of the transpose of the ``channels``-interleaved
        matrix (rows ``u * C + c``), laid out by ``other`` (the reverse structure); cached.

        The gather indexes ``gates.reshape(-1)`` (gates in this structure's order).
        """
        if channels not in self._transposed:
            c = channels
            n = other.crow.numel() - 1
            deg = other.crow[1:] - other.crow[:-1]  # out-degree of each source u (unclamped)
            crow_t = torch.empty(n * c + 1, dtype=torch.long)
            crow_t[:-1] = ((other.crow[:-1] * c).unsqueeze(1) + torch.arange(c) * deg.unsqueeze(1)).reshape(-1)
            crow_t[-1] = other.col.numel() * c
            e = torch.arange(other.col.numel())
            u = other.row
            local = e - other.crow[u]
            pos = ((other.crow[u] * c + local).unsqueeze(1) + torch.arange(c) * deg[u].unsqueeze(1)).reshape(-1)
            src = ((self.to_other * c).unsqueeze(1) + torch.arange(c)).reshape(-1)  # type: ignore[operator]
            gather = torch.empty_like(pos).scatter_(0, pos, src)
            col_t = torch.empty_like(pos).scatter_(0, pos, other.col.repeat_interleave(c))
            self._transposed[c] = (crow_t.to(torch.int32), col_t.to(torch.int32), gather)
        return self._transposed[channels]


def build_csr(target: Tensor, source: Tensor, num_nodes: int) -> Csr:
    """CSR structure of edges ``source -> target`` aggregated at ``target``."""
    perm = torch.argsort(target, stable=True)
    counts = torch.bincount(target, minlength=num_nodes)
    crow = torch.zeros(num_nodes + 1, dtype=torch.long)
    crow[1:] = counts.cumsum(0)
    return Csr(perm, crow, source[perm], target[perm], counts.clamp(min=1))


def concat_csr(parts: list[Csr], node_offsets: list[int], edge_offsets: list[int]) -> Csr:
    """Block-diagonal CSR of a batch of graphs from their per-graph structures (no sorting)."""
    if len(parts) == 1:
        return parts[0]
    crows = [parts[0].crow[:1]]
    total = 0
    for p in parts:
        crows.append(p.crow[1:] + total)
        total += int(p.crow[-1])
    return Csr(
        perm=torch.cat([p.perm + eo for p, eo in zip(parts, edge_offsets)]),
        crow=torch.cat(crows),
        col=torch.cat([p.col + no for p, no in zip(parts, node_offsets)]),
        row=torch.cat([p.row + no for p, no in zip(parts, node_offsets)]),
        deg=torch.cat([p.deg for p in parts]),
        to_other=torch.cat([p.to_other + eo for p, eo in zip(parts, edge_offsets)]),  # type: ignore[operator]
    )


class StructureCache:
    """LRU cache of (forward, backward) CSR structures keyed by wiring signature."""

    def __init__(self, max_entries: int = 64) -> None:
        self.max_entries = max_entries
        self._store: OrderedDict[str, tuple[Csr, Csr]] = OrderedDict()

    def get(self, key: str | None, edge_index: Tensor, num_nodes: int) -> tuple[Csr, Csr]:
        """Structures of one graph; computed on a miss (or always when ``key`` is ``None``)."""
        if key is not None and key in self._store:
            self._store.move_to_end(key)
            return self._store[key]
        src, dst = edge_index[0].cpu(), edge_index[1].cpu()
        fwd, bwd = build_csr(dst, src, num_nodes), build_csr(src, dst, num_nodes)
        fwd.to_other = torch.empty_like(fwd.perm).scatter_(0, fwd.perm, torch.arange(fwd.perm.numel()))[bwd.perm]
        bwd.to_other = torch.empty_like(bwd.perm).scatter_(0, bwd.perm, torch.arange(bwd.perm.numel()))[fwd.perm]
        pair = (fwd, bwd)
        if key is not None:
            self._store[key] = pair
            if len(self._store) > self.max_entries:
                self._store.popitem(last=False)
        return pair


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


class GatedSpMM(torch.autograd.Function):
    """``out[v] = sum_{e: u -> v} sum_c gates[e, c] * dense[u * C + c]`` with a CSR kernel.

    ``gates`` is `(E, C)` in the order of ``csr``, ``dense`` is `(N * C, d)`; the result is
    `(N, d)`. Both gradients are sparse kernels too: the gradient of ``gates`` is a
    sampled dense-dense product (SDDMM) on the edge pattern, the gradient of ``dense``
    a product with the transposed gates, laid out by ``other`` (the reverse structure).
    """

    @staticmethod
    def forward(ctx, gates: Tensor, dense: Tensor, csr: Csr, other: Csr) -> Tensor:  # type: ignore[override]
        n = csr.crow.numel() - 1
        crow, col = csr.expanded(gates.shape[1])
        mat = _csr(crow, col, gates.reshape(-1), (n, dense.shape[0]))
        ctx.save_for_backward(gates, dense)
        ctx.csr, ctx.other = csr, other
        return mat @ dense

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        gates, dense = ctx.saved_tensors
        csr, other = ctx.csr, ctx.other
        n, c, d = csr.crow.numel() - 1, gates.shape[1], dense.shape[1]
        grad_out = grad_out.contiguous()
        grad_gates = grad_dense = None
        if ctx.needs_input_grad[0]:  # one SDDMM over all channels: values come out in gates' (E, C) layout
            pattern = csr.pattern(c, dense.dtype)
            grad_gates = torch.sparse.sampled_addmm(pattern, grad_out, dense.t(), beta=0.0).values().view(-1, c)
        if ctx.needs_input_grad[1]:  # one SpMM with the transposed interleaved matrix, `(N * C, d)`
            crow_t, col_t, gather = csr.transposed(c, other)
            mat_t = _csr(crow_t, col_t, gates.reshape(-1).index_select(0, gather), (n * c, n))
            grad_dense = mat_t @ grad_out
        return grad_gates, grad_dense, None, None
