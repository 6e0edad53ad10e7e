"""scripts/bench_tuner.py on the tiny task: its parts of the wall time are non-negative and fit inside it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tests import tiny_task

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_tuner.py"


def _script():
    spec = importlib.util.spec_from_file_location("bench_tuner", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_bench_tuner_parts_sum_to_at_most_the_wall_time(tmp_path, capsys):
    from fms_lightning.tuner import FMSTuner

    bench = _script()
    hub = tiny_task.make_hub(tmp_path / "hub")

    def make_tuner(args):
        return FMSTuner(tiny_task.build, tiny_task.datamodule, tiny_task.space(hub), hub, monitor="val_acc",
                        mode="max", budget_epochs=args.budget, max_epochs_per_trial=3, method="fms-gmn",
                        study_dir=args.study_dir, seed=args.seed, optimizer_kwargs=tiny_task.FAST_OPT, progress=False)

    out = tmp_path / "report.json"
    report = bench.main(["--budget", "3", "--study-dir", str(tmp_path / "study"), "--json", str(out)], make_tuner)

    wall, parts = report["wall_seconds"], report["parts"]
    assert set(parts) == set(bench.PARTS)
    assert all(v >= 0 for v in parts.values()), parts
    assert all(v >= 0 for v in report["segment_setup_breakdown"].values())
    assert all(v >= 0 for v in report["study_io_breakdown"].values())
    assert sum(parts.values()) <= wall + 1e-6
    assert report["unaccounted"] >= 0
    assert 0.0 <= report["overhead_share"] <= 1.0
    assert report["budget_used"] == 3 and report["n_segments"] == 3
    assert parts["training"] > 0 and abs(parts["training"] - report["study_observations_wall_time"]) < 1e-6
    assert len(report["suggestions"]) == 3 and report["surrogate_at"]
    assert report["state_saves"] == 3  # once per suggestion
    assert report["stored_state"]["state"] > 0 and report["stored_state"]["n_parts"] > 0
    assert json.loads(out.read_text())["wall_seconds"] == wall
    assert "overhead share" in capsys.readouterr().out
