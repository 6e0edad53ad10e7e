"""The weight space of a plain chain of layers, for :class:`~fms_lightning.weightspace.NFNEncoder`.

A *chain* is an MLP or a plain CNN: Linear / Conv layers applied one after another,
with activations, dropout, pooling, flatten and normalization layers in between, and
nothing else (no residual additions, concatenations, attention, embeddings or
parameters read directly in ``forward``). Its weight space (Zhou et al. 2023, §2) is

* ``W^(i)`` `(n_i, n_{i-1}, c_i)` for layer ``i = 1..L``: a Linear weight has ``c_i = 1``; a
  conv kernel `(n_i, n_{i-1}, k_1, ...)` has its ``c_i = k_1 * ...`` spatial entries as
  channels; the first Linear after a conv reads ``n_{i-1} * S`` flattened inputs, grouped
  channel-major (as ``torch.flatten(x, 1)`` lays out `(C, H, W)`) into
  `(n_i, n_{i-1}, S)`: the ``S`` positions of a conv channel are its channels.
* ``b^(i)`` `(n_i, 1 + e_i)`: the bias (zeros when the layer has none), then the ``e_i``
  per-neuron vectors of the normalization layers that act on layer ``i``'s output, in
  state-dict order (BatchNorm: weight, bias, running_mean, running_var; LayerNorm over the
  neuron axis: weight, bias). These permute with the neurons, so they are bias-like
  channels; ``num_batches_tracked`` is ignored.

The structure is verified by tracing a module (:func:`chain_from_module`), or inferred
from a state dict's key order and shapes (:func:`chain_from_state_dict`; a residual
connection cannot be seen in a state dict, so pass the module when you have it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

from fms_lightning.errors import ConfigurationError
from fms_lightning.weightspace.graph import _PASS_FUNCS, _PASS_METHODS, _POOL_FUNCS
from fms_lightning.weightspace.trace import LEAF_TYPES, trace_model

__all__ = ["ChainLayer", "ChainSpec", "chain_from_module", "chain_from_state_dict", "check_same_architecture"]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)
# activations, dropout, pooling, flatten: parameter-free and channel-wise
_PARAMETER_FREE = (nn.Flatten,) + tuple(
    t for t in LEAF_TYPES if not issubclass(t, _LAYERS + _NORMS + (nn.GroupNorm, nn.Embedding, nn.MultiheadAttention))
)
_META = {getattr, "size", "dim", "numel", "__getattribute__"}
_RESHAPE = {torch.flatten, "flatten", "view", "reshape", torch.reshape, "squeeze", "unsqueeze", torch.squeeze}
_NORM_KEYS = ("weight", "bias", "running_mean", "running_var")
_IGNORED = "num_batches_tracked"


@dataclass(frozen=True)
class ChainLayer:
    """One Linear/Conv layer of a chain and the keys of its parameters.

    Attributes:
        name: module path (``"features.0"``).
        weight: state-dict key of the weight.
        bias: key of the bias, or None.
        n_out: ``n_i``, output neurons / channels.
        n_in: ``n_{i-1}``, input neurons / channels.
        channels: ``c_i``, the weight's feature channels (kernel entries, flattened positions, or 1).
        extras: keys of the per-neuron vectors of the norms acting on this layer's output.
    """

    name: str
    weight: str
    bias: str | None
    n_out: int
    n_in: int
    channels: int
    extras: tuple[str, ...] = ()

    @property
    def bias_channels(self) -> int:
        """Channels of ``b^(i)``: the bias, then one per norm vector."""
        return 1 + len(self.extras)


@dataclass(frozen=True)
class ChainSpec:
    """The weight space of one chain architecture (see the module docstring).

    Attributes:
        layers: the ``L`` layers, input to output.
        shapes: every state-dict key the chain reads, with its shape, in state-dict order.
    """

    layers: tuple[ChainLayer, ...]
    shapes: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def signature(self) -> str:
        """A hash of the layout: equal for equal architectures."""
        text = repr((self.layers, self.shapes))
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

    @property
    def numel(self) -> int:
        """``P``: the length of a packed vector (:meth:`pack`)."""
        return sum(ly.n_out * (ly.n_in * ly.channels + ly.bias_channels) for ly in self.layers)

    def check(self, state_dict: Mapping[str, Tensor], *, what: str = "the state_dict") -> None:
        """Raise if ``state_dict`` is not of this architecture, naming the first difference.

        Raises:
            ConfigurationError: a missing or unexpected key, or a differing shape.
        """
        problem = _difference(dict(self.shapes), _shapes(state_dict))
        if problem is not None:
            raise ConfigurationError(
                f"{what} differs from the NFN encoder's architecture: {problem}. An NFN reads the weights "
                "of one architecture only; build one encoder per architecture, or use the GMN encoder "
                "(method='fms-gmn') for mixed architectures."
            )

    def pack(self, state_dict: Mapping[str, Tensor], *, dtype: torch.dtype = torch.float32) -> Tensor:
        """The blocks ``W^(1), b^(1), ..., W^(L), b^(L)`` of one state dict, flattened: `(P,)`.

        Raises:
            ConfigurationError: if ``state_dict`` has another architecture.
        """
        self.check(state_dict)
        parts = []
        for ly in self.layers:
            w = state_dict[ly.weight].detach().to("cpu", dtype)
            parts.append(w.reshape(ly.n_out, ly.n_in, ly.channels).reshape(-1))
            b = state_dict[ly.bias].detach() if ly.bias else torch.zeros(ly.n_out)
            cols = [b] + [state_dict[k].detach() for k in ly.extras]
            parts.append(torch.stack([c.to("cpu", dtype) for c in cols], dim=1).reshape(-1))
        return torch.cat(parts)

    def unpack(self, flat: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Split packed vectors `(B, P)` into ``W^(i)`` `(B, n_i, n_{i-1}, c_i)` and ``b^(i)`` `(B, n_i, 1 + e_i)`."""
        ws, bs, at = [], [], 0
        for ly in self.layers:
            size = ly.n_out * ly.n_in * ly.channels
            ws.append(flat[:, at : at + size].reshape(-1, ly.n_out, ly.n_in, ly.channels))
            at += size
            size = ly.n_out * ly.bias_channels
            bs.append(flat[:, at : at + size].reshape(-1, ly.n_out, ly.bias_channels))
            at += size
        return ws, bs


