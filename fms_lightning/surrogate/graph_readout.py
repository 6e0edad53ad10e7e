"""ψ's trainable weight module: slots of snapshots to ξ(W), and the statistics it is whitened with.

:class:`GraphReadout` is the per-node layer and mean of eq. 6 described in
``fms_lightning.surrogate.readout`` (glossary there); its bank of graphs and node states
is a :class:`~fms_lightning.surrogate.readout.SnapshotFeaturizer`, which builds it
(``make_module``) and fixes μ, σ, P with :func:`node_scaler`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from fms_lightning.surrogate.readout import SnapshotFeaturizer

__all__ = ["GraphReadout", "module_hash", "node_scaler", "segment_mean"]


def segment_mean(values: Tensor, segment: Tensor, n_segments: int) -> Tensor:
    """Mean of the rows of ``values`` `(N, d)` per segment id `(N,)`; returns `(n_segments, d)`."""
    out = values.new_zeros(n_segments, values.shape[1]).index_add_(0, segment, values)
    counts = torch.bincount(segment, minlength=n_segments).clamp_min(1).to(values.dtype)
    return out / counts.unsqueeze(1)


def node_scaler(h: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """μ, σ `(d,)` and a whitening projection P `(d, k)` of node states `(N, d)`.

    σ is floored like ``gp.weight_scaler``. P holds the ``k`` leading right singular vectors
    of the standardised states, each divided by its component's standard deviation (floored
    at 1e-3 of the largest); with fewer than ``k`` states or channels the rest is zero.
    """
    h = h.to(torch.float64)
    d = h.shape[1]
    proj = torch.zeros(d, k, dtype=torch.float64)
    if h.shape[0] == 0:
        proj[: min(d, k), : min(d, k)] = torch.eye(min(d, k), dtype=torch.float64)
        return torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64), proj
    mean = h.mean(0)
    overall = float((h - mean).std()) if h.numel() > 1 else 0.0
    floor = 0.1 * overall if overall > 1e-12 else 1.0
    col = h.std(0).nan_to_num(0.0) if h.shape[0] > 1 else torch.zeros_like(mean)
    scale = col.clamp_min(floor)
    z = (h - mean) / scale
    _, sv, vh = torch.linalg.svd(z, full_matrices=False)
    comp_std = sv / max(h.shape[0] - 1, 1) ** 0.5
    m = min(k, vh.shape[0])
    top = float(comp_std[0]) if comp_std.numel() and float(comp_std[0]) > 1e-12 else 1.0
    proj[:, :m] = vh[:m].t() / comp_std[:m].clamp_min(1e-3 * top).unsqueeze(0)
    return mean, scale, proj


class GraphReadout(nn.Module):
    """Slots of snapshots -> ξ(W) `(n, out_dim)`: a trainable per-node layer and a mean over nodes.

    Lives inside ψ (``FeatureExtractor``), so it is (re)initialised, trained on eq. 3 and
    saved with ψ. Its bank is a :class:`SnapshotFeaturizer`. Call :meth:`prepare` after the
    trunk's parameters changed (a fit, a load) and before a fit that trains the trunk.

    Args:
        source: The bank of graphs and node states.
        node_dim: Width ``d`` of the node states.
        out_dim: Width of ξ.
        components: ``k``, the width of the projected node states.
        trunk: A trainable GMN trunk (mode ``"full"``), kept in its own dtype; or None.
        negative_slope: Leaky-ReLU slope.
    """

    def __init__(
        self, source: SnapshotFeaturizer, node_dim: int, out_dim: int, *, components: int = 32,
        trunk: nn.Module | None = None, negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        self.lin = nn.Linear(components, out_dim)
        self.trunk = trunk
        self.register_buffer("mu", torch.zeros(node_dim))
        self.register_buffer("sigma", torch.ones(node_dim))
        self.register_buffer("proj", torch.zeros(node_dim, components))
        self.out_dim = int(out_dim)
        self.negative_slope = float(negative_slope)
        self.source = source
        self.train_trunk = False
        self._trunk_dtype = None if trunk is None else next(trunk.parameters()).dtype
        self._tag: str | None = None
        self._memo: tuple[tuple[int, ...], Any, Tensor] | None = None

    def set_scaler(self, mean: Tensor, scale: Tensor, proj: Tensor) -> None:
        """Fix μ, σ and P (in place, so they follow the module's dtype)."""
        with torch.no_grad():
            self.mu.copy_(mean)
            self.sigma.copy_(scale)
            self.proj.copy_(proj)
        self._memo = None

    def prepare(self, *, train_trunk: bool) -> None:
        """Choose whether forward runs the trunk on graphs (trained) or reads cached node states."""
        self.train_trunk = bool(train_trunk and self.trunk is not None)
        self._tag = None if self.trunk is None else module_hash(self.trunk)
        self._memo = None

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> GraphReadout:
        super()._apply(fn, *args, **kwargs)
        if self.trunk is not None and self._trunk_dtype is not None:  # ψ is float64; the GMN stays in its dtype
            self.trunk.to(self._trunk_dtype)
        return self

    def forward(self, weight_columns: Tensor) -> Tensor:
        """Map the rows' slot column `(n, 1)` to ξ `(n, out_dim)`; each distinct slot is embedded once."""
        slots = weight_columns[:, 0].round().long()
        uniq, inv = torch.unique(slots, return_inverse=True)
        key = tuple(uniq.tolist())
        dtype = self.lin.weight.dtype
        if self.train_trunk:
            if self._memo is None or self._memo[0] != key:
                batch = self.source.batch(key)
                self._memo = (key, batch, batch.batch)
            _, batch, segment = self._memo
            h = self._project(self.trunk.node_states(batch).to(dtype))  # type: ignore[union-attr]
        else:
            if self._memo is None or self._memo[0] != key:
                states = self.source.node_states(key, self.trunk, self._tag)
                counts = torch.tensor([s.shape[0] for s in states])
                h0 = self._project(torch.cat(states).to(dtype))
                self._memo = (key, h0, torch.repeat_interleave(torch.arange(len(key)), counts))
            _, h, segment = self._memo
        z = F.leaky_relu(self.lin(h), self.negative_slope)
        return segment_mean(z, segment, len(key))[inv]


    def _project(self, h: Tensor) -> Tensor:
        """``P^T (h_v - μ) / σ`` for node states `(N, d)`; returns `(N, k)`."""
        return ((h - self.mu) / self.sigma) @ self.proj


def module_hash(module: nn.Module) -> str:
    from fms_lightning.weightspace import state_dict_hash

    return state_dict_hash(module.state_dict())
