from __future__ import annotations

import pytest
import torch

from fms_lightning.errors import ConfigurationError
from fms_lightning.surrogate.dataset import InputLayout, forecast_rows, make_row, training_rows


def _layout(n_weight: int = 1) -> InputLayout:
    return InputLayout(n_hp=2, max_epochs=5, n_weight=n_weight)


def test_layout_slices_cover_the_row():
    lay = _layout(3)
    assert lay.width == 2 + 1 + 4 + 4 + 3
    assert lay.weight_slice.stop == lay.width


def test_row_padding_is_left_aligned_with_mask():
    lay = _layout(0)
    row = make_row(lay, torch.tensor([0.1, 0.2]), 3, [0.5, 0.0])
    assert row[lay.budget_col].item() == pytest.approx(3 / 5)
    assert row[lay.curve_slice].tolist() == [0.5, 0.0, 0.0, 0.0]
    assert row[lay.mask_slice].tolist() == [1.0, 1.0, 0.0, 0.0]


def test_make_row_refuses_context_that_reaches_epoch_j():
    with pytest.raises(ConfigurationError, match="expected j-1=1"):
        make_row(_layout(0), torch.zeros(2), 2, [0.1, 0.2])
    with pytest.raises(ConfigurationError, match="outside"):
        make_row(_layout(0), torch.zeros(2), 6, [0.0] * 5)


def test_row_for_label_j_uses_curve_before_j_and_weights_after_j_minus_1():
    lay = _layout(1)
    curve = [0.1, 0.2, 0.3, 0.4]
    keys = ["w0", "w1", "w2", "w3", "w4"]
    emb = {k: torch.tensor([float(i)]) for i, k in enumerate(keys)}
    rows, y = training_rows(lay, [(torch.zeros(2), curve, keys)], emb)
    assert y.tolist() == curve
    for j in range(1, 5):
        r = rows[j - 1]
        assert r[lay.weight_slice].item() == j - 1  # W_{i,j-1}
        assert r[lay.mask_slice].sum().item() == j - 1
        assert r[lay.curve_slice][: j - 1].tolist() == curve[: j - 1]


@pytest.mark.parametrize("j", [1, 2, 3, 4])
def test_no_leak_changing_epoch_j_and_later_leaves_rows_up_to_j_unchanged(j):
    """Perturb every label and snapshot from epoch j on; the inputs of rows 1..j must not move."""
    lay = _layout(1)
    curve = [0.1, 0.2, 0.3, 0.4]
    keys = ["w0", "w1", "w2", "w3", "w4"]
    emb = {k: torch.tensor([float(i)]) for i, k in enumerate(keys)}
    base, _ = training_rows(lay, [(torch.zeros(2), curve, keys)], emb)
    curve2 = curve[: j - 1] + [c + 100.0 for c in curve[j - 1 :]]
    keys2 = keys[:j] + [k + "'" for k in keys[j:]]
    emb2 = {**emb, **{k + "'": torch.tensor([1e6]) for k in keys[j:]}}
    pert, y2 = training_rows(lay, [(torch.zeros(2), curve2, keys2)], emb2)
    assert torch.equal(base[:j], pert[:j])
    assert y2[j - 1] != curve[j - 1]  # the label itself did change


def test_forecast_rows_predict_the_latest_value_from_every_shorter_context():
    lay = _layout(1)
    curve = [0.1, 0.2, 0.3, 0.4]
    keys = ["w0", "w1", "w2", "w3", "w4"]
    emb = {k: torch.tensor([float(i)]) for i, k in enumerate(keys)}
    rows, y = forecast_rows(lay, [(torch.zeros(2), curve, keys), (torch.ones(2), [0.9], ["a", "b"])], emb)
    assert y.tolist() == [0.4, 0.4, 0.4]  # a 1-epoch trial has nothing to forecast
    for m, r in enumerate(rows):
        assert r[lay.budget_col].item() == pytest.approx(4 / 5)  # the label's epoch J = 4
        assert r[lay.mask_slice].sum().item() == m  # context Y_{1..m}, m < J - 1
        assert r[lay.curve_slice][:m].tolist() == curve[:m]
        assert r[lay.weight_slice].item() == m  # W_{i,m}: as recent as the context, never later