def _shapes(state_dict: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items() if not k.endswith(_IGNORED)}


def _difference(ref: Mapping[str, tuple[int, ...]], other: Mapping[str, tuple[int, ...]]) -> str | None:
    """The first difference between two {key: shape} layouts, in words (None if equal)."""
    for key, shape in ref.items():
        if key not in other:
            return f"parameter '{key}' {shape} is missing"
        if other[key] != shape:
            return f"parameter '{key}' has shape {other[key]}, expected {shape}"
    extra = [k for k in other if k not in ref]
    return f"unexpected parameter '{extra[0]}' {other[extra[0]]}" if extra else None


def check_same_architecture(members: Mapping[str, Mapping[str, Tensor]]) -> None:
    """Refuse a set of state dicts (e.g. a hub's members) unless they share one architecture.

    Args:
        members: name -> state dict.

    Raises:
        ConfigurationError: naming every member that differs from the first, with its first difference.

    >>> check_same_architecture({"a": nn.Linear(2, 3).state_dict(), "b": nn.Linear(2, 3).state_dict()})
    """
    items = list(members.items())
    if not items:
        return
    name0, ref = items[0][0], _shapes(items[0][1])
    diffs = [(n, _difference(ref, _shapes(sd))) for n, sd in items[1:]]
    diffs = [(n, d) for n, d in diffs if d is not None]
    if diffs:
        listed = "; ".join(f"'{n}': {d}" for n, d in diffs[:5]) + ("; ..." if len(diffs) > 5 else "")
        raise ConfigurationError(
            f"{len(diffs)} of {len(items)} members differ in architecture from '{name0}' ({listed}). An NFN "
            "reads the weights of one architecture only; use method='fms-gmn' for a hub of mixed architectures."
        )


