from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fms_lightning import Choice, IntUniform, LogUniform, SearchSpace, Uniform
from fms_lightning.errors import ConfigurationError, SearchSpaceError
from fms_lightning.space import HubChoice

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "search_space_a4.yaml"


def _space() -> SearchSpace:
    return SearchSpace(
        {
            "model": HubChoice(["a", "b", "c"]),
            "lr": LogUniform(1e-4, 1e-1),
            "dropout": Uniform(0.0, 1.0),
            "layers": IntUniform(1, 8),
            "width": IntUniform(8, 512, log=True),
            "bs": Choice([16, 32, 64]),
        }
    )


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"lr": {"type": "log_uniform", "low": 0.0, "high": 1.0}}, "'lr'.*<= 0"),
        ({"lr": {"type": "log_uniform", "low": -1.0, "high": 1.0}}, "'lr'.*<= 0"),
        ({"d": {"type": "uniform", "low": 1.0, "high": 1.0}}, "'d'.*low=1.0 >= high=1.0"),
        ({"n": {"type": "int_uniform", "low": 5, "high": 2}}, "'n'.*low=5 >= high=2"),
        ({"n": {"type": "int_uniform", "low": 0.5, "high": 2}}, "'n'.*not an integer"),
        ({"c": {"type": "choice", "values": []}}, "'c'.*empty"),
        ({"c": {"type": "choice", "values": [1, 1]}}, "'c'.*duplicates"),
        ({"c": {"type": "nope"}}, "'c'.*unknown type"),
        ({"c": {"low": 1}}, "'c'.*no 'type'"),
    ],
)
def test_invalid_dimensions_name_the_dimension(spec, match):
    with pytest.raises(SearchSpaceError, match=match):
        SearchSpace.from_dict(spec)


def test_errors_are_configuration_and_value_errors():
    with pytest.raises(ConfigurationError):
        LogUniform(0.0, 1.0)
    with pytest.raises(ValueError, match="LogUniform"):
        LogUniform(1.0, 0.1)


def test_direct_construction_names_dimension_through_space():
    space = SearchSpace({"lr": LogUniform(1e-3, 1e-1)})
    assert space["lr"].name == "lr"
    with pytest.raises(SearchSpaceError, match="'lr'.*outside"):
        space.validate({"lr": 1.0})


def test_seeded_sampling_is_reproducible_and_in_range():
    space = _space()
    a = space.sample(50, rng=np.random.default_rng(3))
    b = space.sample(50, rng=np.random.default_rng(3))
    c = space.sample(50, rng=np.random.default_rng(4))
    assert a == b and a != c
    for cfg in a:
        space.validate(cfg)
        assert isinstance(cfg["layers"], int) and isinstance(cfg["width"], int)


def test_sampling_requires_generator():
    with pytest.raises(SearchSpaceError, match="Generator"):
        _space().sample(2, rng=0)  # type: ignore[arg-type]


def test_encoding_layout_and_round_trip():
    space = _space()
    cfgs = space.sample(20, rng=np.random.default_rng(0))
    enc = space.encode(cfgs)
    assert enc.shape == (20, space.encoded_size) == (20, 3 + 1 + 1 + 1 + 1 + 3)
    assert torch.all((enc >= 0) & (enc <= 1))
    assert torch.allclose(enc[:, :3].sum(1), torch.ones(20, dtype=enc.dtype))
    back = space.decode(enc)
    for c, d in zip(cfgs, back):
        assert c["model"] == d["model"] and c["bs"] == d["bs"] and c["layers"] == d["layers"]
        assert d["lr"] == pytest.approx(c["lr"], rel=1e-9)


def test_log_encoding_is_log_then_minmax():
    space = SearchSpace({"lr": LogUniform(1e-4, 1e-2)})
    enc = space.encode([{"lr": 1e-4}, {"lr": 1e-3}, {"lr": 1e-2}])
    assert enc[:, 0].tolist() == pytest.approx([0.0, 0.5, 1.0])


def test_validate_rejects_bad_configs():
    space = _space()
    cfg = space.sample(1, rng=np.random.default_rng(0))[0]
    with pytest.raises(SearchSpaceError, match="missing"):
        space.validate({k: v for k, v in cfg.items() if k != "lr"})
    with pytest.raises(SearchSpaceError, match="'bs'.*not one of"):
        space.validate({**cfg, "bs": 17})
    with pytest.raises(SearchSpaceError, match="'bs'.*not one of"):
        space.validate({**cfg, "bs": "16"})


def test_only_one_hub_dimension():
    with pytest.raises(SearchSpaceError, match="at most one"):
        SearchSpace({"a": HubChoice(["x"]), "b": HubChoice(["y"])})


def test_dict_round_trip():
    space = _space()
    assert SearchSpace.from_dict(space.to_dict()) == space
    assert space.hub_name == "model"


def test_a4_recipe_loads():
    space = SearchSpace.from_yaml(RECIPE)
    assert space.names == ("model", "dropout", "batch_size", "lr", "momentum", "weight_decay")
    assert isinstance(space["model"], HubChoice)
    assert space["lr"] == LogUniform(1e-4, 1e-1, name="lr")
    assert space["batch_size"].values == (16, 32, 64, 128, 256, 512)
    assert space["momentum"].values == (0.1, 0.5, 0.9)
    assert space["weight_decay"] == LogUniform(1e-5, 1e-1, name="weight_decay")


def test_top_level_exports_are_light():
    import subprocess
    import sys

    code = (
        "import sys, fms_lightning as f; "
        "assert {'SearchSpace','LogUniform','Uniform','IntUniform','Choice','FMSOptimizer'} <= set(f.__all__); "
        "assert 'gpytorch' not in sys.modules and 'lightning' not in sys.modules; "
        "f.FMSOptimizer; assert 'lightning' not in sys.modules; print(f.__version__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0.1.0"