def test_forecast_rows_do_not_leak_the_label_epoch():
    """Changing y_J and W_J (and nothing earlier) changes only the labels of the look-ahead rows."""
    lay = _layout(1)
    curve = [0.1, 0.2, 0.3, 0.4]
    keys = ["w0", "w1", "w2", "w3", "w4"]
    emb = {k: torch.tensor([float(i)]) for i, k in enumerate(keys)}
    base, y = forecast_rows(lay, [(torch.zeros(2), curve, keys)], emb)
    emb2 = {**emb, "w4'": torch.tensor([1e6]), "w3'": torch.tensor([-1e6])}
    pert, y2 = forecast_rows(lay, [(torch.zeros(2), curve[:3] + [7.0], keys[:3] + ["w3'", "w4'"])], emb2)
    assert torch.equal(base, pert)
    assert y2.tolist() == [7.0, 7.0, 7.0] != y.tolist()


def test_make_row_horizon_sets_only_the_budget_column():
    lay = _layout(0)
    a = make_row(lay, torch.tensor([0.1, 0.2]), 3, [0.5, 0.6])
    b = make_row(lay, torch.tensor([0.1, 0.2]), 3, [0.5, 0.6], horizon=5)
    assert b[lay.budget_col].item() == pytest.approx(1.0)
    a[lay.budget_col] = b[lay.budget_col]
    assert torch.equal(a, b)
    with pytest.raises(ConfigurationError, match="outside"):
        make_row(lay, torch.zeros(2), 3, [0.5, 0.6], horizon=2)  # a horizon before the next epoch


# -- failure imputation and the row cap (pure functions) -------------------------------------
def test_failures_are_imputed_with_the_worst_observed_value():
    from fms_lightning.surrogate.dataset import impute_failures

    rows, y = torch.zeros(3, 2, dtype=torch.float64), torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    pen = [torch.ones(2, dtype=torch.float64)] * 2
    r2, y2 = impute_failures(rows, y, pen)
    assert r2.shape == (5, 2) and y2.tolist() == [0.5, -1.0, 2.0, -1.0, -1.0]
    assert impute_failures(rows[:0], y[:0], pen)[0].shape == (0, 2)  # nothing observed: nothing to impute from


def test_the_cap_keeps_each_trials_latest_row_then_a_seeded_subset():
    from fms_lightning.surrogate.dataset import cap_rows

    rows = torch.arange(10, dtype=torch.float64).unsqueeze(1)
    y = rows.squeeze(1).clone()
    lengths = [4, 0, 3, 2]  # observation rows 0..8; row 9 is an imputed failure
    r, _ = cap_rows(rows, y, lengths, 6, seed=0)
    kept = r.squeeze(1).long().tolist()
    assert len(kept) == 6 and kept == sorted(kept)
    assert {3, 6, 8} <= set(kept)  # the latest row of each trial with observations
    assert cap_rows(rows, y, lengths, 6, seed=0)[0].tolist() == r.tolist()  # seeded
    assert cap_rows(rows, y, lengths, 10, seed=0)[0] is rows  # under the cap: unchanged
    assert cap_rows(rows, y, lengths, 2, seed=0)[0].squeeze(1).tolist() == [6.0, 8.0]  # fewer than the latest


def test_forecast_rows_fill_only_the_room_under_the_cap():
    from fms_lightning.surrogate.dataset import add_forecast_rows

    rows, y = torch.zeros(3, 1, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    ahead, y_ahead = torch.ones(5, 1, dtype=torch.float64), torch.arange(5, dtype=torch.float64)
    r, yy = add_forecast_rows(rows, y, ahead, y_ahead, 5, seed=1)
    assert r.shape == (5, 1) and yy[3:].tolist() == sorted(yy[3:].tolist())
    assert add_forecast_rows(rows, y, ahead, y_ahead, 100, seed=1)[0].shape == (8, 1)
