"""Graph fragments of parameter-free ops: residual add/mul, cat, pooling, reshapes.

These ops add no weights but change which nodes a tensor's channels are, or where
its channel axis is. Residual additions, products and token concatenations create
one junction node per channel joined to every operand's channel by an identity
edge; parameters read directly in ``forward`` (class tokens, positional
embeddings, layer scales) become token nodes with one edge per value.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from fms_lightning.errors import GraphConstructionError
from fms_lightning.weightspace.features import COL_AUX, EdgeType, NodeType
from fms_lightning.weightspace.layers import Context, token_edges
from fms_lightning.weightspace.trace import LazyNodes, Opaque, ParamRef, Stream, TupleValue

logger = logging.getLogger(__name__)

_JUNCTION = {
    "add": (NodeType.ADD, EdgeType.RESIDUAL),
    "mul": (NodeType.MUL, EdgeType.MUL),
    "cat_tokens": (NodeType.CONCAT_TOKENS, EdgeType.CONCAT_TOKENS),
}
POOL_AVG, POOL_MAX, POOL_SUM = 1.0, 2.0, 3.0


def _ambiguous(what: str) -> GraphConstructionError:
    return GraphConstructionError(
        f"Cannot tell which axis holds the channels after {what} without shapes. "
        "Pass example_input=... (a batch the model accepts) to parameter_graph so shapes are propagated."
    )


def is_lazy(value: object) -> bool:
    """Whether ``value`` is a stream whose channels have no nodes yet (e.g. raw input)."""
    return isinstance(value, Stream) and isinstance(value.nodes, LazyNodes) and value.nodes.ids is None


def ids_of(value: Stream) -> Tensor:
    """Materialized node ids of a stream."""
    nodes = value.nodes
    return nodes.ids if isinstance(nodes, LazyNodes) else nodes  # type: ignore[return-value]


def combine(ctx: Context, values: list[object], kind: str, where: str) -> object:
    """Residual add / product / token concatenation of streams and parameters.

    Returns:
        A stream over new junction nodes, or the single operand if the others are constants.
    """
    streams = [v for v in values if isinstance(v, Stream)]
    params = [v for v in values if isinstance(v, ParamRef)]
    if not streams:
        return params[0] if len(params) == 1 and len(values) == 1 else Opaque()
    if len(streams) == 1 and not params:
        return streams[0]
    known = [s for s in streams if not is_lazy(s)]
    axes = {s.axis for s in known if s.axis is not None}
    if len(axes) > 1:
        return ctx.unsupported("", f"{where} of tensors with channels on different axes {sorted(axes)}", values)
    if known:
        c = ids_of(known[0]).numel()
        axis = known[0].axis
    elif params:
        axis = streams[0].axis if streams[0].axis is not None else -1
        c = params[0].tensor.shape[axis]
    else:
        return streams[0]  # e.g. input + input: nothing to wire yet
    operands = [ctx.channels(s, c, where) for s in streams]
    node_type, edge_type = _JUNCTION[kind]
    b = ctx.builder
    b.next_layer()
    out = b.add_nodes(c, node_type)
    for ids in operands:
        b.add_edges(ids, out, edge_type)
    for p in params:
        t = p.tensor
        ax = axis if axis is not None else -1
        if t.ndim < -ax or t.shape[ax] != c:
            raise GraphConstructionError(
                f"{where}: parameter '{p.name}' of shape {tuple(t.shape)} is combined with a tensor of {c} "
                f"channels on axis {ax}, but its size on that axis is not {c}. Expected a per-channel "
                "parameter such as a class token `(1, 1, C)` or positional embedding `(1, N, C)`."
            )
        ctx.consumed.add(p.name)
        token_edges(ctx, p.name, t.movedim(ax, -1), out, EdgeType.PARAM_TOKEN, NodeType.PARAM_TOKEN)
    ndims = [s.ndim for s in streams if s.ndim is not None]
    return Stream(out, axis=axis, ndim=max(ndims) if ndims else None)


def pool(ctx: Context, value: object, kind: float, *, axis: int | None = None, ndim: int | None = None) -> object:
    """Pooling or reduction over non-channel dims: one POOL node per channel."""
    if not isinstance(value, Stream) or is_lazy(value):
        return value if not isinstance(value, Stream) else value.with_(axis=axis, ndim=ndim)
    ids = ids_of(value)
    b = ctx.builder
    b.next_layer()
    out = b.add_nodes(ids.numel(), NodeType.POOL, {COL_AUX: torch.full((ids.numel(),), kind)})
    b.add_edges(ids, out, EdgeType.POOL)
    if axis is None:
        return value.with_(nodes=out)
    return value.with_(nodes=out, axis=axis, ndim=ndim)


def reduce(ctx: Context, value: object, dims: object, keepdim: bool, kind: float, where: str) -> object:
    """``mean``/``sum``/``amax`` over ``dims``: set pooling when the channel axis is kept."""
    if not isinstance(value, Stream):
        return Opaque()
    if dims is None:
        return ctx.unsupported("", f"{where} over all dims", [value])
    dims = [dims] if isinstance(dims, int) else list(dims)  # type: ignore[arg-type]
    if value.axis is None:
        return value.with_(ndim=None)
    nd = value.ndim
    if nd is None:
        if any(d >= 0 for d in dims):
            raise _ambiguous(where)  # a non-negative dim may be the channel axis
        if value.axis in dims:
            return ctx.unsupported("", f"{where} over the channel axis", [value])
        after = sum(1 for d in dims if d > value.axis)
        return pool(ctx, value, kind, axis=value.axis if keepdim else value.axis + after, ndim=None)
    norm = sorted({d % nd for d in dims})
    p = nd + value.axis
    if p in norm:
        return ctx.unsupported("", f"{where} over the channel axis", [value])
    after = sum(1 for d in norm if d > p)
    new_axis = value.axis if keepdim else value.axis + after
    return pool(ctx, value, kind, axis=new_axis, ndim=nd if keepdim else nd - len(norm))


def flatten(ctx: Context, value: object, start: int = 0, end: int = -1) -> object:
    """``x.flatten(start, end)``; a channel axis merged with later dims is marked ``block``."""
    if not isinstance(value, Stream) or is_lazy(value) or value.axis is None:
        return value.with_(axis=None, ndim=None) if isinstance(value, Stream) else value
    nd = value.ndim
    if nd is None:
        if value.axis == -1 and end == -1:
            return value.with_(flat=value.flat or ("interleave" if start != -1 else None))
        raise _ambiguous("flatten")
    st, en = start % nd, end % nd
    if st >= en:
        return value
    p = nd + value.axis
    new_nd = nd - (en - st)
    if p < st:
        return value.with_(axis=value.axis + (en - st), ndim=new_nd)
    if p > en:
        return value.with_(ndim=new_nd)
    if value.flat is not None or st < p < en:
        return ctx.unsupported("", "flatten that splits the channel axis", [value])
    return value.with_(axis=st - new_nd, ndim=new_nd, flat="block" if p == st else "interleave")


def transpose(value: object, d0: int, d1: int) -> object:
    """``x.transpose(d0, d1)``: move the channel axis if it is one of the two."""
    if not isinstance(value, Stream) or value.axis is None:
        return value
    nd = value.ndim
    if nd is None:
        if d0 < 0 and d1 < 0:
            ax = d1 if value.axis == d0 else d0 if value.axis == d1 else value.axis
            return value.with_(axis=ax)
        raise _ambiguous("transpose")
    p = nd + value.axis
    d0, d1 = d0 % nd, d1 % nd
    newp = d1 if p == d0 else d0 if p == d1 else p
    return value.with_(axis=newp - nd)


def permute(value: object, dims: list[int]) -> object:
    """``x.permute(*dims)``."""
    if not isinstance(value, Stream) or value.axis is None:
        return value
    nd = len(dims)
    p = nd + value.axis
    newp = [d % nd for d in dims].index(p)
    return value.with_(axis=newp - nd, ndim=nd)


def unsqueeze(value: object, d: int) -> object:
    """``x.unsqueeze(d)``."""
    if not isinstance(value, Stream) or value.axis is None:
        return value
    nd = value.ndim
    if nd is None:
        if d == 0:
            return value
        if d > 0:
            raise _ambiguous("unsqueeze with a positive dim")
        return value.with_(axis=value.axis - 1 if d > value.axis - 1 else value.axis)
    q = d % (nd + 1)
    p = nd + value.axis
    return value.with_(axis=value.axis - 1 if q > p else value.axis, ndim=nd + 1)


def getitem(ctx: Context, value: object, index: object) -> object:
    """``x[index]`` for tuples (by position) and streams (ints, full slices, None, Ellipsis)."""
    if isinstance(value, TupleValue):
        return value.items[index] if isinstance(index, int) else Opaque()  # type: ignore[index]
    if isinstance(value, ParamRef):
        return value
    if not isinstance(value, Stream) or value.axis is None:
        return value if isinstance(value, Stream) else Opaque()
    items = list(index) if isinstance(index, tuple) else [index]
    if value.ndim is None:
        if any(i is Ellipsis or isinstance(i, int) or (isinstance(i, slice) and i != slice(None)) for i in items):
            raise _ambiguous("indexing")
        return value  # leading dims only; the channel axis (counted from the end) is unchanged
    nd = value.ndim
    if Ellipsis in items:
        k = items.index(Ellipsis)
        used = sum(1 for i in items if i is not None and i is not Ellipsis)
        items = items[:k] + [slice(None)] * (nd - used) + items[k + 1 :]
    p = nd + value.axis
    dim, out_dim, newp = 0, 0, None
    for it in items:
        if it is None:
            out_dim += 1
            continue
        if dim == p:
            if not (isinstance(it, slice) and it == slice(None)):
                return ctx.unsupported("", "indexing into the channel axis", [value])
            newp = out_dim
        if not isinstance(it, int):
            out_dim += 1
        dim += 1
    rest = nd - dim
    if newp is None:
        newp = out_dim + (p - dim)
    new_nd = out_dim + rest
    return value.with_(axis=newp - new_nd, ndim=new_nd)


def cat(ctx: Context, values: list[object], dim: int) -> object:
    """``torch.cat``: along the channel axis, channel lists are concatenated; along any
    other axis (class tokens), operands meet in CONCAT_TOKENS junction nodes."""
    streams = [v for v in values if isinstance(v, Stream)]
    if not streams:
        return Opaque()
    ref = next((s for s in streams if not is_lazy(s)), streams[0])
    if ref.axis is None:
        return ref
    if dim >= 0 and ref.ndim is None:
        raise _ambiguous("torch.cat with a non-negative dim")  # (B, C) vs (B, N, C)
    on_channel = dim == ref.axis if dim < 0 else dim == ref.pos
    if not on_channel:
        return combine(ctx, values, "cat_tokens", "torch.cat")
    if any(not isinstance(v, Stream) or is_lazy(v) for v in values):
        return ctx.unsupported("", "torch.cat along channels of parameters or raw inputs", values)
    ids = torch.cat([ids_of(s) for s in streams])  # type: ignore[arg-type]
    return ref.with_(nodes=ids, flat=None)
