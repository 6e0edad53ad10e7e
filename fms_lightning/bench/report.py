"""Summarise replayed runs: tables beside the paper's Table 1, regret plots (over epochs and over
simulated wall time), BENCHMARKS.md."""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fms_lightning.bench.replay import RunResult
from fms_lightning.bench.walltime import easiness, epochs_at, mean_se, regret_at, time_grid
from fms_lightning.study import atomic_write

__all__ = ["PAPER_TABLE1", "Summary", "load_results", "summarise", "write_report"]

# Kendall's tau at 50/100 epochs, FMS paper Table 1: (Simple CNN Hub, PTM Hub CIFAR-10).
PAPER_TABLE1: dict[str, tuple[tuple[float, float], tuple[float, float] | None]] = {
    "fms-gmn": ((0.88, 0.92), (0.87, 0.91)),
    "fms-gmn-nocurve": ((0.80, 0.84), (0.80, 0.85)),
    "fms-nfn": ((0.84, 0.88), None),
    "fms-nfn-nocurve": ((0.82, 0.85), None),
    "fms-flat": ((0.78, 0.82), (0.78, 0.83)),
    "fms-flat-nocurve": ((0.76, 0.81), (0.77, 0.82)),
    "dyhpo": ((0.74, 0.77), (0.74, 0.78)),
    "dyhpo-nocurve": ((0.60, 0.63), (0.62, 0.65)),
    "gp": ((0.70, 0.73), (0.70, 0.74)),
}
_ORDER = ["fms-gmn", "fms-gmn-nocurve", "fms-nfn", "fms-nfn-nocurve", "fms-flat", "fms-flat-nocurve", "dyhpo", "dyhpo-nocurve", "gp", "random",
          "tpe-hyperband", "tpe-hyperband-s", "tpe", "tpe-s", "sh", "fms-gmn+transfer"]


def _rank(variant: str) -> int:
    """Table and legend order; ``tpe-s3`` sorts as ``tpe-s``, unknown variants last."""
    key = re.sub(r"-s[0-9]+$", "-s", variant)
    return _ORDER.index(key) if key in _ORDER else 99


def _is_peer(variant: str) -> bool:
    return re.sub(r"-s[0-9]+$", "", variant) in ("tpe-hyperband", "tpe", "sh")


@dataclass(frozen=True)
class Summary:
    """Mean and standard error over seeds of one (benchmark, variant).

    Args:
        benchmark: Benchmark name.
        variant: Method variant.
        n_seeds: Number of runs.
        tau: ``{budget: (mean, s.e.)}``.
        regret: Mean regret after each epoch of budget.
        regret_se: Its standard error.
        overhead: ``(mean, s.e.)`` seconds inside ``suggest()`` per run.
        seconds: Mean wall time per run.
        overhead_cpu: ``(mean, s.e.)`` CPU seconds inside ``suggest()``, or None where unrecorded.
        trials: Mean number of trials started.
        one_epoch_share: Mean share of the trials that were trained a single epoch, or None.
    """

    benchmark: str
    variant: str
    n_seeds: int
    tau: dict[int, tuple[float, float]]
    regret: tuple[float, ...]
    regret_se: tuple[float, ...]
    overhead: tuple[float, float]
    seconds: float
    overhead_cpu: tuple[float, float] | None = None
    trials: float = 0.0
    one_epoch_share: float | None = None


