"""Weight features trained in the loop: ξ(W) learned jointly with ψ and the kernel on eq. 3.

Glossary:
    W, G(W)     a snapshot's weights and its parameter graph (``graph_fn``).
    s           the snapshot's *slot*: in the trainable modes a row carries s in its single
                weight column instead of an embedding (row of y_{i,j}: the slot of W_{i,j-1}).
    h_v         the final GMN state of node v (eq. 6 before the mean), `(d,)`.
    μ, σ, P     per-channel mean and scale of h_v, and the whitened leading principal
                directions `(d, k)` of the standardised states, over every known snapshot under
                the initial (seeded) trunk; fixed when ψ is built from scratch. P keeps the
                per-step cost of the readout small (k = 32 instead of d = 256 per node).
    ξ(W)        ``mean_v LeakyReLU(A P^T (h_v - μ) / σ + b)``: one per-node layer, then the mean
                of eq. 6. It only sums over nodes, so it is permutation invariant like eq. 6.

Modes (:class:`GMNTraining`):
    frozen      ξ is a fixed random GMN's embedding (``weights.WeightFeaturizer``): the ablation.
    readout     the message-passing trunk stays at its seeded initialisation; its node states are
                computed once per snapshot and cached; A, b are trained with ψ and the kernel.
    full        the trunk is trained too, in the from-scratch fits (few rows, few graphs): each
                Adam step runs the GMN on ONE ``Batch`` of the distinct snapshots the rows
                reference, and gathers the result to the rows. After such a fit every snapshot is
                re-embedded with the trained trunk, and the warm-started refits train the readout
                on those cached node states.

The trainable module itself (:class:`GraphReadout`, :func:`node_scaler`) is in
``fms_lightning.surrogate.graph_readout``.

Cost (DESIGN.md "Performance stance"): each snapshot's graph is built once (keyed by its
content hash); node states are computed once per snapshot and trunk version, one graph at a
time, so that they do not depend on which other graphs were embedded with them (a resumed
study reproduces them bit for bit).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fms_lightning.errors import ConfigurationError, IncompatibleWeightsError
from fms_lightning.surrogate.graph_readout import GraphReadout, module_hash, node_scaler, segment_mean
from fms_lightning.surrogate.weights import GraphFn, content_key, load_weights, resolve_blob, stash_blob

__all__ = ["GMNTraining", "GraphReadout", "SnapshotFeaturizer", "segment_mean"]

_GRAPH_KEYS = ("x", "edge_index", "edge_attr")


class GMNTraining(str, Enum):
    """How much of the weight encoder is trained in the loop (see the module docstring)."""

    FROZEN = "frozen"
    READOUT = "readout"
    FULL = "full"


class SnapshotFeaturizer:
    """Slots, graphs and cached node states of snapshots, for the trainable GMN modes.

    The rows' weight column holds a snapshot's slot (``cache[key]``); the
    :class:`GraphReadout` inside ψ maps slots to ξ(W) with this featurizer as its bank.

    Args:
        encoder: A ``weightspace.GMNEncoder`` (anything with ``node_states(Batch) -> (N, d)``
            and ``out_dim``): the seeded initial trunk. It is never modified; the ``"full"``
            mode trains a copy inside ψ.
        graph_fn: ``graph_fn(config, state_dict) -> Data``.
        mode: ``"readout"`` or ``"full"``.
        readout_dim: Width of ξ (the per-node layer's output).
        components: ``k``, the principal directions of the node states the readout reads.
        max_trunk_graphs: A from-scratch fit whose rows reference more distinct snapshots
            than this trains only the readout (the trunk's cost grows with the graphs per step).

    Raises:
        ConfigurationError: For ``mode="frozen"``, an encoder without ``node_states``, or a
            non-positive width.
    """

    out_dim = 1  # width of the rows' weight columns: the slot

    def __init__(
        self,
        encoder: nn.Module,
        graph_fn: GraphFn,
        *,
        mode: GMNTraining | str = GMNTraining.READOUT,
        readout_dim: int = 32,
        components: int = 32,
        max_trunk_graphs: int = 64,
    ) -> None:
        self.mode = GMNTraining(mode)
        if self.mode is GMNTraining.FROZEN:
            raise ConfigurationError("SnapshotFeaturizer serves gmn_training='readout' or 'full'; "
                                     "use WeightFeaturizer for 'frozen'.")
        if not callable(getattr(encoder, "node_states", None)) or not isinstance(getattr(encoder, "out_dim", None), int):
            raise ConfigurationError(
                f"gmn_training={self.mode.value!r} needs an encoder with node_states(batch) and out_dim "
                f"(weightspace.GMNEncoder); got {type(encoder).__name__}. Use gmn_training='frozen' for it."
            )
        if readout_dim < 1 or components < 1 or max_trunk_graphs < 0:
            raise ConfigurationError(
                f"SnapshotFeaturizer received readout_dim={readout_dim}, components={components}, "
                f"max_trunk_graphs={max_trunk_graphs}; expected positive widths and max_trunk_graphs >= 0."
            )
        if not callable(graph_fn):
            raise ConfigurationError(f"graph_fn={graph_fn!r} is not callable; expected graph_fn(config, state_dict).")
        self.encoder = encoder.eval().requires_grad_(False)
        self.graph_fn = graph_fn
        self.readout_dim = int(readout_dim)
        self.components = int(components)
        self.max_trunk_graphs = int(max_trunk_graphs)
        self.node_dim = int(encoder.out_dim)
        self.keys: list[str] = []  # slot -> content key
        self.cache: dict[str, Tensor] = {}  # content key -> the rows' weight column, `(1,)`
        self.graphs: list[Any] = []  # slot -> minimal graph (None until flushed)
        self._paths: dict[int, tuple[dict[str, Any], str]] = {}  # slots read from a file: (config, path)
        self._pending: dict[int, tuple[dict[str, Any], dict[str, Tensor] | str]] = {}
        self._states: OrderedDict[str, dict[int, Tensor]] = OrderedDict()  # trunk tag -> slot -> node states
        self._frozen_tag = module_hash(self.encoder)
        self.trunk_enabled = True  # the optimizer's schedule: whether the next from-scratch fit may train the trunk

    # -- snapshots -----------------------------------------------------------------
    def add(self, config: Mapping[str, Any], weights: Mapping[str, Tensor] | str | Path) -> str:
        """Register a snapshot and give it a slot; returns its content key (graph built at :meth:`flush`)."""
        sd = load_weights(weights)
        key = content_key(sd)
        if key not in self.cache:
            slot = len(self.keys)
            self.keys.append(key)
            self.graphs.append(None)
            self.cache[key] = torch.tensor([float(slot)], dtype=torch.float64)
            self._pending[slot] = (dict(config), sd)
            if isinstance(weights, (str, Path)):
                self._paths[slot] = (dict(config), str(weights))
        return key

    def flush(self) -> None:
        """Build the parameter graph of every pending snapshot (once per snapshot).

        Raises:
            IncompatibleWeightsError: If a snapshot file named in a loaded state changed.
        """
        for slot, (cfg, sd) in list(self._pending.items()):
            if isinstance(sd, str):  # restored from a state: read the file again and check it
                sd = load_weights(sd)
                if content_key(sd) != self.keys[slot]:
                    raise IncompatibleWeightsError(
                        f"The snapshot file {self._paths[slot][1]!r} changed since it was observed (content "
                        f"hash differs); the trained GMN cannot rebuild its graph. Restore the file, or resume "
                        f"with gmn_training='frozen'."
                    )
            self.graphs[slot] = _minimal(self.graph_fn(cfg, sd))
            del self._pending[slot]

    def __getitem__(self, key: str) -> Tensor:
        return self.cache[key]

    def batch(self, slots: Sequence[int]) -> Any:
        """One torch_geometric ``Batch`` of the graphs of ``slots``, in that order."""
        from torch_geometric.data import Batch

        self.flush()
        return Batch.from_data_list([self.graphs[s] for s in slots])

    # -- node states -----------------------------------------------------------------
    @torch.no_grad()
    def node_states(self, slots: Sequence[int], trunk: nn.Module | None = None, tag: str | None = None) -> list[Tensor]:
        """Node states `(n_v, d)` of each slot under ``trunk`` (default: the initial encoder).

        Computed once per (slot, trunk version ``tag``), one graph at a time.
        """
        if trunk is None or tag is None or tag == self._frozen_tag:
            trunk, tag = self.encoder, self._frozen_tag
        self.flush()
        store = self._states.get(tag)
        if store is None:
            store = self._states[tag] = {}
            while len(self._states) > 2:  # the frozen trunk's states and the latest trained trunk's
                old = next(k for k in self._states if k != self._frozen_tag)
                del self._states[old]
        was_training = trunk.training
        trunk.eval()
        try:
            for s in slots:
                if s not in store:
                    store[s] = trunk.node_states(self.graphs[s]).detach().clone()
        finally:
            trunk.train(was_training)
        return [store[s] for s in slots]

    def scaler(self) -> tuple[Tensor, Tensor, Tensor]:
        """μ, σ, P of the initial trunk's node states over every known snapshot (:func:`node_scaler`)."""
        states = self.node_states(range(len(self.keys)))
        h = torch.cat(states) if states else torch.zeros(0, self.node_dim)
        return node_scaler(h, self.components)

    def make_module(self) -> GraphReadout:
        """A fresh :class:`GraphReadout` reading this bank (``"full"``: with a trainable copy of the trunk)."""
        trunk = copy.deepcopy(self.encoder).requires_grad_(True) if self.mode is GMNTraining.FULL else None
        module = GraphReadout(self, self.node_dim, self.readout_dim, components=self.components, trunk=trunk)
        module.set_scaler(*self.scaler())
        return module

    def trains_trunk(self, n_graphs: int) -> bool:
        """Whether a from-scratch fit over rows referencing ``n_graphs`` distinct snapshots trains the trunk."""
        return self.mode is GMNTraining.FULL and self.trunk_enabled and n_graphs <= self.max_trunk_graphs

    # -- state -----------------------------------------------------------------------
    def state_dict(self, *, blobs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Plain tensors and values: slots, the encoder, and per snapshot its file path (when it
        was observed as a file) or its graph (wirings stored once).

        Args:
            blobs: If given, the parts that never change once made (each graph, each wiring,
                the encoder's parameters) are put into it under content keys (``graph/<snapshot
                key>``, ``wiring/<signature>``, ``encoder/<hash>``), and the state names them
                instead of holding them: a caller that stores each key once saves a state that
                does not grow with the graphs. :meth:`load_state_dict` takes the same mapping back.
        """
        self.flush()
        wirings: dict[str, Tensor] = {}
        graphs: list[dict[str, Any]] = []
        for slot, g in enumerate(self.graphs):
            if slot in self._paths:
                cfg, path = self._paths[slot]
                graphs.append({"path": path, "config": cfg})
                continue
            sig = g.signature if isinstance(getattr(g, "signature", None), str) else None
            entry = {"x": g.x, "edge_attr": g.edge_attr, "num_nodes": int(g.num_nodes), "signature": sig}
            if sig is None:
                entry["edge_index"] = g.edge_index
            elif blobs is None:
                wirings.setdefault(sig, g.edge_index)
            else:
                blobs.setdefault(f"wiring/{sig}", g.edge_index)
            graphs.append(stash_blob(entry, f"graph/{self.keys[slot]}", blobs))
        encoder = stash_blob(self.encoder.state_dict(), f"encoder/{self._frozen_tag}", blobs)
        return {"mode": self.mode.value, "keys": list(self.keys), "graphs": graphs, "wirings": wirings,
                "encoder": encoder}

    def load_state_dict(self, state: Mapping[str, Any], *, blobs: Mapping[str, Any] | None = None) -> None:
        """Restore :meth:`state_dict` output (node states are recomputed on demand, identically).

        Args:
            state: The state.
            blobs: The parts the state names by key (``state_dict(blobs=...)``).

        Raises:
            ConfigurationError: If the state names a part that ``blobs`` lacks.
        """
        from torch_geometric.data import Data

        if state.get("encoder") is not None:
            self.load_encoder(resolve_blob(state["encoder"], blobs))
        self.keys = list(state.get("keys", []))
        self.cache = {k: torch.tensor([float(s)], dtype=torch.float64) for s, k in enumerate(self.keys)}
        wirings = state.get("wirings", {})
        self.graphs = []
        self._paths.clear()
        self._pending.clear()
        for slot, e in enumerate(state.get("graphs", [])):
            if "path" in e:  # rebuilt from the file at the next flush
                self._paths[slot] = (dict(e["config"]), str(e["path"]))
                self._pending[slot] = (dict(e["config"]), str(e["path"]))
                self.graphs.append(None)
                continue
            e = resolve_blob(e, blobs)
            sig = e.get("signature")
            if sig is None:
                ei = e["edge_index"]
            else:
                ei = wirings[sig] if sig in wirings else resolve_blob({"blob": f"wiring/{sig}"}, blobs)
            g = Data(x=e["x"], edge_index=ei, edge_attr=e["edge_attr"], num_nodes=int(e["num_nodes"]))
            if sig is not None:
                g.signature = sig
            self.graphs.append(g)
        self._states.clear()

    def load_encoder(self, params: Mapping[str, Tensor]) -> None:
        """Replace the initial trunk's parameters (node states of the old trunk are dropped)."""
        self.encoder.load_state_dict(params)
        self._frozen_tag = module_hash(self.encoder)
        self._states.clear()


def _minimal(graph: Any) -> Any:
    """Only what the GMN reads (features, wiring, signature): smaller to cache and to save."""
    from torch_geometric.data import Data

    g = Data(**{k: getattr(graph, k) for k in _GRAPH_KEYS}, num_nodes=int(graph.num_nodes))
    sig = getattr(graph, "signature", None)
    if isinstance(sig, str):
        g.signature = sig
    return g
