"""A tiny stand-in weight encoder for tests: one node per graph, its features = a weight vector."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch_geometric.data import Data


def vector_graph(config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> Data:
    return Data(x=state_dict["w"].reshape(1, -1).float(), num_nodes=1)


class IdentityEncoder(nn.Module):
    """``forward(Batch) -> (num_graphs, out_dim)``: the single node's features."""

    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.calls = 0

    def forward(self, batch: Any) -> torch.Tensor:
        self.calls += 1
        return batch.x.reshape(batch.num_graphs, self.out_dim)
