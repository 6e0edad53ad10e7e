"""Symbolic tracing of a model and the values that flow through the traced graph.

Tracing uses :mod:`torch.fx`. Layers the graph builder understands (Linear, Conv,
normalization, Embedding, MultiheadAttention, activations, pooling, ...) are kept
as leaves; everything else is traced through, so residual blocks and hand-written
``forward`` methods become plain additions, concatenations and reshapes.

While interpreting the fx graph, every fx value is one of:

* :class:`Stream`: a tensor whose channel (feature) axis is known, with the graph
  node ids of its channels;
* :class:`ParamRef`: a parameter read directly in ``forward`` (``get_attr``), e.g. a
  class token or a positional embedding;
* :class:`TupleValue`: a tuple of values (the output of MultiheadAttention);
* anything else (sizes, constants, buffers), kept as :class:`Opaque`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, fx, nn

from fms_lightning.errors import GraphConstructionError

logger = logging.getLogger(__name__)

__all__ = ["LEAF_TYPES", "Stream", "ParamRef", "TupleValue", "Opaque", "LazyNodes", "trace_model"]

_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU,
    nn.Softplus, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softmax, nn.LogSoftmax,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity,
)  # fmt: skip
_POOLS: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.MultiheadAttention, nn.Flatten,
)  # fmt: skip
#: Module types kept as leaves during tracing.
LEAF_TYPES: tuple[type[nn.Module], ...] = _ACTIVATIONS + _POOLS + _LAYERS


class LazyNodes:
    """Node ids of a stream whose width is only known when a layer consumes it.

    The model's inputs (and outputs of opaque modules) are lazy: an MLP on images
    gets one input node per pixel, a CNN one per image channel.

    Args:
        anchor: opaque node the materialized nodes hang from, or ``None`` for inputs.
    """

    def __init__(self, anchor: int | None = None) -> None:
        self.anchor = anchor
        self.ids: Tensor | None = None


@dataclass
class Stream:
    """A tensor with a channel axis.

    Attributes:
        nodes: `(C,)` node ids of the channels, or a :class:`LazyNodes`.
        axis: channel axis counted from the end (``-1`` = last), or ``None`` if unknown.
        ndim: number of dims, if known.
        flat: ``"block"`` if channels were flattened together with later dims
            (channel-major, as ``x.flatten(1)`` after a conv), ``"interleave"`` if
            with earlier dims; ``None`` otherwise.
    """

    nodes: Tensor | LazyNodes
    axis: int | None = -1
    ndim: int | None = None
    flat: str | None = None

    @property
    def pos(self) -> int | None:
        """Channel axis counted from the front, if ``ndim`` is known."""
        if self.axis is None or self.ndim is None:
            return None
        return self.ndim + self.axis

    def with_(self, **kw: object) -> Stream:
        """Copy with some fields replaced."""
        vals = {"nodes": self.nodes, "axis": self.axis, "ndim": self.ndim, "flat": self.flat}
        vals.update(kw)
        return Stream(**vals)  # type: ignore[arg-type]


@dataclass
class ParamRef:
    """A parameter read directly in ``forward`` (``get_attr``), possibly expanded or reshaped.

    Attributes:
        name: qualified parameter name.
        tensor: the parameter's values (from the state dict), in its original shape.
    """

    name: str
    tensor: Tensor


@dataclass
class TupleValue:
    """A tuple of values, indexed by ``getitem``."""

    items: list[object] = field(default_factory=list)


@dataclass
class Opaque:
    """A value the builder does not track (sizes, constants, buffers, masks)."""

    value: object = None


class _Tracer(fx.Tracer):
    def __init__(self, leaf_modules: Iterable[type[nn.Module] | str] = ()) -> None:
        super().__init__()
        extra = tuple(leaf_modules)
        self._leaf_types = LEAF_TYPES + tuple(t for t in extra if isinstance(t, type))
        self._leaf_names = {t for t in extra if isinstance(t, str)}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, self._leaf_types) or module_qualified_name in self._leaf_names:
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace_model(
    model: nn.Module,
    *,
    leaf_modules: Iterable[type[nn.Module] | str] = (),
    example_input: object = None,
) -> fx.GraphModule:
    """Trace ``model`` with :mod:`torch.fx`, keeping known layers as leaves.

    Args:
        model: the network.
        leaf_modules: extra module types or qualified names to keep as leaves; they
            become opaque nodes unless their type is a known layer.
        example_input: optional input (tensor or tuple of tensors); if given, shapes
            are propagated and used to resolve ambiguous reshapes and reductions.

    Returns:
        The traced graph module (with ``tensor_meta`` on nodes if ``example_input``).

    Raises:
        GraphConstructionError: if tracing fails (e.g. data-dependent control flow).
    """
    tracer = _Tracer(leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as err:  # fx raises many error types
        raise GraphConstructionError(
            f"Could not trace {type(model).__name__} with torch.fx: {type(err).__name__}: {err}. "
            "parameter_graph reads the structure by symbolic tracing, so forward() must not branch "
            "on tensor values. Fix: pass leaf_modules=(...) naming the submodule type or path that "
            "fails, so it is kept as one opaque node."
        ) from err
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    if example_input is not None:
        from torch.fx.passes.shape_prop import ShapeProp

        args = example_input if isinstance(example_input, tuple) else (example_input,)
        was_training = model.training
        gm.eval()
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(*args)
        except Exception as err:
            raise GraphConstructionError(
                f"Running {type(model).__name__} on example_input failed: {type(err).__name__}: {err}. "
                "Pass an example_input the model accepts (a tensor or a tuple of tensors)."
            ) from err
        finally:
            gm.train(was_training)
    return gm


def node_ndim(node: fx.Node) -> int | None:
    """Number of dims of an fx node's output from shape propagation, if known."""
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return len(shape) if shape is not None else None


def node_shape(node: fx.Node) -> tuple[int, ...] | None:
    """Shape of an fx node's output from shape propagation, if known."""
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None
