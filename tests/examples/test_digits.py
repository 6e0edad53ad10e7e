"""End to end: the digits CNN trained with a preset learns, and the demo writes what it promises."""

from __future__ import annotations

import io

import numpy as np
import pytest

from fms_lightning.errors import ConfigurationError
from fms_lightning.examples.demo import run_demo
from fms_lightning.examples.sklearn_data import SklearnDataModule
from fms_lightning.recipes import load_recipe


def test_demo_trains_digits_cnn_to_a_real_accuracy(tmp_path) -> None:
    cfg = load_recipe("digits_demo", [f"output_dir={tmp_path}", "trainer.max_epochs=5", "preset=nadamw-list/1"])
    out = io.StringIO()
    result = run_demo(cfg, stream=out)
    text = out.getvalue()
    assert len(result.val_acc_per_epoch) == 5
    assert text.count("val_acc=") == 5 + 1  # one line per epoch, plus the final figure
    assert f"final val_acc={result.final_val_acc:.4f}" in text
    # Chance is 0.1; a working optimizer + schedule gets well above 0.9 in 5 epochs.
    assert result.final_val_acc >= 0.93
    assert list((tmp_path / "digits-cnn").rglob("events.out.tfevents.*")), "no TensorBoard event file"
    assert result.plot and (tmp_path / "digits-cnn" / "version_0" / "curves.png").stat().st_size > 10_000
    assert result.checkpoint.endswith(".ckpt")


def test_demo_accepts_a_user_list(tmp_path) -> None:
    from fms_lightning.optim import NADAMW_LIST, dump_hparam_list

    lst = tmp_path / "mine.yaml"
    dump_hparam_list(NADAMW_LIST[::-1], lst)
    cfg = load_recipe("digits_demo", [f"output_dir={tmp_path}", "trainer.max_epochs=1", f"preset={lst}#5"])
    result = run_demo(cfg, stream=io.StringIO())
    assert result.preset == NADAMW_LIST[0]


def test_demo_recipe_errors_are_clear(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="key=value"):
        load_recipe("digits_demo", ["trainer.max_epochs"])
    with pytest.raises(KeyError, match="digits_demo"):
        load_recipe("no_such_recipe")


def test_split_is_stratified_seeded_and_standardised_on_train_only() -> None:
    a = SklearnDataModule("digits", seed=3, as_image=True)
    b = SklearnDataModule("digits", seed=3, as_image=True)
    a.setup()
    b.setup()
    xa, ya = a.train_set.tensors
    xb, _ = b.train_set.tensors
    assert xa.shape[1:] == (1, 8, 8) and (xa == xb).all()
    # Standardised with training statistics: the training split has mean 0; validation does not exactly.
    assert np.allclose(xa.mean(dim=0).numpy(), 0.0, atol=1e-5)
    counts = np.bincount(ya.numpy(), minlength=10)
    assert counts.min() >= 0.9 * counts.max()
    with pytest.raises(ConfigurationError, match="Unknown dataset"):
        SklearnDataModule("mnist")
