"""Time to finish a fixed tuning budget on Ray with 1 worker against 2 workers, side by side.

Runs the embedded digits-hub recipe (``recipes/digits_hub.yaml``) on one local Ray
runtime, for each method given, alternating the worker counts within each repeat
so that machine noise hits both. Reports wall time, the speed-up, and where the
time went: seconds spent in the driver's suggestions (surrogate fits) and
seconds the workers were busy training. Writes a Markdown table (``--out``) and a
timeline of the segments each worker trained in the last 2-worker runs (``--plot``).

    .venv/bin/python scripts/bench_ray.py                         # ~6 min on 2 cores
    .venv/bin/python scripts/bench_ray.py --runs dyhpo:16 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def _run(method: str, budget: int, workers: int, study_dir: str) -> dict[str, Any]:
    from fms_lightning.recipe_tune import tuner_from_recipe
    from fms_lightning.recipes import recipe_path

    cfg = OmegaConf.merge(OmegaConf.load(recipe_path("digits_hub")), {
        "method": method, "budget_epochs": budget, "study_dir": study_dir, "progress": False,
        "executor": "ray", "max_concurrent": workers,
    })
    tuner, _ = tuner_from_recipe(cfg)
    t0 = time.perf_counter()
    result = tuner.fit()
    wall = time.perf_counter() - t0
    return {"wall": wall, "best": result.best_value, "suggest": sum(tuner.suggest_seconds),
            "busy": sum(s.seconds for s in tuner.segments), "segments": list(tuner.segments)}


def _timeline(runs: dict[str, list[Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 1.6 + 1.4 * len(runs)), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, (method, segments) in zip(axes[:, 0], runs.items()):
        segments = sorted(segments, key=lambda s: s.started)
        t0 = segments[0].started
        workers = sorted({s.worker for s in segments})
        for s in segments:
            ax.barh(workers.index(s.worker), s.seconds, left=s.started - t0, color=cmap(s.spec.study_trial % 20),
                    edgecolor="black", lw=0.4)
        ax.set_yticks(range(len(workers)), [f"worker {w.split(':')[-1]}" for w in workers])
        ax.set_title(f"{method}, 2 workers: segments trained (colour: trial)", fontsize=9)
    axes[-1, 0].set_xlabel("seconds since the first segment started; gaps are the driver choosing the next segment")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["random:96", "fms-gmn:24"],
                        help="METHOD:BUDGET pairs (random trains whole trials, so it gets a larger budget)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/bench/ray.md"))
    parser.add_argument("--plot", type=Path, default=Path("docs/bench/ray-timeline.png"))
    args = parser.parse_args(argv)

    import ray

    from fms_lightning.examples.digits_hub import digits_hub

    plan = [(m, int(b)) for m, b in (r.split(":") for r in args.runs)]
    digits_hub(stream=sys.stderr)  # build the hub once, outside the timings
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    @ray.remote(num_cpus=1)
    def warm_up() -> None:
        import lightning.pytorch  # noqa: F401 - each worker's first import, outside the timings

        time.sleep(1.0)

    ray.get([warm_up.remote() for _ in range(2)])
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        for r in range(args.repeats):
            for method, budget in plan:
                for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
                    run = _run(method, budget, workers, f"{tmp}/{method}-r{r}-w{workers}")
                    runs.setdefault((method, workers), []).append(run)
                    print(f"repeat {r + 1}: {method}, {workers} worker(s): {run['wall']:.1f} s "
                          f"(suggest {run['suggest']:.1f} s, training {run['busy']:.1f} s), "
                          f"best val_acc {run['best']:.4f}", flush=True)
    ray.shutdown()
    command = " ".join(["python scripts/bench_ray.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [
        "# Ray scale-out: one worker against two",
        "",
        f"`{command}` on this machine (2 cores, one local `ray.init(num_cpus=2)`, 1 CPU and 1 torch thread "
        f"per worker). Each study is the digits-hub recipe (8 epochs at most per trial) with a fresh study "
        "folder; worker counts alternate within each repeat, after both workers were warmed up. The driver's suggestions (surrogate fits) "
        "share the 2 cores with the workers.",
        "",
        "| method | budget (epochs) | workers | wall time per study (s) | driver suggest time (s) | worker training time (s) "
        "| best val_acc |",
        "|---|---|---|---|---|---|---|",
    ]
    summary = []
    for method, budget in plan:
        for w in (1, 2):
            rs = runs[(method, w)]
            def col(key: str, fmt: str = ".1f", rs: list[dict[str, Any]] = rs) -> str:
                return ", ".join(format(x[key], fmt) for x in rs)

            lines.append(f"| {method} | {budget} | {w} | {col('wall')} | {col('suggest')} | {col('busy')} | {col('best', '.4f')} |")
        ratios = [a["wall"] / b["wall"] for a, b in zip(runs[(method, 1)], runs[(method, 2)])]
        share = statistics.mean(x["suggest"] / x["wall"] for x in runs[(method, 1)])
        summary.append(f"- **{method}**: speed-up (1-worker time / 2-worker time, per repeat) "
                       f"{', '.join(f'{x:.2f}x' for x in ratios)}; with 1 worker the driver's suggestions "
                       f"take {100 * share:.0f}% of the wall time.")
    lines += ["", *summary, ""]
    _timeline({f"{m}, budget {b} epochs": runs[(m, 2)][-1]["segments"] for m, b in plan}, args.plot)
    lines += [f"![Segments per worker]({args.plot.name})", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