def _mse(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    se = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else 0.0
    return float(v.mean()), se


def load_results(results_dir: str | Path) -> list[RunResult]:
    """Every ``*.json`` run under ``results_dir`` (one folder per benchmark)."""
    return [RunResult.from_json(p.read_text(encoding="utf-8")) for p in sorted(Path(results_dir).glob("*/*.json"))]


def _common_seed_runs(results: Sequence[RunResult]) -> dict[tuple[str, str], list[RunResult]]:
    """Runs grouped by (benchmark, variant), keeping only the seeds every variant of the benchmark has."""
    seeds: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for r in results:
        seeds[r.benchmark][r.variant].add(r.seed)
    common = {b: set.intersection(*v.values()) for b, v in seeds.items()}
    groups: dict[tuple[str, str], list[RunResult]] = defaultdict(list)
    for r in results:
        if r.seed in common[r.benchmark]:
            groups[(r.benchmark, r.variant)].append(r)
    return groups


def summarise(results: Sequence[RunResult]) -> list[Summary]:
    """Group runs by (benchmark, variant); mean ± s.e. over seeds.

    Only the seeds that every variant of a benchmark has finished are used, so that a
    stopped run does not compare methods on different seeds.
    """
    groups = _common_seed_runs(results)
    out = []
    for (bench, variant), runs in sorted(groups.items()):
        n = min(len(r.regret) for r in runs)
        reg = np.array([r.regret[:n] for r in runs])
        budgets = sorted({b for r in runs for b in r.tau})
        tau = {b: _mse([r.tau[b] for r in runs if b in r.tau]) for b in budgets}
        se = reg.std(axis=0, ddof=1) / np.sqrt(len(runs)) if len(runs) > 1 else np.zeros(n)
        cpu = [r.overhead_cpu_seconds for r in runs]
        shares = [float(np.mean(np.asarray(r.epochs_per_trial) == 1)) for r in runs if r.epochs_per_trial]
        out.append(Summary(bench, variant, len(runs), tau, tuple(reg.mean(axis=0)), tuple(se),
                           _mse([r.overhead_seconds for r in runs]), float(np.mean([r.total_seconds for r in runs])),
                           overhead_cpu=_mse(cpu) if all(c > 0 for c in cpu) else None,
                           trials=float(np.mean([r.n_trials for r in runs])),
                           one_epoch_share=float(np.mean(shares)) if len(shares) == len(runs) else None))
    return out


def _fmt(ms: tuple[float, float] | None) -> str:
    return "–" if ms is None else f"{ms[0]:.2f} ± {ms[1]:.2f}"


def _plot(summaries: Sequence[Summary], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for s in sorted(summaries, key=lambda s: _rank(s.variant)):
        x = np.arange(1, len(s.regret) + 1)
        m, e = np.array(s.regret), np.array(s.regret_se)
        ax.plot(x, m, label=f"{s.variant} (n={s.n_seeds})", ls=_style(s.variant))
        ax.fill_between(x, m - e, m + e, alpha=0.15)
    ax.set(xlabel="budget (epochs)", ylabel="regret (val accuracy)", title=title)
    _save_regret_plot(fig, ax, path)


def _save_regret_plot(fig: Any, ax: Any, path: Path) -> None:
    """Regret on a symlog axis from 0, a legend, and the figure written to ``path``."""
    import matplotlib.pyplot as plt

    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_ylim(bottom=0)  # regret is never negative; a band of mean - s.e. may be
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _style(variant: str) -> str:
    return "--" if "nocurve" in variant else ":" if _is_peer(variant) else "-"


def _plot_time(runs: dict[str, list[RunResult]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = time_grid([r for rs in runs.values() for r in rs])
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant in sorted(runs, key=_rank):
        m, e, n = mean_se(np.array([regret_at(r, grid) for r in runs[variant]]))
        ok = n >= max(1, len(runs[variant]) // 2)  # drawn once half the seeds have finished an epoch
        ax.plot(grid[ok], m[ok], label=f"{variant} (n={len(runs[variant])})", ls=_style(variant))
        ax.fill_between(grid[ok], (m - e)[ok], (m + e)[ok], alpha=0.15)
    ax.set(xlabel="simulated wall time (s): cached training + measured overhead", ylabel="regret (val accuracy)",
           title=title)
    ax.set_xscale("log")
    _save_regret_plot(fig, ax, path)


def _bench_facts(bench: str, cache_dir: Path | None) -> list[str]:
    """The easiness line of a benchmark, from its cache (nothing if the cache is absent)."""
    if cache_dir is None or not (Path(cache_dir) / bench / "meta.json").is_file():
        return []
    from fms_lightning.bench.table import Benchmark
    from fms_lightning.errors import ConfigurationError

    try:
        b = Benchmark(Path(cache_dir) / bench)
    except (ConfigurationError, OSError, KeyError):  # an incomplete or foreign cache only loses this line
        return []
    frac, frac5 = easiness(b.final, b.best_possible), easiness(b.final, b.best_possible, within=0.05)
    return [f"Easiness of `{bench}`: **{frac:.1%}** of its {len(b.final)} configs end within 1% of y* = "
            f"{b.best_possible:.3f} (final `val_acc` ≥ 0.99·y*; {frac5:.1%} within 5%), so n random full "
            f"trainings miss them all with probability ≈ {1 - frac:.2f}ⁿ (within 5%: {1 - frac5:.2f}ⁿ).", ""]


def _wall_section(bench: str, runs: dict[str, list[RunResult]], plot_dir: Path, md_dir: Path) -> list[str]:
    timed = {v: [r for r in rs if r.wall_seconds_at_epoch] for v, rs in runs.items() if "+transfer" not in v}
    timed = {v: rs for v, rs in timed.items() if rs}
    if not timed:
        return []
    png = plot_dir / f"regret-time-{bench}.png"
    _plot_time(timed, png, f"regret over simulated wall time: {bench}")
    sources = {r.train_seconds_source for rs in timed.values() for r in rs}
    lines = ["Regret against **simulated wall time**: the cached training seconds of the epochs each run trained, "
             "plus the overhead it measured (`suggest()`, or Optuna's ask/report/should_prune/tell), mean ± s.e.:"]
    if sources != {"cache"}:
        per_epoch = np.mean([r.train_seconds_at_epoch[0] for rs in timed.values() for r in rs])
        lines[-1] += (f" **the cache has no per-epoch training seconds, so every epoch is counted at a constant "
                      f"{per_epoch:.3g} s** ({'/'.join(sorted(sources))}: the build's mean seconds per epoch, or 1 s).")
    lines += ["", f"![regret over simulated wall time, {bench}]({Path(os.path.relpath(png, md_dir)).as_posix()})", ""]
    rnd = timed.get("random")
    if not rnd:
        return lines
    budget = min(len(r.regret) for r in rnd)
    points = [b for b in (50, 100) if b <= budget] or [budget]
    times = [float(np.mean([r.wall_seconds_at_epoch[b - 1] for r in rnd])) for b in points]
    head = " | ".join(f"regret @ {t:.1f} s (random's {b} epochs) | epochs by then" for b, t in zip(points, times))
    lines += [f"Regret at fixed simulated wall-clock points on `{bench}` (mean ± s.e.):", "",
              f"| method | seeds | {head} | wall time of the whole budget (s) |",
              "|" + "---|" * (2 * len(points) + 3)]
    for variant in sorted(timed, key=_rank):
        rs = timed[variant]
        cells = []
        for t in times:
            m, e, _ = mean_se(np.array([regret_at(r, [t]) for r in rs]))
            ep = np.mean([epochs_at(r, [t])[0] for r in rs])
            cells.append(f"{m[0]:.3f} ± {e[0]:.3f} | {ep:.1f}")
        end = _mse([r.wall_seconds_at_epoch[-1] for r in rs])
        lines.append(f"| {variant} | {len(rs)} | {' | '.join(cells)} | {end[0]:.1f} ± {end[1]:.1f} |")
    return lines + [""]


def _tables(summaries: Sequence[Summary], plot_dir: Path, md_dir: Path, *,
            runs: dict[tuple[str, str], list[RunResult]] | None = None,
            cache_dir: Path | None = None) -> list[str]:
    lines: list[str] = []
    by_bench: dict[str, list[Summary]] = defaultdict(list)
    for s in summaries:
        by_bench[s.benchmark].append(s)
    for bench, group in sorted(by_bench.items()):
        group.sort(key=lambda s: _rank(s.variant))
        paper_col = 0 if bench.startswith(("cnn", "zoo")) else 1
        paper_name = "Simple CNN Hub" if paper_col == 0 else "PTM Hub CIFAR-10"
        budgets = sorted({b for s in group for b in s.tau})
        head = " | ".join(f"τ@{b} (ours)" for b in budgets)
        lines += [f"### `{bench}`", "", *_bench_facts(bench, cache_dir),
                  f"| method | seeds | {head} | τ@50/100 (paper, {paper_name}) | regret@25 | regret@50 | "
                  f"final regret | overhead s/run | CPU s/run | trials (1-epoch share) |",
                  "|" + "---|" * (len(budgets) + 9)]
        for s in group:
            paper = PAPER_TABLE1.get(s.variant)
            pv = paper[paper_col] if paper else None
            ptxt = "–" if pv is None else f"{pv[0]:.2f} / {pv[1]:.2f}"
            taus = " | ".join(_fmt(s.tau.get(b)) for b in budgets)
            reg = np.array(s.regret)
            at = [f"{reg[b - 1]:.3f} ± {s.regret_se[b - 1]:.3f}" if reg.size >= b else "–" for b in (25, 50)]
            lines.append(f"| {s.variant} | {s.n_seeds} | {taus} | {ptxt} | {at[0]} | {at[1]} | "
                         f"{reg[-1]:.3f} ± {s.regret_se[-1]:.3f} | {_fmt(s.overhead)} | {_fmt(s.overhead_cpu)} | "
                         f"{s.trials:.1f}" + ("" if s.one_epoch_share is None else f" ({s.one_epoch_share:.0%})") + " |")
        png = plot_dir / f"regret-{bench}.png"
        _plot([s for s in group if "+transfer" not in s.variant], png, f"regret over budget: {bench}")
        lines += ["", f"![regret over budget, {bench}]({Path(os.path.relpath(png, md_dir)).as_posix()})", ""]
        if any(_is_peer(s.variant) for s in group):
            lines += ["The Optuna peers (`tpe*`, `sh`) have no surrogate that ranks every config, so their τ is "
                      "left out (–); their overhead is the time inside Optuna.", ""]
        if runs is not None:
            lines += _wall_section(bench, {v: rs for (b, v), rs in runs.items() if b == bench}, plot_dir, md_dir)
        ov = {s.variant: s.overhead[0] for s in group}
        cpu = {s.variant: s.overhead_cpu[0] for s in group if s.overhead_cpu is not None}
        if ov.get("dyhpo") and "fms-gmn" in ov:
            by_cpu = (f"; in CPU time **{cpu['fms-gmn'] / cpu['dyhpo']:.2f}×**"
                      if cpu.get("dyhpo") and "fms-gmn" in cpu else "")
            lines += [f"Overhead ratio FMS-GMN / DyHPO on `{bench}`: **{ov['fms-gmn'] / ov['dyhpo']:.2f}×** in wall "
                      f"time{by_cpu} (target ≤ 2×; the paper's is 16×).", ""]
        tr = {s.variant: s for s in group}
        if "fms-gmn+transfer" in tr and "fms-gmn" in tr:
            a, b = tr["fms-gmn+transfer"], tr["fms-gmn"]
            lines += ["Generalization (Fig. 3): FMS-GMN with the surrogate pretrained on the other task vs without:",
                      "", "| variant | seeds | regret@25 | regret@50 | final regret | τ@50 | τ@100 |",
                      "|---|---|---|---|---|---|---|"]
            for s in (a, b):
                reg = np.array(s.regret)
                at = lambda i: f"{reg[i - 1]:.3f}" if reg.size >= i else "–"  # noqa: E731
                lines.append(f"| {s.variant} | {s.n_seeds} | {at(25)} | {at(50)} | {reg[-1]:.3f} | "
                             f"{_fmt(s.tau.get(50))} | {_fmt(s.tau.get(100))} |")
            tpng = plot_dir / f"transfer-{bench}.png"
            _plot([a, b], tpng, f"generalization: {bench}")
            lines += ["", f"![generalization, {bench}]({Path(os.path.relpath(tpng, md_dir)).as_posix()})", ""]
    return lines


def write_report(results_dir: str | Path, out: str | Path, *, plot_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None, preamble: str = "", epilogue: str = "") -> Path:
    """Write the benchmark report (markdown with PNG plots) from saved runs.

    Args:
        results_dir: Folder of run JSONs (``<results_dir>/<benchmark>/<variant>-seed<k>.json``).
        out: The markdown file to write (e.g. ``BENCHMARKS.md``).
        plot_dir: Where PNGs go (default: ``<out's folder>/docs/bench``).
        cache_dir: Benchmark cache, to list build times from each ``meta.json``.
        preamble: Markdown placed before the generated tables (commands, notes).
        epilogue: Markdown placed after them (findings).

    Returns:
        The written file.
    """
    out = Path(out)
    plot_dir = (Path(plot_dir) if plot_dir is not None else out.parent / "docs" / "bench").resolve()
    results = load_results(results_dir)
    summaries = summarise(results)
    lines = [preamble.rstrip(), ""] if preamble else []
    if cache_dir is not None and Path(cache_dir).is_dir():
        lines += ["## Benchmarks built", "", "| benchmark | configs | epochs each | build time (s, last session) |",
                  "|---|---|---|---|"]
        for meta_path in sorted(Path(cache_dir).glob("*/meta.json")):
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            lines.append(f"| `{meta['name']}` | {meta['n_configs']} | {meta['spec']['epochs']} | "
                         f"{meta.get('build_seconds_last_session', '?')} |")
        lines.append("")
    lines += ["## Results (mean ± standard error over seeds)", ""]
    lines += (_tables(summaries, plot_dir, out.parent.resolve(), runs=_common_seed_runs(results),
                      cache_dir=Path(cache_dir) if cache_dir is not None else None)
              if summaries else ["No runs found.", ""])
    if epilogue:
        lines += [epilogue.rstrip(), ""]
    text = "\n".join(lines)
    return atomic_write(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
