"""Content-hash cache of parameter graphs, and safe loading of weight files.

A trial's snapshot is converted to a graph once: the key is a hash of the
architecture (module types, parameter names and shapes, graph options) and of
the bytes of every tensor, so equal weights hit the cache whatever object holds
them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from fms_lightning.errors import ConfigurationError, IncompatibleWeightsError
from fms_lightning.weightspace.graph import parameter_graph

logger = logging.getLogger(__name__)

__all__ = ["GraphCache", "load_state_dict_file", "state_dict_hash"]


def state_dict_hash(state_dict: Mapping[str, Tensor], *, extra: str = "") -> str:
    """Hash of the names, shapes, dtypes and bytes of a state dict's tensors.

    Args:
        state_dict: name -> tensor.
        extra: text mixed into the hash (e.g. an architecture signature).

    Returns:
        A hex digest.
    """
    h = hashlib.blake2b(digest_size=20)
    h.update(extra.encode())
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _architecture_key(model: nn.Module) -> str:
    parts = [f"{type(model).__module__}.{type(model).__qualname__}"]
    parts += [f"{n}:{type(m).__name__}" for n, m in model.named_modules()]
    parts += [f"{n}:{tuple(t.shape)}" for n, t in model.state_dict().items()]
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=20).hexdigest()


class GraphCache:
    """Convert each weight snapshot to a parameter graph once (LRU, keyed by content hash).

    Args:
        max_entries: graphs kept in memory; the least recently used is evicted.
        **graph_kwargs: options passed to :func:`parameter_graph` (e.g. ``example_input``,
            ``max_kernel_size``).

    Raises:
        ConfigurationError: if ``max_entries < 1``.

    >>> cache = GraphCache()
    >>> m = nn.Linear(3, 2)
    >>> cache.get(m) is cache.get(m)
    True
    """

    def __init__(self, *, max_entries: int = 256, **graph_kwargs: Any) -> None:
        if max_entries < 1:
            raise ConfigurationError(f"max_entries must be >= 1, got {max_entries}.")
        self.max_entries = int(max_entries)
        self.graph_kwargs = graph_kwargs
        self._options = repr(sorted((k, repr(v)) for k, v in graph_kwargs.items() if k != "example_input"))
        self._graphs: OrderedDict[str, Data] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def key(self, model: nn.Module, state_dict: Mapping[str, Tensor] | None = None) -> str:
        """Cache key of ``model`` with ``state_dict`` (its own weights if ``None``)."""
        weights = state_dict if state_dict is not None else model.state_dict()
        return state_dict_hash(weights, extra=_architecture_key(model) + self._options)

    def get(self, model: nn.Module, state_dict: Mapping[str, Tensor] | str | os.PathLike | None = None) -> Data:
        """The parameter graph of ``model`` with ``state_dict``, built on first request.

        Args:
            model: the network (its structure).
            state_dict: weights, a path to a weight file, or ``None`` for the model's own.

        Returns:
            The cached :class:`~torch_geometric.data.Data` (do not modify it in place).

        Raises:
            IncompatibleWeightsError: if the weights do not fit the model.
            GraphConstructionError: if the model cannot be read.
        """
        if isinstance(state_dict, (str, os.PathLike)):
            state_dict = load_state_dict_file(state_dict)
        k = self.key(model, state_dict)
        graph = self._graphs.get(k)
        if graph is not None:
            self.hits += 1
            self._graphs.move_to_end(k)
            return graph
        self.misses += 1
        graph = parameter_graph(model, state_dict, **self.graph_kwargs)
        self._graphs[k] = graph
        if len(self._graphs) > self.max_entries:
            self._graphs.popitem(last=False)
        return graph

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        """Drop every cached graph."""
        self._graphs.clear()


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Load weights from a ``.safetensors`` file or a torch file, without unrestricted unpickling.

    Torch files are read with ``torch.load(weights_only=True)``. A Lightning checkpoint
    (a dict with a ``"state_dict"`` entry) yields that entry.

    Args:
        path: the file.

    Returns:
        Name -> CPU tensor.

    Raises:
        ConfigurationError: if the file does not exist.
        IncompatibleWeightsError: if the file does not hold a mapping of tensors.
    """
    from fms_lightning._files import load_state_dict  # the one safe loader, with the encoders' errors

    return load_state_dict(path)
