"""Tests of fms_lightning/weightspace/cache.py."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fms_lightning.errors import ConfigurationError, IncompatibleWeightsError
from fms_lightning.weightspace import GraphCache, load_state_dict_file, parameter_graph, state_dict_hash
from tests.weightspace.zoo import ZOO_BY_NAME


def test_same_snapshot_is_converted_once() -> None:
    model = ZOO_BY_NAME["cnn"].build()
    cache = GraphCache()
    g = cache.get(model)
    assert cache.get(copy.deepcopy(model)) is g  # equal content, other object
    assert cache.get(model, {k: v.clone() for k, v in model.state_dict().items()}) is g
    assert (cache.hits, cache.misses, len(cache)) == (2, 1, 1)
    torch.testing.assert_close(g.edge_attr, parameter_graph(model).edge_attr)


def test_changed_weights_miss() -> None:
    model = ZOO_BY_NAME["mlp"].build()
    cache = GraphCache()
    g = cache.get(model)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["0.weight"][0, 0] += 1.0
    assert cache.get(model, sd) is not g
    assert cache.misses == 2


def test_options_are_part_of_the_key_and_lru_evicts() -> None:
    model = ZOO_BY_NAME["mlp"].build()
    a, b = GraphCache(max_kernel_size=4, max_entries=1), GraphCache()
    assert a.key(model) != b.key(model)
    a.get(model)
    a.get(ZOO_BY_NAME["mlp"].build(1))
    assert len(a) == 1
    with pytest.raises(ConfigurationError, match="max_entries"):
        GraphCache(max_entries=0)


def test_hash_depends_on_names_and_values() -> None:
    t = torch.arange(4.0)
    assert state_dict_hash({"a": t}) == state_dict_hash({"a": t.clone()})
    assert state_dict_hash({"a": t}) != state_dict_hash({"b": t})
    assert state_dict_hash({"a": t}) != state_dict_hash({"a": t + 1})
    assert state_dict_hash({"a": t}) != state_dict_hash({"a": t.reshape(2, 2)})


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "lightning"])
def test_load_state_dict_file(tmp_path: Path, fmt: str) -> None:
    model = nn.Linear(3, 2)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pt")
    if fmt == "safetensors":
        save_file(sd, str(path))
    else:
        torch.save({"state_dict": sd, "epoch": 3} if fmt == "lightning" else sd, path)
    loaded = load_state_dict_file(path)
    assert set(loaded) == set(sd)
    for k in sd:
        torch.testing.assert_close(loaded[k], sd[k])
    cache = GraphCache()
    assert cache.get(model, path) is cache.get(model, sd)


class _NotWeights:
    pass


def test_load_refuses_arbitrary_pickles(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"w": _NotWeights()}, path)
    with pytest.raises(IncompatibleWeightsError, match="weights_only"):
        load_state_dict_file(path)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(IncompatibleWeightsError, match="mapping"):
        load_state_dict_file(tmp_path / "list.pt")
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_state_dict_file(tmp_path / "missing.pt")


def test_cache_forwards_graph_options() -> None:
    entry = ZOO_BY_NAME["deepsets"]
    model = entry.build()
    cache = GraphCache(example_input=entry.example(), max_kernel_size=4)
    g = cache.get(model)
    assert g.max_kernel_size == 4
    assert g.num_param_elements == sum(p.numel() for p in model.parameters())
