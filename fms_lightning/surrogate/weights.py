"""Weight features W -> ξ(G(W)) for the surrogate, embedded once per snapshot.

Glossary:
    W           a checkpoint's weights (a ``state_dict`` or a snapshot file).
    G(W)        its parameter graph (``graph_fn``, e.g. ``weightspace.parameter_graph``).
    ξ           the encoder's embedding of G(W) (eq. 6), `(out_dim,)`.

Performance stance (DESIGN.md): the encoder is *frozen* while a study runs. Each
distinct snapshot (keyed by a content hash) is turned into a graph and embedded
exactly once per encoder version; new snapshots are embedded in one batched call.
The surrogate learns a projection of ξ jointly with the rest of ψ. This keeps FMS's
per-suggest cost close to DyHPO's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fms_lightning.errors import ConfigurationError, IncompatibleWeightsError

__all__ = ["WeightFeaturizer", "load_weights", "content_key", "model_graph_fn", "resolve_blob", "stash_blob"]

GraphFn = Callable[[Mapping[str, Any], Mapping[str, torch.Tensor]], Any]


def load_weights(weights: Mapping[str, torch.Tensor] | str | Path) -> dict[str, torch.Tensor]:
    """Return a CPU state_dict from a state_dict or a snapshot path (safe loading only).

    Files are read by the library's one safe loader (safetensors, or
    ``torch.load(weights_only=True)``; a Lightning checkpoint is unwrapped).
    """
    from fms_lightning._files import load_state_dict

    return load_state_dict(weights)


def content_key(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A content hash of a state_dict (names, dtypes, shapes and bytes)."""
    from fms_lightning.weightspace import state_dict_hash

    return state_dict_hash(state_dict)


def stash_blob(value: Any, key: str, blobs: dict[str, Any] | None) -> Any:
    """``value`` itself; or, with ``blobs``, ``value`` stored there once under ``key`` and the reference
    ``{"blob": key}`` in its place (what :func:`resolve_blob` resolves)."""
    if blobs is None:
        return value
    blobs.setdefault(key, value)
    return {"blob": key}


def resolve_blob(value: Any, blobs: Mapping[str, Any] | None) -> Any:
    """``value``, or the part it names (``{"blob": key}``, see ``state_dict(blobs=...)``)."""
    if not (isinstance(value, Mapping) and set(value) == {"blob"}):
        return value
    key = value["blob"]
    if blobs is None or key not in blobs:
        raise ConfigurationError(
            f"The weight featurizer's state names the stored part {key!r}, which was not "
            + ("passed (load_state_dict(state, blobs=...))." if blobs is None else "found among the stored parts.")
        )
    return blobs[key]