# --------------------------------------------------------------------------- building a spec
class _Builder:
    """Accumulates layers in forward order, checking that each one chains onto the last."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], what: str) -> None:
        self.shapes, self.what = shapes, what
        self.layers: list[ChainLayer] = []
        self.last_conv = False

    def refuse(self, name: str, why: str) -> ConfigurationError:
        return ConfigurationError(
            f"{self.what} is not a plain chain of Linear/Conv layers: '{name}' {why}. NFNEncoder reads MLPs and "
            "plain CNNs only (layers one after another, optional BatchNorm/LayerNorm, activations, pooling, "
            "flatten); use the GMN encoder (method='fms-gmn') for this architecture."
        )

    def layer(self, name: str, prefix: str, conv: bool) -> None:
        wkey = f"{prefix}weight"
        shape = self.shapes[wkey]
        n_out, n_in = shape[0], shape[1]
        channels = 1
        for k in shape[2:]:
            channels *= k
        if self.layers:
            prev = self.layers[-1].n_out
            if n_in != prev:
                if conv or not self.last_conv or n_in % prev:
                    raise self.refuse(name, f"reads {n_in} inputs, but the layer before it has {prev} outputs")
                channels, n_in = n_in // prev, prev  # flatten: the S positions of each conv channel
        bkey = f"{prefix}bias" if f"{prefix}bias" in self.shapes else None
        if bkey is not None and self.shapes[bkey] != (n_out,):
            raise self.refuse(name, f"has a bias of shape {self.shapes[bkey]}, expected ({n_out},)")
        self.layers.append(ChainLayer(name, wkey, bkey, n_out, n_in, channels))
        self.last_conv = conv

    def norm(self, name: str, prefix: str) -> None:
        keys = tuple(f"{prefix}{k}" for k in _NORM_KEYS if f"{prefix}{k}" in self.shapes)
        if not self.layers:
            raise self.refuse(name, "normalizes the input before any Linear/Conv layer")
        ly = self.layers[-1]
        bad = [k for k in keys if self.shapes[k] != (ly.n_out,)]
        if bad:
            raise self.refuse(name, f"has '{bad[0]}' of shape {self.shapes[bad[0]]}, not one value per neuron "
                              f"of '{ly.name}' ({ly.n_out},)")
        self.layers[-1] = ChainLayer(ly.name, ly.weight, ly.bias, ly.n_out, ly.n_in, ly.channels, ly.extras + keys)

    def spec(self) -> ChainSpec:
        if not self.layers:
            raise ConfigurationError(f"{self.what} has no Linear/Conv layer; NFNEncoder has nothing to read.")
        return ChainSpec(tuple(self.layers), tuple(self.shapes.items()))


def chain_from_state_dict(state_dict: Mapping[str, Tensor], *, what: str = "the state_dict") -> ChainSpec:
    """Infer the chain from a state dict's key order (forward order assumed) and shapes.

    A key ``<module>.weight`` with 2 dims is a Linear layer, with 3 or more a conv; a 1-D
    ``weight`` (and ``bias``, ``running_mean``, ``running_var``) belongs to a norm acting on the
    previous layer's output.

    Raises:
        ConfigurationError: naming the first parameter that does not fit a chain.
    """
    shapes = _shapes(state_dict)
    b = _Builder(shapes, what)
    modules: dict[str, list[str]] = {}
    for key in shapes:
        prefix, _, leaf = key.rpartition(".")
        modules.setdefault(prefix + "." if prefix else "", []).append(leaf)
    for prefix, leaves in modules.items():
        name = prefix[:-1] or "<root>"
        odd = [leaf for leaf in leaves if leaf not in _NORM_KEYS]
        stats_only = "weight" not in leaves and "running_mean" in leaves  # BatchNorm(affine=False)
        if odd or ("weight" not in leaves and not stats_only):
            bad = f"{prefix}{odd[0] if odd else leaves[0]}"
            raise b.refuse(name, f"holds '{bad}' {shapes[bad]}, which is not the weight, bias or running "
                           "statistic of a Linear/Conv/norm layer")
        nd = 1 if stats_only else len(shapes[f"{prefix}weight"])
        if nd >= 2:
            b.layer(name, prefix, conv=nd >= 3)
        else:
            b.norm(name, prefix)
    return b.spec()


def chain_from_module(model: nn.Module) -> ChainSpec:
    """Read the chain of ``model`` by tracing it with :mod:`torch.fx`, refusing anything else.

    Raises:
        ConfigurationError: naming the first layer or operation that breaks the chain (a
            residual connection, a concatenation, attention, a grouped conv, ...).
        GraphConstructionError: if the model cannot be traced.
    """
    what = type(model).__name__
    shapes = _shapes(model.state_dict())
    b = _Builder(shapes, what)
    gm = trace_model(model)
    stream: dict[fx.Node, str] = {}  # nodes carrying the data, -> who read them first
    current: fx.Node | None = None
    called: set[str] = set()
    for node in gm.graph.nodes:
        label = _label(node)
        if node.op == "placeholder":
            if current is not None:
                raise b.refuse(label, "is a second input; a chain has one")
            current, stream[node] = node, ""
            continue
        if node.op == "get_attr":
            raise b.refuse(label, "is a parameter read directly in forward()")
        ins = list(dict.fromkeys(a for a in node.all_input_nodes if a in stream))
        if node.op == "output" or not ins:
            continue
        if node.op != "call_module" and node.target in _META:
            continue  # x.shape, x.size(0): not data
        if len(ins) > 1:
            joined = " and ".join(f"'{_label(a)}'" for a in ins[:2])
            raise b.refuse(label, f"combines the outputs of {joined} (a residual connection or concatenation)")
        if ins[0] is not current:
            first = stream[ins[0]]
            raise b.refuse(label, f"reads the output of '{_label(ins[0])}', which '{first}' already read: "
                           "a skip or residual connection")
        stream[current] = stream[current] or label
        if node.op == "call_module":
            _module_step(b, label, gm.get_submodule(label), called)
        elif node.target in (torch.transpose, torch.permute, "transpose", "permute", "t", "swapaxes"):
            raise b.refuse(label, "moves the channel axis")
        elif not (node.target in _PASS_FUNCS or node.target in _PASS_METHODS or node.target in _RESHAPE
                  or node.target in _POOL_FUNCS):
            raise b.refuse(label, f"is the operation '{getattr(node.target, '__name__', node.target)}'")
        current, stream[node] = node, ""
    spec = b.spec()
    read = {k for ly in spec.layers for k in (ly.weight, ly.bias, *ly.extras) if k}
    unused = [k for k in shapes if k not in read]
    if unused:
        raise b.refuse(unused[0].rpartition(".")[0] or unused[0], f"holds '{unused[0]}', which forward() never uses")
    return spec


def _label(node: fx.Node) -> str:
    """A module path for a module call; ``<op name> in <enclosing module>`` for other nodes."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    return f"{node.name} in {next(reversed(stack))}" if stack else node.name


def _module_step(b: _Builder, name: str, mod: nn.Module, called: set[str]) -> None:
    if name in called and any(True for _ in mod.parameters()):
        raise b.refuse(name, "is called twice (shared weights)")
    called.add(name)
    prefix = f"{name}."
    if isinstance(mod, _LAYERS):
        if getattr(mod, "groups", 1) != 1:
            raise b.refuse(name, f"is a grouped conv (groups={mod.groups}); its channels do not permute freely")
        b.layer(name, prefix, conv=not isinstance(mod, nn.Linear))
    elif isinstance(mod, _NORMS):
        if isinstance(mod, nn.LayerNorm) and len(mod.normalized_shape) != 1:
            raise b.refuse(name, f"is a LayerNorm over {tuple(mod.normalized_shape)}, not over the neuron axis")
        b.norm(name, prefix)
    elif not isinstance(mod, _PARAMETER_FREE):
        raise b.refuse(name, f"is a {type(mod).__name__}, not a Linear/Conv/norm/activation/pooling layer")
