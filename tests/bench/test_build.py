"""Benchmark specs and the target tasks' data (fms_lightning/bench/spec.py, build.py)."""

from __future__ import annotations

import numpy as np
import pytest

from fms_lightning.bench.build import task_data
from fms_lightning.bench.spec import HUBS, TASKS, BenchSpec, bench_spec
from fms_lightning.errors import ConfigurationError, UnknownPresetError
from fms_lightning.examples.digits_hub import digits_split


def _rows(x: np.ndarray) -> set[bytes]:
    return {np.ascontiguousarray(r).tobytes() for r in np.asarray(x)}


@pytest.mark.parametrize("hub", HUBS)
def test_fewshot_has_ten_images_per_class_and_the_rest_as_validation(hub: str) -> None:
    spec = bench_spec(hub, "fewshot", "tiny")
    x_tr, y_tr, x_va, y_va = task_data(spec)
    assert np.bincount(y_tr.numpy(), minlength=10).tolist() == [spec.shots] * 10 == [10] * 10
    x_target, y_target = digits_split("target")  # the mirrored half
    assert len(y_tr) + len(y_va) == len(y_target)
    assert np.bincount(y_tr.numpy(), minlength=10).sum() + np.bincount(y_va.numpy(), minlength=10).sum() == len(
        y_target)
    assert np.array_equal(np.bincount(y_tr.numpy(), minlength=10) + np.bincount(y_va.numpy(), minlength=10),
                          np.bincount(y_target, minlength=10))
    assert _rows(x_tr.numpy()) <= _rows(x_target)  # mirrored images, not rotated ones


def test_fewshot_differs_from_mirror_and_is_seeded() -> None:
    fs, mirror = task_data(bench_spec("zoo", "fewshot", "tiny")), task_data(bench_spec("zoo", "mirror", "tiny"))
    assert len(fs[1]) == 100 and len(mirror[1]) == 200
    again = task_data(bench_spec("cnn", "fewshot", "tiny"))
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(fs, again))  # the task does not depend on the hub


def test_zoo_sizes() -> None:
    full, tiny = bench_spec("zoo", "mirror", "full"), bench_spec("zoo", "mirror", "tiny")
    assert len(full.members) >= 200 and full.epochs == 20
    assert len(full.configs()) == len(full.members) * 8  # 4 learning rates x 2 batch sizes
    assert len(tiny.members) < 10 and tiny.epochs == 4 and len(tiny.configs()) <= 10
    assert tiny.members == full.members[: len(tiny.members)]  # a tiny zoo is the start of the full one
    assert bench_spec("cnn", "fewshot", "full").epochs == 10  # other hubs keep their sizes


def test_spec_errors_list_the_valid_values() -> None:
    with pytest.raises(ConfigurationError, match="fewshot"):
        bench_spec("zoo", "upside-down", "tiny")
    with pytest.raises(ConfigurationError, match="zoo"):
        bench_spec("imagenet", "mirror", "tiny")
    with pytest.raises(UnknownPresetError, match="tiny"):
        bench_spec("zoo", "mirror", "huge")
    with pytest.raises(ConfigurationError, match="shots"):
        BenchSpec(hub="zoo", task="fewshot", size="x", epochs=4, grid=(), shots=0)
    assert set(TASKS) == {"mirror", "rotate", "fewshot"}


def test_zoo_members_are_pretrained_once_per_root(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import fms_lightning.bench.zoo as zoo
    from fms_lightning.bench.build import build_benchmark
    from fms_lightning.bench.table import Benchmark

    calls = []
    real = zoo.pretrain_zoo_member
    monkeypatch.setattr(zoo, "pretrain_zoo_member", lambda *a, **k: calls.append(1) or real(*a, **k))
    spec = bench_spec("zoo", "fewshot", "tiny")
    spec = BenchSpec(**{**{f: getattr(spec, f) for f in ("hub", "task", "size", "grid", "zoo_members", "shots")},
                        "epochs": 2, "zoo_members": 3})
    first = Benchmark(build_benchmark(spec, tmp_path, progress=False))
    assert len(calls) == 3
    other = BenchSpec(**{**{f: getattr(spec, f) for f in ("hub", "size", "grid", "zoo_members", "epochs")},
                         "task": "mirror"})
    second = Benchmark(build_benchmark(other, tmp_path, progress=False))
    assert len(calls) == 3  # the second task reuses the members
    for m in first.members:
        a, b = first.starting_weights({"hub": m}), second.starting_weights({"hub": m})
        assert all(torch.equal(a[n], b[n]) for n in a)
    assert first.recipes == second.recipes
    reseeded = BenchSpec(**{**{f: getattr(spec, f) for f in ("hub", "task", "grid", "zoo_members")},
                            "size": "seed1", "epochs": 2, "seed": 1})
    build_benchmark(reseeded, tmp_path, progress=False)
    assert len(calls) == 6  # another seed: other recipes, pretrained anew


def test_batchnorm_members_snapshot_every_epochs_buffers(tmp_path) -> None:
    from fms_lightning.bench.build import build_benchmark
    from fms_lightning.bench.table import Benchmark

    grid = (("lr", (0.01,)), ("momentum", (0.9,)), ("weight_decay", (0.0,)), ("batch_size", (64,)), ("dropout", (0.0,)))
    spec = BenchSpec(hub="diverse", task="fewshot", size="bn", epochs=3, grid=grid, diverse_members=("resnet-narrow",))
    bench = Benchmark(build_benchmark(spec, tmp_path, progress=False))
    counts = [int(bench.snapshot(0, e)["stem.1.num_batches_tracked"]) for e in range(4)]
    assert np.diff(counts).tolist() == [2, 2, 2]  # 100 fewshot images in batches of 64: 2 steps per epoch