def model_graph_fn(model_factory: Callable[[Mapping[str, Any]], nn.Module], **graph_kwargs: Any) -> GraphFn:
    """A ``graph_fn`` built from ``model_factory(config) -> nn.Module`` and ``parameter_graph``.

    Args:
        model_factory: Builds the (hub) architecture a config uses.
        **graph_kwargs: Passed to :func:`fms_lightning.weightspace.parameter_graph`.

    Returns:
        ``graph_fn(config, state_dict) -> Data``.
    """
    from fms_lightning.weightspace import parameter_graph

    def graph_fn(config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> Any:
        return parameter_graph(model_factory(config), state_dict, **graph_kwargs)

    return graph_fn


class WeightFeaturizer:
    """Turns weights into cached embeddings ξ, batched.

    Args:
        encoder: An ``nn.Module`` mapping a torch_geometric ``Batch`` to `(num_graphs, out_dim)`,
            with an ``out_dim`` attribute (``GMNEncoder`` / ``FlatEncoder``); or a factory
            ``encoder(first_graph) -> nn.Module`` (e.g. for ``FlatEncoder``, which needs a
            reference graph), in which case ``out_dim`` must be given.
        out_dim: Embedding width when ``encoder`` is a factory.
        graph_fn: ``graph_fn(config, state_dict) -> Data``; the config tells it the architecture.
        batch_size: Graphs per encoder call.

    Raises:
        ConfigurationError: If ``encoder`` has no positive ``out_dim`` or ``graph_fn`` is not callable.
    """

    def __init__(
        self,
        encoder: nn.Module | Callable[[Any], nn.Module],
        graph_fn: GraphFn,
        *,
        out_dim: int | None = None,
        batch_size: int = 64,
    ) -> None:
        self._factory = None if isinstance(encoder, nn.Module) else encoder
        if self._factory is None:
            out_dim = getattr(encoder, "out_dim", None)
        if not isinstance(out_dim, int) or out_dim < 1:
            raise ConfigurationError(
                f"The weight encoder {type(encoder).__name__} has out_dim={out_dim!r}; expected a "
                f"positive int attribute `out_dim` (GMNEncoder and FlatEncoder have one)."
            )
        if not callable(graph_fn):
            raise ConfigurationError(f"graph_fn={graph_fn!r} is not callable; expected graph_fn(config, state_dict).")
        self.encoder: nn.Module | None = encoder if self._factory is None else None  # type: ignore[assignment]
        self.graph_fn = graph_fn
        self.out_dim = out_dim
        self.batch_size = batch_size
        self.cache: dict[str, torch.Tensor] = {}
        self._pending: dict[str, tuple[Mapping[str, Any], dict[str, torch.Tensor]]] = {}

    def add(self, config: Mapping[str, Any], weights: Mapping[str, torch.Tensor] | str | Path) -> str:
        """Register a snapshot; returns its content key (embedding deferred to :meth:`flush`)."""
        sd = load_weights(weights)
        key = content_key(sd)
        if key not in self.cache and key not in self._pending:
            self._pending[key] = (dict(config), sd)
        return key

    @torch.no_grad()
    def flush(self) -> None:
        """Embed every pending snapshot, `batch_size` graphs per encoder call."""
        if not self._pending:
            return
        from torch_geometric.data import Batch

        items = list(self._pending.items())
        if self.encoder is None:
            cfg0, sd0 = items[0][1]
            self.encoder = self._factory(self.graph_fn(cfg0, sd0))  # type: ignore[misc]
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            for s in range(0, len(items), self.batch_size):
                chunk = items[s : s + self.batch_size]
                graphs = [self.graph_fn(cfg, sd) for _, (cfg, sd) in chunk]
                out = self.encoder(Batch.from_data_list(graphs))
                if out.shape != (len(chunk), self.out_dim):
                    raise IncompatibleWeightsError(
                        f"The weight encoder returned shape {tuple(out.shape)}; expected "
                        f"({len(chunk)}, {self.out_dim})."
                    )
                for (key, _), emb in zip(chunk, out):
                    self.cache[key] = emb.detach().to(torch.float64).clone()
        finally:
            self.encoder.train(was_training)
        self._pending.clear()

    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self._pending:
            self.flush()
        return self.cache[key]

    def state_dict(self, *, blobs: dict[str, Any] | None = None) -> dict[str, Any]:
        """The cached embeddings and the encoder's parameters.

        Args:
            blobs: If given, the encoder's parameters (fixed while a study runs) are put into it
                under ``encoder/<hash>`` and the state names that key (see
                :meth:`SnapshotFeaturizer.state_dict <fms_lightning.surrogate.readout.SnapshotFeaturizer.state_dict>`).
        """
        self.flush()
        enc: Any = None if self.encoder is None else self.encoder.state_dict()
        if enc is not None and blobs is not None:
            from fms_lightning.weightspace import state_dict_hash

            enc = stash_blob(enc, f"encoder/{state_dict_hash(enc)}", blobs)
        return {"cache": dict(self.cache), "encoder": enc}

    def load_state_dict(self, state: Mapping[str, Any], *, blobs: Mapping[str, Any] | None = None) -> None:
        """Restore :meth:`state_dict` output.

        Raises:
            ConfigurationError: If the state names an encoder that ``blobs`` lacks.
        """
        self.cache = dict(state.get("cache", {}))
        if state.get("encoder") is not None and self.encoder is not None:
            self.encoder.load_state_dict(resolve_blob(state["encoder"], blobs))
        self._pending.clear()
