"""Contract tests every weight-space encoder inherits, run over the whole zoo.

A subclass provides ``make_encoder(reference_graph)`` and sets
``permutation_invariant``; the mixin checks invariance (or its absence),
sensitivity and batching on every architecture of ``tests/weightspace/zoo.py``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data

from fms_lightning.weightspace import parameter_graph
from tests.weightspace.zoo import ZOO, ZooEntry


def graph_of(entry: ZooEntry, model: nn.Module) -> Data:
    return parameter_graph(model, example_input=entry.example() if entry.needs_example else None)


@pytest.fixture(params=ZOO, ids=[e.name for e in ZOO])
def entry(request: pytest.FixtureRequest) -> ZooEntry:
    return request.param


class EncoderContract:
    """Shared properties of graph encoders; subclasses define ``make_encoder``."""

    permutation_invariant = True

    def make_encoder(self, reference: Data) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def _embed(self, enc: nn.Module, graph: Data) -> torch.Tensor:
        with torch.no_grad():
            return enc(graph)

    def test_output_shape(self, entry: ZooEntry) -> None:
        g = graph_of(entry, entry.build())
        torch.manual_seed(0)
        enc = self.make_encoder(g).double()
        out = self._embed(enc, g)
        assert out.shape == (1, enc.out_dim)
        assert out.dtype == torch.float64
        assert torch.isfinite(out).all()

    def test_permutation_invariance(self, entry: ZooEntry) -> None:
        model = entry.build()
        perm = entry.permuted(model)
        x = entry.example()
        with torch.no_grad():
            torch.testing.assert_close(model(x), perm(x), atol=1e-5, rtol=1e-5)  # same function
        g, gp = graph_of(entry, model), graph_of(entry, perm)
        torch.manual_seed(0)
        enc = self.make_encoder(g).double()
        a, b = self._embed(enc, g), self._embed(enc, gp)
        if self.permutation_invariant:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
        else:
            assert not torch.allclose(a, b, atol=1e-6, rtol=0)

    @pytest.mark.parametrize("edit", ["rescale", "perturb"])
    def test_sensitivity(self, entry: ZooEntry, edit: str) -> None:
        model = entry.build()
        changed = entry.build()
        first = max((p for p in changed.parameters() if p.ndim >= 2), key=lambda p: p.numel())
        with torch.no_grad():
            if edit == "rescale":
                first.mul_(2.0)
            else:
                first.add_(0.1 * torch.randn(first.shape, generator=torch.Generator().manual_seed(1)))
            x = entry.example()
            assert not torch.allclose(model(x), changed(x))  # the edit changes the function
        g, gc = graph_of(entry, model), graph_of(entry, changed)
        torch.manual_seed(0)
        enc = self.make_encoder(g).double()
        a, b = self._embed(enc, g), self._embed(enc, gc)
        assert (a - b).abs().max() > 1e-6

    def test_batch_matches_single_graphs(self, entry: ZooEntry) -> None:
        g1, g2 = graph_of(entry, entry.build(0)), graph_of(entry, entry.build(1))
        torch.manual_seed(0)
        enc = self.make_encoder(g1).double()
        batched = self._embed(enc, Batch.from_data_list([g1, g2]))
        single = torch.cat([self._embed(enc, g1), self._embed(enc, g2)])
        torch.testing.assert_close(batched, single, atol=1e-9, rtol=1e-9)
