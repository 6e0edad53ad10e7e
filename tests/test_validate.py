"""The shared checks of ``mode`` and integer options."""

from __future__ import annotations

import pytest

from fms_lightning._validate import MODES, check_int, check_mode
from fms_lightning.errors import ConfigurationError


@pytest.mark.parametrize("mode", ["min", "max"])
def test_valid_modes_pass(mode):
    assert check_mode(mode) == mode and mode in MODES


@pytest.mark.parametrize("mode", ["maximize", "MAX", None, 1])
def test_bad_modes_name_what_was_received_and_the_valid_ones(mode):
    with pytest.raises(ConfigurationError, match=r"mode must be 'min' or 'max', got "):
        check_mode(mode)


def test_none_is_a_mode_only_where_allowed():
    assert check_mode(None, allow_none=True) is None
    with pytest.raises(ConfigurationError, match="'min' or 'max' or None"):
        check_mode("up", allow_none=True)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "3"])
def test_int_checks_refuse_non_integers_bools_and_small_values(value):
    with pytest.raises(ConfigurationError, match="n must be an integer >= 1"):
        check_int(value, "n", minimum=1)


def test_int_checks_pass_and_allow_none_on_request():
    assert check_int(3, "n", minimum=0) == 3
    assert check_int(None, "n", minimum=0, allow_none=True) is None
