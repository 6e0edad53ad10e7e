"""Graph fragments of parameterized layers (Linear, Conv, norms, Embedding, attention).

Each handler reads a layer's parameters from the state dict being featurized,
adds the layer's nodes and edges to the :class:`GraphBuilder` with per-layer
tensor ops (no per-element Python loops), and returns the output
:class:`~fms_lightning.weightspace.trace.Stream`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fms_lightning.errors import GraphConstructionError
from fms_lightning.weightspace._builder import GraphBuilder, summary_stats, warn_once
from fms_lightning.weightspace.features import (
    COL_AUX,
    COL_BETA,
    COL_BIAS,
    COL_GAMMA,
    COL_RMEAN,
    COL_RVAR,
    EdgeType,
    NodeType,
)
from fms_lightning.weightspace.trace import LazyNodes, Stream

logger = logging.getLogger(__name__)


@dataclass
class Context:
    """State shared by the handlers while one graph is built.

    Attributes:
        builder: the node/edge accumulator.
        tensors: qualified name -> tensor, the weights being featurized.
        param_names: names of the model's parameters (not buffers).
        on_unsupported: ``"opaque"`` or ``"raise"``.
        max_embedding_rows: rows of an embedding table kept before pooling.
        consumed: parameter names already placed in the graph.
        summarize_names: qualified names of modules to represent by one summary node.
        summarize_types: module types to represent by one summary node.
    """

    builder: GraphBuilder
    tensors: Mapping[str, Tensor]
    param_names: set[str]
    on_unsupported: str = "opaque"
    max_embedding_rows: int = 1024
    consumed: set[str] = field(default_factory=set)
    summarize_names: set[str] = field(default_factory=set)
    summarize_types: tuple[type[nn.Module], ...] = ()

    def get(self, path: str, attr: str) -> Tensor | None:
        """Tensor ``path.attr`` of the weights being featurized, marking parameters consumed."""
        name = f"{path}.{attr}" if path else attr
        if name not in self.tensors:
            return None
        if name in self.param_names:
            self.consumed.add(name)
        return self.tensors[name]

    def channels(self, value: object, n: int, where: str) -> Tensor:
        """Node ids of ``value``'s ``n`` channels, creating input nodes for lazy streams.

        Raises:
            GraphConstructionError: if ``value`` is not a stream or has another width.
        """
        if not isinstance(value, Stream):
            raise GraphConstructionError(
                f"{where} received {type(value).__name__}, expected a tensor computed from the model "
                "input. Mark the producing submodule as a leaf with leaf_modules=(...)."
            )
        nodes = value.nodes
        if isinstance(nodes, LazyNodes):
            if nodes.ids is None:
                kind = NodeType.INPUT if nodes.anchor is None else NodeType.OPAQUE
                nodes.ids = self.builder.add_nodes(n, kind)
                if nodes.anchor is not None:
                    self.builder.add_edges(torch.full((n,), nodes.anchor), nodes.ids, EdgeType.OPAQUE)
            nodes = nodes.ids
        if nodes.numel() != n:
            raise GraphConstructionError(
                f"{where} expects {n} input channels but the incoming tensor has {nodes.numel()} "
                "tracked channels. The model's forward reshapes features in a way parameter_graph "
                "cannot follow; pass example_input=... or mark the module with leaf_modules=(...)."
            )
        return nodes

    def unsupported(
        self, path: str, what: str, inputs: list[object], module: nn.Module | None = None, *, requested: bool = False
    ) -> Stream:
        """Fallback for a module or op the graph cannot read: one opaque node.

        The node carries summary statistics of the module's parameters (mean, std,
        min, max, log1p(numel)), receives an edge from every tracked input channel,
        and its output is a lazy stream hanging from it.

        Args:
            path: qualified name of the module (or fx node name of the op).
            what: description used in messages.
            inputs: the values it reads.
            module: the module, whose parameters are summarized.
            requested: the user asked for a summary (``summarize=``): no warning, never raises.

        Raises:
            GraphConstructionError: if ``on_unsupported="raise"``.
        """
        if not requested and self.on_unsupported == "raise":
            raise GraphConstructionError(
                f"Cannot read {what} at '{path or '<root>'}' into a parameter graph. "
                "Supported: Linear, Conv1d/2d/3d (grouped), BatchNorm, LayerNorm, GroupNorm, Embedding, "
                "MultiheadAttention, activations, pooling, residual add/mul, cat, flatten. "
                "Pass on_unsupported='opaque' to represent it as one opaque node."
            )
        if not requested:
            warn_once(
                f"opaque:{what}",
                f"parameter_graph: {what} at '{path or '<root>'}' is not understood; it is represented by one "
                "opaque node holding summary statistics of its parameters.",
                stacklevel=6,
            )
        tensors: list[Tensor] = []
        if module is not None:
            for name, _ in module.named_parameters():
                full = f"{path}.{name}" if path else name
                if full in self.tensors:
                    self.consumed.add(full)
                    tensors.append(self.tensors[full])
        b = self.builder
        b.next_layer()
        node = b.add_nodes(1, NodeType.OPAQUE, summary_stats(tensors), params=sum(t.numel() for t in tensors))
        for value in inputs:
            if isinstance(value, Stream) and not (isinstance(value.nodes, LazyNodes) and value.nodes.ids is None):
                ids = value.nodes.ids if isinstance(value.nodes, LazyNodes) else value.nodes
                b.add_edges(ids, node.expand_as(ids), EdgeType.OPAQUE)
        return Stream(LazyNodes(anchor=int(node)), axis=None, ndim=None)


def linear(ctx: Context, path: str, weight: Tensor, bias: Tensor | None, inp: object) -> Stream:
    """Linear layer ``y = x W^T + b``: one edge per weight; conv channels flattened into
    the input get one edge per (channel, neuron) carrying the per-position weights."""
    out_f, in_f = weight.shape
    where = f"Linear '{path}' (in_features={in_f})"
    if isinstance(inp, Stream) and inp.flat is not None and isinstance(inp.nodes, Tensor):
        c = inp.nodes.numel()
        if in_f % c:
            raise GraphConstructionError(
                f"{where} follows a flatten of {c} channels, but {in_f} is not a multiple of {c}. "
                "Pass example_input=... so shapes can be propagated."
            )
        spatial = in_f // c
        in_ids = inp.nodes
    else:
        if isinstance(inp, Stream) and inp.axis not in (None, -1):
            raise GraphConstructionError(
                f"{where} is applied to a tensor whose channel axis is {inp.axis} (from the end), expected -1. "
                "Move the channel axis last (e.g. x.transpose) or flatten before the Linear layer."
            )
        spatial, in_ids = 1, ctx.channels(inp, in_f, where)
    b = ctx.builder
    b.next_layer()
    out_ids = b.add_nodes(out_f, NodeType.LINEAR, {COL_BIAS: bias} if bias is not None else None, params=_numel(bias))
    c = in_ids.numel()
    if spatial == 1:
        b.add_edges(in_ids.repeat(out_f), out_ids.repeat_interleave(c), EdgeType.LINEAR, weight.reshape(-1, 1))
    else:
        if inp.flat == "block":  # type: ignore[union-attr]
            vals = weight.reshape(out_f, c, spatial)
        else:
            vals = weight.reshape(out_f, spatial, c).transpose(1, 2)
        src, dst = in_ids.repeat(out_f), out_ids.repeat_interleave(c)
        b.add_edges(src, dst, EdgeType.FLATTEN_LINEAR, vals.reshape(-1, spatial))
    ndim = inp.ndim if isinstance(inp, Stream) else None
    return Stream(out_ids, axis=-1, ndim=ndim)


def conv(ctx: Context, path: str, mod: nn.Module, inp: object) -> Stream:
    """ConvNd: one edge per (in, out) channel pair inside each group, kernel on the edge."""
    weight = ctx.get(path, "weight")
    bias = ctx.get(path, "bias")
    if weight is None:
        return ctx.unsupported(path, type(mod).__name__, [inp], mod)
    dims = weight.ndim - 2
    cout, cin_g = weight.shape[:2]
    groups = int(getattr(mod, "groups", 1))
    where = f"{type(mod).__name__} '{path}' (in_channels={cin_g * groups})"
    if isinstance(inp, Stream) and inp.axis not in (None, -(dims + 1)):
        raise GraphConstructionError(f"{where} got a tensor with channel axis {inp.axis}, expected {-(dims + 1)}.")
    in_ids = ctx.channels(inp, cin_g * groups, where)
    b = ctx.builder
    b.next_layer()
    out_ids = b.add_nodes(cout, NodeType.CONV, {COL_BIAS: bias} if bias is not None else None, params=_numel(bias))
    if groups == 1:
        src, dst = in_ids.repeat(cout), out_ids.repeat_interleave(cin_g)
    else:
        o = torch.arange(cout).repeat_interleave(cin_g)
        j = torch.arange(cin_g).repeat(cout)
        src, dst = in_ids[(o // (cout // groups)) * cin_g + j], out_ids[o]
    b.add_edges(src, dst, EdgeType.CONV, weight.reshape(cout * cin_g, -1), spatial=tuple(weight.shape[2:]))
    ndim = inp.ndim if isinstance(inp, Stream) and inp.ndim is not None else dims + 2
    return Stream(out_ids, axis=-(dims + 1), ndim=ndim)


def norm(ctx: Context, path: str, mod: nn.Module, inp: object) -> Stream:
    """BatchNorm / LayerNorm / GroupNorm: a new node per channel carrying the affine
    parameters and running statistics, joined to its input channel by a NORM edge."""
    name = type(mod).__name__
    if isinstance(mod, nn.LayerNorm):
        if len(mod.normalized_shape) != 1:
            return ctx.unsupported(path, f"{name} over {len(mod.normalized_shape)} dims", [inp], mod)
        c = mod.normalized_shape[0]
        if isinstance(inp, Stream) and inp.axis not in (None, -1):
            raise GraphConstructionError(
                f"{name} '{path}' normalizes the last dim, but the channel axis is {inp.axis}. "
                "Move the channel axis last before the LayerNorm."
            )
    elif isinstance(mod, nn.GroupNorm):
        c = mod.num_channels
    else:
        c = mod.num_features  # type: ignore[assignment]
    in_ids = ctx.channels(inp, int(c), f"{name} '{path}' ({c} channels)")
    feats: dict[int, Tensor] = {}
    params = 0
    slots = ((COL_GAMMA, "weight"), (COL_BETA, "bias"), (COL_RMEAN, "running_mean"), (COL_RVAR, "running_var"))
    for col, attr in slots:
        t = ctx.get(path, attr)
        if t is not None:
            feats[col] = t
            params += t.numel() if attr in ("weight", "bias") else 0
    b = ctx.builder
    b.next_layer()
    if isinstance(mod, nn.GroupNorm):
        feats[COL_AUX] = torch.full((int(c),), math.log2(c / mod.num_groups))
    out_ids = b.add_nodes(int(c), NodeType.NORM, feats, params=params)
    b.add_edges(in_ids, out_ids, EdgeType.NORM)
    if isinstance(mod, nn.GroupNorm):  # channels may only be permuted within their group
        groups = b.add_nodes(mod.num_groups, NodeType.NORM, {COL_AUX: torch.full((mod.num_groups,), -1.0)})
        b.add_edges(out_ids, groups.repeat_interleave(int(c) // mod.num_groups), EdgeType.NORM)
    return inp.with_(nodes=out_ids, flat=None) if isinstance(inp, Stream) else Stream(out_ids)


def token_edges(ctx: Context, name: str, tensor: Tensor, dst: Tensor, edge_type: EdgeType, node_type: NodeType) -> None:
    """Rows of a `(..., C)` parameter become token nodes with one edge per value to ``dst``."""
    c = dst.numel()
    rows = tensor.reshape(-1, c)
    r = rows.shape[0]
    b = ctx.builder
    placed = rows.numel()
    if r > ctx.max_embedding_rows:  # bound the graph: pool rows (documented in parameter_graph)
        rows = F.adaptive_avg_pool1d(rows.t().unsqueeze(0), ctx.max_embedding_rows).squeeze(0).t()
        r = rows.shape[0]
    tok = b.add_nodes(r, node_type)
    b.add_edges(tok.repeat_interleave(c), dst.repeat(r), edge_type, rows.reshape(-1, 1), count=False)
    b.placed += placed


def embedding(ctx: Context, path: str, mod: nn.Embedding, inp: object) -> Stream:
    """Embedding table: one node per output dim, one token node per row (pooled to at most
    ``max_embedding_rows`` rows), one edge per table entry."""
    weight = ctx.get(path, "weight")
    if weight is None:
        return ctx.unsupported(path, "Embedding", [inp], mod)
    b = ctx.builder
    b.next_layer()
    out_ids = b.add_nodes(weight.shape[1], NodeType.EMBEDDING)
    token_edges(ctx, f"{path}.weight", weight, out_ids, EdgeType.EMBEDDING, NodeType.EMBEDDING_ROW)
    ndim = inp.ndim + 1 if isinstance(inp, Stream) and inp.ndim is not None else None
    return Stream(out_ids, axis=-1, ndim=ndim)


def attention(ctx: Context, path: str, mod: nn.MultiheadAttention, q: object, k: object, v: object) -> Stream:
    """MultiheadAttention: Q, K and V projections (edges from the query/key/value inputs),
    one node per head joined to its Q/K/V dims, Q_i–K_i pairing edges, and the output
    projection from V dims to output nodes."""
    e, h = mod.embed_dim, mod.num_heads
    hd = e // h
    if mod._qkv_same_embed_dim:
        w_in = ctx.get(path, "in_proj_weight")
        wq, wk, wv = w_in.chunk(3)  # type: ignore[union-attr]
    else:
        wq, wk, wv = (ctx.get(path, f"{n}_proj_weight") for n in "qkv")
    if wq is None or wk is None or wv is None:
        return ctx.unsupported(path, "MultiheadAttention without projection weights", [q, k, v], mod)
    b_in = ctx.get(path, "in_proj_bias")
    bq, bk, bv = b_in.chunk(3) if b_in is not None else (None, None, None)
    b = ctx.builder
    outs = []
    b.next_layer()
    projections = ((q, wq, bq, NodeType.ATTN_Q), (k, wk, bk, NodeType.ATTN_K), (v, wv, bv, NodeType.ATTN_V))
    for x_in, w, bias, kind in projections:
        in_ids = ctx.channels(x_in, w.shape[1], f"MultiheadAttention '{path}' ({kind.name})")
        ids = b.add_nodes(e, kind, {COL_BIAS: bias} if bias is not None else None, params=_numel(bias))
        b.add_edges(in_ids.repeat(e), ids.repeat_interleave(in_ids.numel()), EdgeType.ATTN_IN, w.reshape(-1, 1))
        outs.append(ids)
    qi, ki, vi = outs
    heads = b.add_nodes(h, NodeType.ATTN_HEAD)
    head_of = heads.repeat_interleave(hd)
    for ids in outs:
        b.add_edges(ids, head_of, EdgeType.ATTN_HEAD)
    b.add_edges(qi, ki, EdgeType.ATTN_QK_PAIR)
    for attr, dst in (("bias_k", ki), ("bias_v", vi)):
        t = ctx.get(path, attr)
        if t is not None:
            token_edges(ctx, f"{path}.{attr}", t, dst, EdgeType.PARAM_TOKEN, NodeType.PARAM_TOKEN)
    wo, bo = ctx.get(path, "out_proj.weight"), ctx.get(path, "out_proj.bias")
    b.next_layer()
    out_ids = b.add_nodes(e, NodeType.ATTN_OUT, {COL_BIAS: bo} if bo is not None else None, params=_numel(bo))
    wo_flat = wo.reshape(-1, 1)  # type: ignore[union-attr]
    b.add_edges(vi.repeat(e), out_ids.repeat_interleave(e), EdgeType.ATTN_OUT, wo_flat)
    ndim = q.ndim if isinstance(q, Stream) else None
    return Stream(out_ids, axis=-1, ndim=ndim)


def _numel(t: Tensor | None) -> int:
    return 0 if t is None else t.numel()
