"""Cached HPO benchmarks: build them once, replay FMSOptimizer runs, report τ, regret and overhead.

>>> from fms_lightning.bench import bench_spec
>>> bench_spec("cnn", "mirror", "tiny").name
'cnn-mirror-tiny'
"""

from fms_lightning.bench.build import build_benchmark
from fms_lightning.bench.metrics import easiness, kendall_tau, regret_curve
from fms_lightning.bench.replay import GMN_TRAINING_VARIANTS, VARIANTS, RunResult, RunSettings, run_grid, run_replay
from fms_lightning.bench.report import PAPER_TABLE1, write_report
from fms_lightning.bench.spec import BenchSpec, bench_spec
from fms_lightning.bench.table import Benchmark

__all__ = [
    "BenchSpec", "bench_spec", "build_benchmark", "Benchmark", "RunSettings", "RunResult", "VARIANTS", "GMN_TRAINING_VARIANTS",
    "run_replay", "run_grid", "kendall_tau", "regret_curve", "easiness", "PAPER_TABLE1", "write_report",
]
