"""FMS-NFN: a permutation-equivariant neural functional over the weights of one chain architecture.

Implements the NP layers of Zhou et al., *Permutation Equivariant Neural Functionals*
(NeurIPS 2023), an invariant pooling and a learnable MLP readout, for MLPs and plain
CNNs (:mod:`fms_lightning.weightspace._chain` defines their weight space).

Glossary (Zhou et al. 2023, §2-3; blocks are batched over ``B`` networks):
    L            number of layers; layer ``i`` maps neuron set ``N_{i-1}`` to ``N_i``.
    n_l          ``|N_l|``: ``n_0`` inputs, ``n_L`` outputs, ``n_1 .. n_{L-1}`` hidden neurons/channels.
    W^(i)        `(B, n_i, n_{i-1}, c)` weight features of layer ``i`` (row ``j`` in ``N_i``, column ``k``
                 in ``N_{i-1}``).
    b^(i)        `(B, n_i, c)` bias features of layer ``i``.
    z_l          `(B, n_l, .)` summary of ``N_l``: row mean of ``W^(l)``, column mean of ``W^(l+1)``, ``b^(l)``.
    g            `(B, .)` global summary: each block's mean over its neuron axes.
    e_in, e_out  learned encodings of the input and output neurons (IO encoding).
    sigma        leaky ReLU, applied channel-wise.
    xi           the embedding: pooled blocks of the last NP layer, then an MLP.

NP layer (equivariant to permuting every ``N_l`` independently)::

    W'^(i)_{jk} = W^(i)_{jk} A_i + z_{i,j} R_i + z_{i-1,k} C_i + g G_i + beta_i
    b'^(i)_j    = z_{i,j} E_i + g H_i + gamma_i

Written out, ``W'^(i)_{jk}`` mixes ``W^(i)_{jk}``, the row and column means of ``W^(i)``,
the row mean of ``W^(i-1)`` at ``k`` and the column mean of ``W^(i+1)`` at ``j`` (the
adjacent layers sharing ``N_{i-1}`` and ``N_i``), ``b^(i)_j``, ``b^(i-1)_k`` and the global
means: the terms of Zhou et al.'s NP layer, with means in place of sums so that widths
do not change the scale. ``b'^(i)_j`` mixes ``b^(i)_j``, the row mean of ``W^(i)`` and the
column mean of ``W^(i+1)`` at ``j``, and the global means.

Symmetry: Zhou et al. name the layer equivariant to *all* neuron permutations NP, and the
one equivariant to hidden permutations only HNP. A network's true symmetry permutes hidden
neurons only. As in their NFN_NP, the encoder uses NP layers and breaks the extra symmetry
of the inputs and outputs with learned encodings ``e_in``/``e_out`` concatenated to the
channels of ``W^(1)`` (per column), ``W^(L)`` and ``b^(L)`` (per row). The embedding is then
invariant to hidden permutations, and still tells inputs (and classes) apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data

from fms_lightning.errors import ConfigurationError, IncompatibleWeightsError
from fms_lightning.weightspace._chain import ChainSpec, chain_from_module, chain_from_state_dict
from fms_lightning.weightspace.encoders import _leaky_mlp

__all__ = ["NFNEncoder", "NPLayer", "neuron_summaries", "global_summary", "invariant_pool", "io_encode"]

Blocks = tuple[list[Tensor], list[Tensor]]


def neuron_summaries(ws: Sequence[Tensor], bs: Sequence[Tensor]) -> list[Tensor]:
    """``z_0 .. z_L``: per-neuron summaries of each neuron set (equivariant).

    Args:
        ws: ``W^(1) .. W^(L)``, `(B, n_i, n_{i-1}, c_i)`.
        bs: ``b^(1) .. b^(L)``, `(B, n_i, cb_i)`.

    Returns:
        ``L + 1`` tensors; ``z_l`` is `(B, n_l, [c_l] + [c_{l+1}] + [cb_l])`, the row mean of
        ``W^(l)`` (if ``l >= 1``), the column mean of ``W^(l+1)`` (if ``l < L``) and ``b^(l)`` (if ``l >= 1``).
    """
    out = []
    for level in range(len(ws) + 1):
        parts = []
        if level >= 1:
            parts.append(ws[level - 1].mean(dim=2))
        if level < len(ws):
            parts.append(ws[level].mean(dim=1))
        if level >= 1:
            parts.append(bs[level - 1])
        out.append(torch.cat(parts, dim=-1))
    return out


def global_summary(ws: Sequence[Tensor], bs: Sequence[Tensor]) -> Tensor:
    """``g``: every block averaged over its neuron axes (invariant), `(B, sum_i c_i + sum_i cb_i)`."""
    return torch.cat([w.mean(dim=(1, 2)) for w in ws] + [b.mean(dim=1) for b in bs], dim=-1)


def invariant_pool(ws: Sequence[Tensor], bs: Sequence[Tensor]) -> Tensor:
    """Mean of each block over its neuron axes, concatenated per layer: `(B, L * (d_w + d_b))`.

    Invariant to permutations of every ``N_l``; after the IO encoding only hidden
    permutations leave the whole encoder unchanged.
    """
    return torch.cat([t for w, b in zip(ws, bs) for t in (w.mean(dim=(1, 2)), b.mean(dim=1))], dim=-1)


def io_encode(ws: Sequence[Tensor], bs: Sequence[Tensor], e_in: Tensor, e_out: Tensor) -> Blocks:
    """IO encoding: ``e_in`` `(n_0, p)` joins the channels of ``W^(1)`` per column; ``e_out`` `(n_L, p)`
    those of ``W^(L)`` and ``b^(L)`` per row.

    Returns:
        New lists; ``W^(1)`` and ``W^(L)`` gain ``p`` channels each (``2 p`` when ``L = 1``), ``b^(L)`` ``p``.
    """
    ws, bs = list(ws), list(bs)
    w = ws[0]
    ws[0] = torch.cat([w, e_in.to(w.dtype)[None, None].expand(w.shape[0], w.shape[1], -1, -1)], dim=-1)
    w, b = ws[-1], bs[-1]
    ws[-1] = torch.cat([w, e_out.to(w.dtype)[None, :, None].expand(w.shape[0], -1, w.shape[2], -1)], dim=-1)
    bs[-1] = torch.cat([b, e_out.to(b.dtype)[None].expand(b.shape[0], -1, -1)], dim=-1)
    return ws, bs


class NPLayer(nn.Module):
    """One NP layer (module docstring): blocks with per-layer input channels -> ``out_channels`` each.

    Args:
        w_channels: ``c_i`` of ``W^(1) .. W^(L)``.
        b_channels: ``cb_i`` of ``b^(1) .. b^(L)``.
        out_channels: ``d``, the channels of every output block.
    """

    def __init__(self, w_channels: Sequence[int], b_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        n = len(w_channels)
        if n < 1 or len(b_channels) != n or out_channels < 1:
            raise ConfigurationError(f"NPLayer needs L >= 1 layers and d >= 1, got {list(w_channels)}, "
                                     f"{list(b_channels)}, d={out_channels}.")
        zc = [(w_channels[lv - 1] + b_channels[lv - 1] if lv >= 1 else 0) + (w_channels[lv] if lv < n else 0)
              for lv in range(n + 1)]
        d = int(out_channels)
        self.w_self = nn.ModuleList(nn.Linear(c, d, bias=False) for c in w_channels)  # A_i
        # one map per neuron set N_l, for the terms that read z_l: [R_l, E_l] (l >= 1), then C_{l+1} (l < L)
        self.z_lin = nn.ModuleList(
            nn.Linear(zc[lv], d * ((2 if lv >= 1 else 0) + (1 if lv < n else 0)), bias=False) for lv in range(n + 1)
        )
        # one map for every global term: [G_1, H_1, ..., G_L, H_L], its bias [beta_1, gamma_1, ...]
        self.g_lin = nn.Linear(sum(w_channels) + sum(b_channels), 2 * n * d)
        self.out_channels = d

    def forward(self, ws: Sequence[Tensor], bs: Sequence[Tensor]) -> Blocks:
        """Args: ``ws`` `(B, n_i, n_{i-1}, c_i)`, ``bs`` `(B, n_i, cb_i)`.
        Returns: the same shapes with ``d`` channels."""
        d = self.out_channels
        z = [lin(t) for lin, t in zip(self.z_lin, neuron_summaries(ws, bs))]  # `(B, n_l, k_l d)`
        g = self.g_lin(global_summary(ws, bs)).unflatten(-1, (2 * len(ws), d))  # `(B, 2 L, d)`
        out_w, out_b = [], []
        for i, w in enumerate(ws):  # W^(i+1): rows N_{i+1}, columns N_i
            rows, cols = z[i + 1], z[i]
            y = self.w_self[i](w)  # fresh output of a Linear: safe to add into in place
            y += (rows[..., :d] + g[:, 2 * i, None]).unsqueeze(2)  # z_{i,j} R_i + g G_i + beta_i
            y += cols[..., -d:].unsqueeze(1)  # z_{i-1,k} C_i
            out_w.append(y)
            out_b.append(rows[..., d : 2 * d] + g[:, 2 * i + 1, None])  # z_{i,j} E_i + g H_i + gamma_i
        return out_w, out_b


class NFNEncoder(nn.Module):
    """FMS-NFN weight encoder: IO encoding, NP layers, invariant pooling and an MLP readout.

    Reads networks of the reference's architecture only (an MLP or plain CNN: see
    :mod:`~fms_lightning.weightspace._chain`). Its inputs are built by :meth:`inputs` (or
    :meth:`graph_fn`, the ``graph_fn(config, state_dict)`` of the surrogate's weight
    featurizers): one torch_geometric ``Data`` per network whose ``x`` `(1, P)` holds the
    packed weight space, so that ``Batch.from_data_list`` stacks networks and the caches
    of :mod:`fms_lightning.surrogate` (keyed by the snapshot's content hash) apply unchanged.

    Args:
        reference: the architecture: a module (its chain is verified by tracing), a state
            dict (the chain is inferred from key order and shapes), or a ``ChainSpec``.
        hidden: ``d`` of each NP layer.
        readout: hidden widths of the MLP on the pooled features.
        out_dim: width of ``xi``.
        io_dim: ``p``, width of the input/output encodings (0: none, the NP symmetry is kept
            on inputs and outputs too).
        negative_slope: leaky-ReLU slope.

    Raises:
        ConfigurationError: if ``reference`` is not such a chain (naming the first layer that
            breaks it), or for non-positive widths.

    >>> mlp = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    >>> enc = NFNEncoder(mlp, out_dim=8)
    >>> enc([mlp, mlp.state_dict()]).shape
    torch.Size([2, 8])
    """

    def __init__(
        self,
        reference: nn.Module | Mapping[str, Tensor] | ChainSpec,
        *,
        hidden: Sequence[int] = (32, 32, 32),
        readout: Sequence[int] = (64,),
        out_dim: int = 64,
        io_dim: int = 4,
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        hidden, readout = tuple(int(h) for h in hidden), tuple(int(h) for h in readout)
        if not hidden or min(hidden + readout + (out_dim,)) < 1 or io_dim < 0:
            raise ConfigurationError(f"NFNEncoder needs positive widths, got hidden={hidden}, readout={readout}, "
                                     f"out_dim={out_dim}, io_dim={io_dim}. Use e.g. hidden=(32, 32, 32).")
        if isinstance(reference, ChainSpec):
            self.spec = reference
        elif isinstance(reference, nn.Module):
            self.spec = chain_from_module(reference)
        else:
            self.spec = chain_from_state_dict(reference)
        layers = self.spec.layers
        self.signature = self.spec.signature
        self.negative_slope = float(negative_slope)
        self.io_dim = int(io_dim)
        wc, bc = [ly.channels for ly in layers], [ly.bias_channels for ly in layers]
        if io_dim:
            self.e_in = nn.Parameter(torch.randn(layers[0].n_in, io_dim))
            self.e_out = nn.Parameter(torch.randn(layers[-1].n_out, io_dim))
            wc[0] += io_dim
            wc[-1] += io_dim
            bc[-1] += io_dim
        self.layers = nn.ModuleList()
        for d in hidden:
            self.layers.append(NPLayer(wc, bc, d))
            wc, bc = [d] * len(layers), [d] * len(layers)
        self.readout = _leaky_mlp((2 * len(layers) * hidden[-1], *readout, int(out_dim)), negative_slope)
        self.out_dim = int(out_dim)

    # -- inputs ---------------------------------------------------------------------------
    def inputs(self, weights: nn.Module | Mapping[str, Tensor], *, dtype: torch.dtype = torch.float32) -> Data:
        """One network's input: ``Data(x=(1, P), num_nodes=1)`` with the architecture's ``signature``.

        Raises:
            ConfigurationError: if ``weights`` has another architecture (naming the first differing parameter).
        """
        sd = weights.state_dict() if isinstance(weights, nn.Module) else weights
        data = Data(x=self.spec.pack(sd, dtype=dtype).unsqueeze(0), num_nodes=1)
        data.signature = self.signature
        return data

    def graph_fn(self, config: Mapping[str, Any], state_dict: Mapping[str, Tensor]) -> Data:
        """``graph_fn(config, state_dict)`` for the surrogate's featurizers (``config`` is not needed)."""
        return self.inputs(state_dict)

    def _packed(self, data: Any) -> Tensor:
        """`(B, P)` packed weight spaces of a ``Data``/``Batch``, a module, a state dict, or a sequence of them."""
        if isinstance(data, Data) or hasattr(data, "num_graphs"):
            x, sigs = data.x, getattr(data, "signature", None)
            sigs = [sigs] if isinstance(sigs, str) or sigs is None else list(sigs)
            bad = [s for s in sigs if s != self.signature]
            if x is None or x.dim() != 2 or x.shape[1] != self.spec.numel or bad:
                raise IncompatibleWeightsError(
                    f"NFNEncoder reads inputs of width {self.spec.numel} with signature {self.signature[:8]}, got "
                    f"x of shape {None if x is None else tuple(x.shape)} and signature {str((bad or sigs)[0])[:8]}. "
                    "Build them with encoder.inputs(state_dict) (graph_fn=encoder.graph_fn), not parameter_graph."
                )
            return x
        items = [data] if isinstance(data, (nn.Module, Mapping)) else list(data)
        rows = []
        for i, item in enumerate(items):
            if isinstance(item, Data):
                rows.append(self._packed(item)[0])
                continue
            sd = item.state_dict() if isinstance(item, nn.Module) else item
            self.spec.check(sd, what=f"network #{i} of the batch")
            rows.append(self.spec.pack(sd, dtype=torch.float64))
        return torch.stack(rows)

    # -- embedding ------------------------------------------------------------------------
    def forward(self, data: Any) -> Tensor:
        """Embed networks of the reference architecture.

        Args:
            data: a ``Data`` from :meth:`inputs` or a ``Batch`` of them; or a module, a state
                dict, or a sequence of modules / state dicts.

        Returns:
            ``xi``, `(B, out_dim)` in the dtype of the encoder's parameters.

        Raises:
            ConfigurationError: if a network has another architecture (naming the parameter).
            IncompatibleWeightsError: for a ``Data`` not built by :meth:`inputs` of this architecture.
        """
        dtype = self.readout[0].weight.dtype
        ws, bs = self.spec.unpack(self._packed(data).to(dtype))
        if self.io_dim:
            ws, bs = io_encode(ws, bs, self.e_in, self.e_out)
        for layer in self.layers:
            ws, bs = layer(ws, bs)
            ws = [F.leaky_relu(w, self.negative_slope) for w in ws]
            bs = [F.leaky_relu(b, self.negative_slope) for b in bs]
        return self.readout(invariant_pool(ws, bs))

    def node_states(self, data: Any) -> Tensor:
        """``forward(data)``, one row per network: each network is a single "node" of its input.

        With it the encoder serves the surrogate's trainable modes (``gmn_training="readout"``:
        this frozen encoder plus a trained readout; ``"full"``: trained end to end).
        """
        return self.forward(data)

    def extra_repr(self) -> str:
        sizes = [self.spec.layers[0].n_in] + [ly.n_out for ly in self.spec.layers]
        return f"neurons={sizes}, out_dim={self.out_dim}"
