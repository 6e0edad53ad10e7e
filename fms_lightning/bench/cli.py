"""``fms-lightning bench build|run|report``: the benchmark suite on the command line.

Wire it into the main parser with::

    from fms_lightning.bench.cli import register as _register_bench
    _register_bench(sub)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fms_lightning.bench.spec import HUBS, SIZES, TASKS

__all__ = ["register"]

_OTHER_TASK = {"mirror": "rotate", "rotate": "mirror", "fewshot": "rotate"}  # --transfer source
_ONE_ARCH = ("fms-flat", "fms-flat-nocurve", "fms-nfn", "fms-nfn-nocurve")  # refused on mixed hubs


def _cmd_build(args: argparse.Namespace) -> int:
    import time

    from fms_lightning.bench.build import build_benchmark
    from fms_lightning.bench.metrics import easiness
    from fms_lightning.bench.spec import bench_spec
    from fms_lightning.bench.table import Benchmark

    for hub in args.hub:
        for task in args.task:
            start = time.perf_counter()
            folder = build_benchmark(bench_spec(hub, task, args.size), args.cache, threads=args.threads,
                                     progress=not args.quiet)
            e = easiness(Benchmark(folder))
            print(f"{folder}: ready ({time.perf_counter() - start:.0f}s); y*={e.y_star:.4f}, final within "
                  f"{e.tol} of y*: {e.final_near_y_star:.1%} of configs, of the best final: "
                  f"{e.final_near_best_final:.1%}", flush=True)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from fms_lightning.bench.peers import PEERS, is_peer, peer_variants, require_optuna
    from fms_lightning.bench.replay import GMN_TRAINING_VARIANTS, VARIANTS, RunSettings, run_grid
    from fms_lightning.bench.spec import bench_spec
    from fms_lightning.bench.table import Benchmark
    from fms_lightning.errors import UnknownPresetError

    everything = "all" in args.methods
    named = [m for m in args.methods if m not in ("all", "peers")]
    unknown = [v for v in named if v not in VARIANTS and not is_peer(v)]
    if unknown:
        raise UnknownPresetError(f"Unknown method(s) {unknown}; expected 'all', 'peers' or any of {list(VARIANTS)}, "
                                 f"or an Optuna peer: {list(PEERS)} (TPE ones also as '<name>-s<n>').")
    with_peers = everything or "peers" in args.methods or any(is_peer(v) for v in named)
    if with_peers:
        require_optuna()  # fail before any run, naming the extra
    settings = RunSettings(budget=args.budget, tau_budgets=tuple(b for b in (50, 100) if b <= args.budget) or
                           (args.budget,), n_candidates=args.candidates, initial_steps=args.initial_steps,
                           refine_steps=args.refine_steps,
                           initial_warm_steps=args.initial_warm_steps, lr=args.lr, pretrain_steps=args.pretrain_steps, threads=args.threads,
                           gmn_training=args.gmn_training)
    seeds = range(args.seed_start, args.seed_start + args.seeds)
    for hub in args.hub:
        for task in args.task:
            bench = Benchmark(Path(args.cache) / bench_spec(hub, task, args.size).name)
            # 'all': every method at its defaults; the GMN-training ablations are named explicitly
            variants = ([v for v in VARIANTS if v not in GMN_TRAINING_VARIANTS] if everything
                        else [v for v in named if v in VARIANTS])
            if everything or "peers" in args.methods:  # the start-up count of the TPE peers depends on E
                variants += peer_variants(args.budget, bench.epochs)
            variants += [v for v in named if v not in VARIANTS and v not in variants]
            chosen = [v for v in variants if hub in ("cnn", "zoo") or v not in _ONE_ARCH]  # FLAT, NFN: one architecture
            source = None
            if args.transfer:
                source = Benchmark(Path(args.cache) / bench_spec(hub, _OTHER_TASK[task], args.size).name)
            for seed in seeds:  # seed-major, so that a stopped run has every method for its first seeds
                run_grid(bench, chosen, [seed], args.out, settings, log=sys.stdout)
                if source is not None:
                    run_grid(bench, ["fms-gmn"], [seed], args.out, settings, pretrain_from=source, log=sys.stdout)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from fms_lightning.bench.report import write_report

    pre = Path(args.preamble).read_text(encoding="utf-8") if args.preamble else ""
    epi = "\n\n".join(Path(p).read_text(encoding="utf-8").rstrip() for p in args.epilogue or [])
    path = write_report(args.out, args.report, plot_dir=args.plots, cache_dir=args.cache, preamble=pre, epilogue=epi)
    print(f"wrote {path}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=sorted(SIZES), default="full", help="benchmark size (tiny: for CI)")
    p.add_argument("--hub", nargs="+", choices=HUBS, default=list(HUBS))
    p.add_argument("--task", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--cache", default="bench-results/cache", help="where benchmarks are built")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``bench build|run|report`` to an argparse ``subparsers`` object.

    Returns:
        The ``bench`` parser.
    """
    bench = subparsers.add_parser("bench", help="cached HPO benchmarks: build, replay, report")
    sub = bench.add_subparsers(dest="bench_command", required=True)

    build = sub.add_parser("build", help="train every config of a benchmark grid (resumable)")
    _common(build)
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(func=_cmd_build)

    run = sub.add_parser("run", help="replay HPO runs against built benchmarks (resumable)")
    _common(run)
    run.add_argument("--methods", nargs="+", default=["all"],
                     help="variants (random, dyhpo, fms-gmn, ..., Optuna peers tpe, tpe-s<n>, tpe-hyperband, "
                          "tpe-hyperband-s<n>, sh), 'peers' for the peers of the budget, or 'all'")
    run.add_argument("--seeds", type=int, default=10, help="number of seeds")
    run.add_argument("--seed-start", type=int, default=0)
    run.add_argument("--budget", type=int, default=100, help="epochs per run")
    run.add_argument("--candidates", type=int, default=256, help="new configs scored per suggestion")
    run.add_argument("--initial-steps", type=int, default=200)
    run.add_argument("--refine-steps", type=int, default=10)
    run.add_argument("--lr", type=float, default=5e-3, help="the surrogate's Adam learning rate")
    run.add_argument("--initial-warm-steps", type=int, default=None,
                     help="warm-start the initial phase's fits after the first, with this many steps")
    run.add_argument("--pretrain-steps", type=int, default=500, help="Adam steps of the transfer pretraining")
    run.add_argument("--transfer", action="store_true", help="also run fms-gmn pretrained on the other task")
    run.add_argument("--gmn-training", choices=["frozen", "readout", "full"], default=None,
                     help="GMN training of the fms-gmn variant (default: the optimizer's); the ablation "
                          "variants fms-gmn-frozen/-readout/-full run only when named")
    run.add_argument("--out", default="bench-results/runs")
    run.set_defaults(func=_cmd_run)

    report = sub.add_parser("report", help="write BENCHMARKS.md and regret plots from saved runs")
    report.add_argument("--out", default="bench-results/runs", help="folder of saved runs")
    report.add_argument("--cache", default="bench-results/cache")
    report.add_argument("--report", default="BENCHMARKS.md")
    report.add_argument("--plots", default="docs/bench")
    report.add_argument("--preamble", default=None, help="markdown file placed before the tables")
    report.add_argument("--epilogue", default=None, nargs="+",
                        help="markdown files placed after the tables, in order")
    report.set_defaults(func=_cmd_report)
    return bench
