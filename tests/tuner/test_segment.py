"""Segments: one trial trained from its checkpoint to a target epoch; W_{i,0} and G(W) of a config."""

from __future__ import annotations

import torch

from fms_lightning.storage import Storage
from fms_lightning.tuner.segment import SegmentRunner, SegmentSpec, StartWeights
from tests import tiny_task


def _runner(tmp_path, build=tiny_task.build, max_epochs=3):
    hub = tiny_task.make_hub(tmp_path / "hub")
    space = tiny_task.space(hub)
    return SegmentRunner(build, tiny_task.datamodule, hub, space.hub_name, "val_acc", 0, max_epochs,
                         Storage(tmp_path / "store")), space


def test_a_segment_writes_its_snapshots_and_checkpoint_to_the_storage(tmp_path) -> None:
    runner, _ = _runner(tmp_path)
    config = {"model": "mlp8", "lr": 0.05, "batch_size": 16}
    result = runner.run(SegmentSpec(4, config, 0, 2))
    assert result.error is None and result.spec.study_trial == 4  # the old name of trial_id
    assert [r.epoch for r in result.records] == [1, 2]
    assert result.start_snapshot == "snapshots/trial_00004/epoch_0000.safetensors"
    assert result.checkpoint == "checkpoints/trial_00004/epoch_0002.ckpt"
    for rel in [result.start_snapshot, result.checkpoint] + [r.snapshot for r in result.records]:
        assert runner.storage.exists(rel), rel
    more = runner.run(SegmentSpec(4, config, 2, 3, result.checkpoint))
    assert more.error is None and [r.epoch for r in more.records] == [3] and more.start_snapshot is None


def test_start_weights_are_the_modules_first_weights_built_once_per_hub_entry(tmp_path) -> None:
    calls = []

    def build(config, entry):
        calls.append(entry.name)
        return tiny_task.build(config, entry)

    runner, _ = _runner(tmp_path, build=build)
    start = StartWeights(runner)
    a = start({"model": "mlp8", "lr": 0.05, "batch_size": 16})
    b = start({"model": "mlp8", "lr": 0.01, "batch_size": 32})
    assert a is b and calls == ["mlp8"]  # the architecture and W_{i,0} depend on the hub entry only
    torch.manual_seed(0)
    fresh = runner.make_module({"model": "mlp8", "lr": 0.05, "batch_size": 16}, load_weights=True)
    for k, v in fresh.state_dict().items():
        assert torch.equal(a[k], v), k
    del calls[1:]  # the test's own build
    graph = start.graph({"model": "mlp8", "lr": 0.05, "batch_size": 16}, a)
    assert graph.num_nodes > 0 and calls == ["mlp8"]  # the module built for W_{i,0} is traced again
    start.graph({"model": "mlp16", "lr": 0.05, "batch_size": 16}, start({"model": "mlp16", "lr": 0.05,
                                                                         "batch_size": 16}))
    assert calls == ["mlp8", "mlp16"]


def test_a_nadamw_list_module_gets_the_trial_as_its_schedule_horizon(tmp_path) -> None:
    from fms_lightning.optim import NAdamWListModule

    class ListModule(NAdamWListModule):
        def __init__(self, entry):
            super().__init__(preset=1, total_steps=99)
            self.model = entry.build(load_weights=False)

    runner, _ = _runner(tmp_path, build=lambda config, entry: ListModule(entry), max_epochs=5)
    module = runner.make_module({"model": "mlp8", "lr": 0.05, "batch_size": 16}, load_weights=False)
    assert module.total_epochs == 5 and module.total_steps is None


def test_a_checkpoint_is_crc_checked_unless_this_process_wrote_it_and_it_is_unchanged(tmp_path, monkeypatch) -> None:
    from fms_lightning.tuner import segment

    checked = []
    check = segment.check_checkpoint_file
    monkeypatch.setattr(segment, "check_checkpoint_file", lambda path, name: (checked.append(path), check(path, name))[1])
    runner, _ = _runner(tmp_path, max_epochs=4)
    config = {"model": "mlp8", "lr": 0.05, "batch_size": 16}
    first = runner.run(SegmentSpec(1, config, 0, 1))
    second = runner.run(SegmentSpec(1, config, 1, 2, first.checkpoint))
    assert second.error is None and checked == []  # written here a moment ago, untouched since
    segment._WRITTEN.clear()  # as in another process (a Ray worker, the next fit)
    third = runner.run(SegmentSpec(1, config, 2, 3, second.checkpoint))
    assert third.error is None and len(checked) == 1
    path = runner.storage.local_path(third.checkpoint)
    path.write_bytes(path.read_bytes()[:-100])  # changed since it was written: checked, and refused
    again = runner.run(SegmentSpec(1, config, 3, 4, third.checkpoint))
    assert len(checked) == 2 and again.error is not None and "truncated" in again.error
