"""NADAMW_LIST: values, lookup, the shipped YAML, and user lists."""

from __future__ import annotations

import dataclasses

import pytest

from fms_lightning.errors import ConfigurationError, FMSError
from fms_lightning.optim import NADAMW_LIST, PRESET_NAMES, NAdamWPoint, dump_hparam_list, get_preset, load_hparam_list
from fms_lightning.recipes import recipe_path

# Table 10 of the NAdamW-lists paper, as printed (kept here as text, parsed independently).
TABLE_10 = """
1 0.007188680089024849 0.1 0.9521079797438937 0.9545645606521953 0.020932289532959312 0.0 0.2
2 0.0011719210768906827 0.02 0.9641782560318817 0.9953311727740848 0.15957548811577366 0.1 0.0
3 0.001183374563441696 0.02 0.918959806679234 0.9941923836947718 0.028400661323288435 0.1 0.1
4 0.0014515212275017363 0.1 0.9600296609757403 0.889423091749684 0.031808785805059143 0.0 0.2
5 0.0005102205206215031 0.05 0.9120180064671332 0.9597041640569521 0.04833675039698776 0.1 0.0
"""
FIELDS = ["lr", "warmup_fraction", "beta1", "beta2", "weight_decay", "dropout", "label_smoothing"]


def test_list_matches_table_10_digit_for_digit() -> None:
    rows = [line.split() for line in TABLE_10.strip().splitlines()]
    assert len(NADAMW_LIST) == 5
    assert [f.name for f in dataclasses.fields(NAdamWPoint)] == FIELDS
    for row, point in zip(rows, NADAMW_LIST):
        for field, text in zip(FIELDS, row[1:]):
            assert repr(getattr(point, field)) == text, (row[0], field)


def test_points_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        NADAMW_LIST[0].lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("rank", range(1, 6))
def test_lookup_by_rank_name_and_point(rank: int) -> None:
    point = NADAMW_LIST[rank - 1]
    assert get_preset(rank) is point
    assert get_preset(f"nadamw-list/{rank}") is point
    assert get_preset(str(rank)) is point
    assert get_preset(point) is point
    assert get_preset(point.to_dict()) == point
    assert PRESET_NAMES[rank - 1] == f"nadamw-list/{rank}"


@pytest.mark.parametrize("key", [0, 6, -1, "nadamw-list/6", "adamw", True, 1.5])
def test_unknown_preset_lists_valid_ones(key) -> None:
    with pytest.raises(KeyError) as info:
        get_preset(key)
    assert isinstance(info.value, FMSError)
    assert "nadamw-list/1" in str(info.value) and "nadamw-list/5" in str(info.value)


def test_shipped_yaml_agrees_with_the_constant() -> None:
    assert load_hparam_list(recipe_path("nadamw_list")) == NADAMW_LIST


def test_user_list_round_trip(tmp_path) -> None:
    mine = (NADAMW_LIST[2], NAdamWPoint(3e-4, 0.05, 0.9, 0.999, 0.1, 0.0, 0.1))
    path = tmp_path / "mine.yaml"
    dump_hparam_list(mine, path, name="mine")
    assert load_hparam_list(path) == mine


@pytest.mark.parametrize(
    ("field", "value"),
    [("lr", 0.0), ("beta1", 1.0), ("beta2", -0.1), ("dropout", 1.0), ("warmup_fraction", 1.1), ("weight_decay", -1.0),
     ("label_smoothing", float("nan"))],
)
def test_invalid_point_names_the_field(field: str, value: float) -> None:
    kwargs = NADAMW_LIST[0].to_dict() | {field: value}
    with pytest.raises(ConfigurationError, match=field):
        NAdamWPoint(**kwargs)


def test_bad_list_files(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_hparam_list(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("points:\n  - lr: 0.1\n")
    with pytest.raises(ConfigurationError, match="Point 1.*missing"):
        load_hparam_list(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("points: []\n")
    with pytest.raises(ConfigurationError, match="non-empty"):
        load_hparam_list(empty)
