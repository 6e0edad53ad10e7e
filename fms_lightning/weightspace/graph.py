"""``parameter_graph``: an ``nn.Module`` and its weights as a torch_geometric graph.

The structure is read by tracing the module with :mod:`torch.fx` (see
:mod:`fms_lightning.weightspace.trace`); no architecture is named in the code. The
weights come from the given ``state_dict`` (a trial's checkpoint) or from the
module itself. Feature layouts are documented in
:mod:`fms_lightning.weightspace.features`.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch_geometric.data import Data

from fms_lightning.errors import ConfigurationError, IncompatibleWeightsError
from fms_lightning.weightspace import composite, layers, ops
from fms_lightning.weightspace._builder import GraphBuilder, summary_stats, warn_once
from fms_lightning.weightspace.features import NodeType
from fms_lightning.weightspace.trace import (
    LazyNodes,
    Opaque,
    ParamRef,
    Stream,
    TupleValue,
    node_ndim,
    node_shape,
    trace_model,
)

logger = logging.getLogger(__name__)

__all__ = ["parameter_graph"]

_PASS_FUNCS = {
    F.relu, torch.relu, F.relu6, F.gelu, F.silu, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.leaky_relu,
    F.elu, F.selu, F.softplus, F.mish, F.hardswish, F.hardsigmoid, F.dropout, F.dropout1d, F.dropout2d,
    F.softmax, torch.softmax, F.log_softmax, torch.exp, torch.abs, torch.clamp, torch.neg, operator.neg,
    operator.pos, torch.square, torch.sqrt, F.normalize,
}  # fmt: skip
_PASS_METHODS = {
    "relu", "sigmoid", "tanh", "softmax", "log_softmax", "exp", "abs", "clamp", "neg", "contiguous", "clone",
    "float", "double", "half", "to", "type", "type_as", "detach", "sqrt", "square", "expand", "expand_as",
}  # fmt: skip
_ADD = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub, "add", "add_", "sub", "sub_"}
_MUL = {operator.mul, operator.imul, torch.mul, operator.truediv, torch.div, operator.pow, "mul", "mul_", "div", "pow"}
_REDUCE = {
    torch.mean: ops.POOL_AVG, "mean": ops.POOL_AVG, torch.sum: ops.POOL_SUM, "sum": ops.POOL_SUM,
    torch.amax: ops.POOL_MAX, "amax": ops.POOL_MAX, torch.max: ops.POOL_MAX, "max": ops.POOL_MAX,
}  # fmt: skip
_POOL_FUNCS = {
    F.avg_pool1d: ops.POOL_AVG, F.avg_pool2d: ops.POOL_AVG, F.avg_pool3d: ops.POOL_AVG,
    F.adaptive_avg_pool1d: ops.POOL_AVG, F.adaptive_avg_pool2d: ops.POOL_AVG, F.adaptive_avg_pool3d: ops.POOL_AVG,
    F.max_pool1d: ops.POOL_MAX, F.max_pool2d: ops.POOL_MAX, F.max_pool3d: ops.POOL_MAX,
    F.adaptive_max_pool1d: ops.POOL_MAX, F.adaptive_max_pool2d: ops.POOL_MAX,
}  # fmt: skip
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def parameter_graph(
    model: nn.Module,
    state_dict: Mapping[str, Tensor] | None = None,
    *,
    example_input: Any = None,
    max_kernel_size: int = 9,
    max_embedding_rows: int = 1024,
    leaf_modules: Iterable[type[nn.Module] | str] = (),
    summarize: Iterable[type[nn.Module] | str] = (),
    on_unsupported: Literal["opaque", "raise"] = "opaque",
    dtype: torch.dtype = torch.float32,
) -> Data:
    """Build the parameter graph ``G(W)`` of a network (FMS paper §3.1).

    Nodes are neurons and channels (inputs, hidden units, outputs); edges are weights.
    A Linear layer gives one edge per weight; a conv layer one edge per (in, out)
    channel pair inside each group, with the kernel flattened onto the edge's ``K``
    value columns. Biases, normalization affine parameters and running statistics are
    node features. Residual additions, products, pooling and token concatenation add
    junction nodes joined by identity edges; class tokens, positional embeddings and
    embedding rows become token nodes with one edge per value. MultiheadAttention gives
    Q, K and V nodes, one node per head, and the output projection.

    Every parameter element is placed exactly once (``data.num_param_elements`` counts
    them; a module called twice, i.e. shared weights, is placed once per call). Values
    that exceed the fixed feature width are reduced, never dropped:

    * kernels (and per-position weights of a conv channel flattened into a Linear layer)
      with more than ``K = max_kernel_size`` values are adaptive-average-pooled to ``K``
      values (a ``7x7`` kernel with ``K = 9`` becomes ``3x3``);
    * embedding tables (and positional embeddings) with more than
      ``max_embedding_rows`` rows are pooled along the rows.

    Bounding graph size for big models: a conv/Linear layer has ``C_in * C_out / groups``
    edges whatever its kernel size, so the graph grows with the square of the width.
    Three knobs bound it:

    * ``summarize=("backbone.layer4", nn.TransformerEncoderLayer, ...)``: each listed
      submodule (qualified name or type) becomes one opaque node with summary
      statistics of its parameters (mean, std, min, max, log1p(numel)); its output
      channels hang from that node. Use it for the widest blocks (for ResNet-18,
      ``layer4`` holds 8.4M of 11.7M parameters and 1.3M of 1.9M edges). Summaries
      are permutation invariant, so the GMN stays invariant.
    * ``max_kernel_size``: fewer value columns per edge (memory ``E x (K + 16)``).
    * ``max_embedding_rows``: fewer token nodes and edges for vocabularies.

    Args:
        model: the network; its structure is traced with :mod:`torch.fx`.
        state_dict: weights to featurize (e.g. a trial's snapshot); defaults to the model's own.
        example_input: optional input batch; shapes are then propagated, which resolves
            reshapes and reductions whose channel axis cannot be inferred symbolically.
        max_kernel_size: ``K``, weight-value columns per edge.
        max_embedding_rows: rows of an embedding table kept before pooling.
        leaf_modules: module types or qualified names kept whole during tracing.
        summarize: module types or qualified names represented by one opaque summary node
            each (no warning); bounds graph size, see above.
        on_unsupported: ``"opaque"`` represents a module or op it cannot read by one opaque
            node with summary statistics (and warns once); ``"raise"`` raises instead.
        dtype: floating dtype of ``x`` and ``edge_attr``.

    Returns:
        A :class:`~torch_geometric.data.Data` with ``x`` `(N, NODE_FEATURE_DIM)`,
        ``edge_index`` `(2, E)`, ``edge_attr`` `(E, K + 1 + len(EdgeType))`,
        ``node_type`` `(N,)`, ``edge_type`` `(E,)`, ``num_param_elements``, ``num_params``,
        ``max_kernel_size`` and ``signature`` (a hash of the wiring; equal for equal
        architectures).

    Raises:
        ConfigurationError: for an invalid option or a state dict passed without a model.
        IncompatibleWeightsError: if ``state_dict`` does not match the model's parameters.
        GraphConstructionError: if the model cannot be traced, or (with ``on_unsupported="raise"``)
            contains a module the graph cannot read.

    >>> g = parameter_graph(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    >>> g.edge_index.shape, g.num_param_elements
    (torch.Size([2, 20]), 26)
    """
    if not isinstance(model, nn.Module):
        raise ConfigurationError(
            f"parameter_graph needs the nn.Module, got {type(model).__name__}. The structure is read by tracing "
            "the module; pass a state dict as the second argument: parameter_graph(model, state_dict)."
        )
    if int(max_kernel_size) < 1 or int(max_embedding_rows) < 1:
        raise ConfigurationError(
            f"max_kernel_size and max_embedding_rows must be >= 1, got {max_kernel_size} and {max_embedding_rows}."
        )
    if on_unsupported not in ("opaque", "raise"):
        raise ConfigurationError(f"on_unsupported must be 'opaque' or 'raise', got {on_unsupported!r}.")
    tensors = _merge_weights(model, state_dict)
    param_names = {n for n, _ in model.named_parameters()}
    summarize = tuple(summarize)
    gm = trace_model(model, leaf_modules=tuple(leaf_modules) + summarize, example_input=example_input)
    ctx = layers.Context(
        GraphBuilder(max_kernel_size=int(max_kernel_size), dtype=dtype),
        tensors,
        param_names,
        on_unsupported=on_unsupported,
        max_embedding_rows=int(max_embedding_rows),
    )
    ctx.summarize_names = {t for t in summarize if isinstance(t, str)}
    ctx.summarize_types = tuple(t for t in summarize if isinstance(t, type))
    with torch.no_grad():
        _interpret(ctx, gm)
        _unused_parameters(ctx, model)
        num_params = sum(p.numel() for p in model.parameters())
        return ctx.builder.build(num_params=num_params, max_kernel_size=int(max_kernel_size))


def _merge_weights(model: nn.Module, state_dict: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    own = {k: v.detach() for k, v in model.state_dict(keep_vars=True).items()}
    if state_dict is None:
        return own
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise IncompatibleWeightsError(
            f"state_dict does not match {type(model).__name__}: missing keys {missing[:5]}, unexpected keys "
            f"{unexpected[:5]}. Expected the keys of model.state_dict(); strip any wrapper prefix "
            "(e.g. 'model.' from a Lightning checkpoint) before calling parameter_graph."
        )
    merged = dict(own)
    for key, val in state_dict.items():
        if tuple(val.shape) != tuple(own[key].shape):
            raise IncompatibleWeightsError(
                f"state_dict['{key}'] has shape {tuple(val.shape)}, but the model expects {tuple(own[key].shape)}. "
                "The snapshot belongs to a different architecture."
            )
        merged[key] = val.detach().cpu()
    return merged


def _interpret(ctx: layers.Context, gm: fx.GraphModule) -> None:
    env: dict[fx.Node, object] = {}
    for node in gm.graph.nodes:
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        if node.op == "placeholder":
            out: object = Stream(LazyNodes(), axis=None, ndim=None)
        elif node.op == "get_attr":
            t = ctx.tensors.get(node.target)
            out = ParamRef(node.target, t) if t is not None and node.target in ctx.param_names else Opaque()
        elif node.op == "call_module":
            out = _call_module(ctx, node, gm.get_submodule(node.target), args, kwargs)
        elif node.op in ("call_function", "call_method"):
            out = _call(ctx, node, node.target, args, kwargs)
        else:  # output
            for value in _flatten_values(args):
                if isinstance(value, Stream) and not ops.is_lazy(value):
                    ctx.builder.mark_output(ops.ids_of(value))
            continue
        nd = node_ndim(node)
        if isinstance(out, Stream) and nd is not None:
            out = out.with_(ndim=nd)
        env[node] = out


def _flatten_values(obj: object) -> list[object]:
    if isinstance(obj, (tuple, list)):
        return [v for item in obj for v in _flatten_values(item)]
    if isinstance(obj, dict):
        return [v for item in obj.values() for v in _flatten_values(item)]
    if isinstance(obj, TupleValue):
        return _flatten_values(obj.items)
    return [obj]


def _call_module(ctx: layers.Context, node: fx.Node, mod: nn.Module, args: tuple, kwargs: dict) -> object:
    path = str(node.target)
    inp = args[0] if args else next(iter(kwargs.values()), None)
    if path in ctx.summarize_names or isinstance(mod, ctx.summarize_types):
        values = list(args) + list(kwargs.values())
        return ctx.unsupported(path, type(mod).__name__, values, mod, requested=True)
    if isinstance(mod, nn.Linear):
        return layers.linear(ctx, path, ctx.get(path, "weight"), ctx.get(path, "bias"), inp)  # type: ignore[arg-type]
    if isinstance(mod, _CONVS):
        return layers.conv(ctx, path, mod, inp)
    if isinstance(mod, _NORMS):
        return layers.norm(ctx, path, mod, inp)
    if isinstance(mod, nn.Embedding):
        return layers.embedding(ctx, path, mod, inp)
    if isinstance(mod, nn.MultiheadAttention):
        q = args[0] if args else kwargs["query"]
        k = args[1] if len(args) > 1 else kwargs.get("key", q)
        v = args[2] if len(args) > 2 else kwargs.get("value", k)
        return TupleValue([layers.attention(ctx, path, mod, q, k, v), Opaque()])
    if isinstance(mod, nn.TransformerEncoderLayer) and isinstance(getattr(mod, "norm1", None), nn.LayerNorm):
        return composite.transformer_encoder_layer(ctx, path, mod, inp)
    if isinstance(mod, nn.TransformerEncoder) and all(
        isinstance(m, nn.TransformerEncoderLayer) and isinstance(m.norm1, nn.LayerNorm) for m in mod.layers
    ):
        return composite.transformer_encoder(ctx, path, mod, inp)
    if isinstance(mod, nn.Flatten):
        return ops.flatten(ctx, inp, mod.start_dim, mod.end_dim)
    if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)):
        return ops.pool(ctx, inp, ops.POOL_MAX)
    if type(mod).__name__.startswith(("AvgPool", "AdaptiveAvgPool", "AdaptiveMaxPool", "MaxPool")):
        return ops.pool(ctx, inp, ops.POOL_AVG if "Avg" in type(mod).__name__ else ops.POOL_MAX)
    if not any(True for _ in mod.parameters()) and type(mod).__module__.startswith("torch.nn.modules.") and (
        type(mod).__module__.rsplit(".", 1)[-1] in ("activation", "dropout", "linear", "padding", "upsampling")
    ):
        return inp  # activations, dropout, Identity: channel-wise and parameter-free
    return ctx.unsupported(path, type(mod).__name__, list(args) + list(kwargs.values()), mod)


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: object = None) -> object:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _call(ctx: layers.Context, node: fx.Node, target: object, args: tuple, kwargs: dict) -> object:  # noqa: C901
    x = args[0] if args else None
    if target in (getattr, "size", "dim", "numel") or (node.op == "call_method" and target == "__getattribute__"):
        return Opaque()
    if target is operator.getitem:
        return ops.getitem(ctx, x, args[1])
    if target in _PASS_FUNCS or target in _PASS_METHODS:
        return x
    if target in _ADD:
        return ops.combine(ctx, list(args[:2]), "add", f"addition '{node.name}'")
    if target in _MUL:
        return ops.combine(ctx, list(args[:2]), "mul", f"product '{node.name}'")
    if target in _POOL_FUNCS:
        return ops.pool(ctx, x, _POOL_FUNCS[target])
    if target in _REDUCE:
        dims = _arg(args, kwargs, 1, "dim")
        keep = bool(_arg(args, kwargs, 2, "keepdim", False))
        out = ops.reduce(ctx, x, dims, keep, _REDUCE[target], f"{getattr(target, '__name__', target)}")
        return TupleValue([out, Opaque()]) if target in (torch.max, "max") and dims is not None else out
    if target in (torch.flatten, "flatten"):
        start, end = int(_arg(args, kwargs, 1, "start_dim", 0)), int(_arg(args, kwargs, 2, "end_dim", -1))
        return ops.flatten(ctx, x, start, end)
    if target in (torch.transpose, "transpose", "swapaxes", torch.swapaxes):
        return ops.transpose(x, int(args[1]), int(args[2]))
    if target in ("t", torch.t):
        return ops.transpose(x, 0, 1)
    if target in ("permute", torch.permute):
        dims = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
        return ops.permute(x, [int(d) for d in dims])
    if target in ("unsqueeze", torch.unsqueeze):
        return ops.unsqueeze(x, int(_arg(args, kwargs, 1, "dim")))
    if target in ("view", "reshape", torch.reshape):
        sizes = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
        return _reshape(ctx, node, x, list(sizes))
    if target in (torch.cat, torch.concat, torch.concatenate):
        return ops.cat(ctx, list(_arg(args, kwargs, 0, "tensors")), int(_arg(args, kwargs, 1, "dim", 0)))
    if target is F.linear:
        w, b = args[1], _arg(args, kwargs, 2, "bias")
        if isinstance(w, ParamRef) and (b is None or isinstance(b, ParamRef)):
            ctx.consumed.update({w.name} | ({b.name} if b is not None else set()))
            return layers.linear(ctx, w.name.rsplit(".", 1)[0], w.tensor, b.tensor if b else None, x)
    if target in (operator.matmul, torch.matmul) and isinstance(args[1], ParamRef) and args[1].tensor.ndim == 2:
        ctx.consumed.add(args[1].name)
        return layers.linear(ctx, args[1].name, args[1].tensor.t(), None, x)
    values = list(args) + list(kwargs.values())
    if isinstance(x, ParamRef) and node.op == "call_method" and target in ("expand", "repeat", "view", "reshape"):
        return x
    if not any(isinstance(v, Stream) for v in _flatten_values(values)):
        return Opaque()
    name = getattr(target, "__name__", str(target))
    return ctx.unsupported(node.name, f"operation '{name}'", _flatten_values(values))


def _reshape(ctx: layers.Context, node: fx.Node, x: object, sizes: list[object]) -> object:
    if isinstance(x, ParamRef) or not isinstance(x, Stream):
        return x if isinstance(x, ParamRef) else Opaque()
    if ops.is_lazy(x) or x.axis is None:
        return x.with_(axis=None, ndim=None)
    src = node.args[0]
    ishape = node_shape(src) if isinstance(src, fx.Node) else None
    oshape = node_shape(node)
    if ishape is not None and oshape is not None:
        if ishape == oshape:
            return x
        a = 0
        while a < min(len(ishape), len(oshape)) and ishape[a] == oshape[a]:
            a += 1
        c = 0
        while c < min(len(ishape), len(oshape)) - a and ishape[-1 - c] == oshape[-1 - c]:
            c += 1
        mid_in, mid_out = ishape[a : len(ishape) - c], oshape[a : len(oshape) - c]
        if len(mid_out) == 1 and len(mid_in) >= 1:
            return ops.flatten(ctx, x.with_(ndim=len(ishape)), a, len(ishape) - c - 1)
        p = len(ishape) + x.axis
        if len(mid_in) == 1 and not a <= p < len(ishape) - c:
            return x.with_(axis=p - len(oshape) if p < a else x.axis, ndim=len(oshape))
        return ctx.unsupported(node.name, "reshape that splits or merges the channel axis", [x])
    if len(sizes) == 2 and sizes[1] == -1:
        return ops.flatten(ctx, x, 1, -1)
    raise ops._ambiguous(f"reshape '{node.name}'")


def _unused_parameters(ctx: layers.Context, model: nn.Module) -> None:
    """Parameters the forward pass never read still appear: one opaque node per owner module."""
    unused = [n for n in ctx.param_names if n not in ctx.consumed]
    if not unused:
        return
    owners: dict[str, list[str]] = {}
    for name in sorted(unused):
        owners.setdefault(name.rsplit(".", 1)[0] if "." in name else "", []).append(name)
    warn_once(
        f"unused:{type(model).__name__}:{','.join(sorted(owners))}",
        f"parameter_graph: parameters {sorted(unused)[:5]} of {type(model).__name__} are not used by the traced "
        "forward (or by an op the graph cannot read); each owner module is represented by one opaque node.",
        stacklevel=4,
    )
    b = ctx.builder
    for owner, names in owners.items():
        ts = [ctx.tensors[n] for n in names]
        b.add_nodes(1, NodeType.OPAQUE, summary_stats(ts), params=sum(t.numel() for t in ts))
        ctx.consumed.update(names)
