"""Replay an HPO run against a cached benchmark: queries are answered from the table.

One run drives an :class:`~fms_lightning.optimizer.FMSOptimizer` for ``budget`` epochs.
Each suggestion is answered with the cached metric (and, for the fms methods, the cached
snapshot) of the epochs it asks for, so the run costs only surrogate time. Recorded:

- the regret after every epoch of budget (:func:`~fms_lightning.bench.metrics.regret_curve`);
- the wall time spent inside ``suggest()`` (surrogate fitting and acquisition): the overhead (and the process CPU time spent there,
  which other processes sharing the cores disturb far less),
  in total and cumulated at each epoch of budget (``overhead_at_epoch``);
- the cached training seconds of the epochs trained, cumulated at each epoch of budget
  (``train_seconds_at_epoch``, see :func:`epoch_costs`), so that the simulated wall time of a run
  after b epochs is ``train_seconds_at_epoch[b-1] + overhead_at_epoch[b-1]``;
- Kendall's τ at each of ``tau_budgets`` between the surrogate's predicted final-epoch metric
  and the true one, over every config of the benchmark. The τ of a budget b is taken right
  after the fit on the data of the first b epochs (the fit of the next ``suggest()``), so it
  does not change the run. For ``random``, observed final values are used and unobserved
  configs are tied below every observed one (:func:`~fms_lightning.bench.metrics.unobserved_fill`).

The Optuna peers (``tpe``, ``tpe-hyperband``, ``sh``, ...) are replayed by
:mod:`fms_lightning.bench.peers` with the same accounting; :func:`run_replay` dispatches to it.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fms_lightning.bench.metrics import kendall_tau, regret_curve, unobserved_fill
from fms_lightning.bench.table import Benchmark
from fms_lightning.errors import ConfigurationError
from fms_lightning.optimizer import FMSOptimizer, Method
from fms_lightning.study import atomic_write

__all__ = ["RunSettings", "RunResult", "VARIANTS", "VARIANT_OPTIONS", "GMN_TRAINING_VARIANTS", "epoch_costs", "run_replay",
           "run_grid", "variant_name"]

# variant name -> (method, learning_curve)
VARIANTS: dict[str, tuple[str, bool]] = {
    "random": ("random", True),
    "gp": ("gp", True),
    "dyhpo": ("dyhpo", True),
    "dyhpo-nocurve": ("dyhpo", False),
    "fms-flat": ("fms-flat", True),
    "fms-flat-nocurve": ("fms-flat", False),
    "fms-gmn": ("fms-gmn", True),
    "fms-gmn-nocurve": ("fms-gmn", False),
    "fms-gmn-frozen": ("fms-gmn", True),
    "fms-gmn-readout": ("fms-gmn", True),
    "fms-gmn-full": ("fms-gmn", True),
    "fms-gmn-full-last3": ("fms-gmn", True),
    "fms-nfn": ("fms-nfn", True),  # one-architecture hubs only (cnn, zoo); refused on diverse
    "fms-nfn-nocurve": ("fms-nfn", False),
}

# variant name -> FMSOptimizer(gmn_training=..., ...): the GMN-training ablation (issue 11). These
# run only when named; "fms-gmn" uses RunSettings.gmn_training (None: the optimizer's default).
GMN_TRAINING_VARIANTS: dict[str, dict[str, Any]] = {
    "fms-gmn-frozen": {"gmn_training": "frozen"},
    "fms-gmn-readout": {"gmn_training": "readout"},
    "fms-gmn-full": {"gmn_training": "full", "gmn_trunk_fits": None},
    "fms-gmn-full-last3": {"gmn_training": "full", "gmn_trunk_fits": 3},
}


# variant name -> extra FMSOptimizer options (the acquisition ablations; see acquisition.Acquisition)
VARIANT_OPTIONS: dict[str, dict[str, Any]] = {
    "dyhpo-horizon": {"acquisition": "ei-horizon"},
    "fms-gmn-horizon": {"acquisition": "ei-horizon"},
}
VARIANTS.update({"dyhpo-horizon": ("dyhpo", True), "fms-gmn-horizon": ("fms-gmn", True)})


def variant_name(method: str, learning_curve: bool) -> str:
    """``"dyhpo"`` or ``"dyhpo-nocurve"`` etc."""
    return method if learning_curve or method in ("random", "gp") else f"{method}-nocurve"


@dataclass(frozen=True)
class RunSettings:
    """Optimizer settings shared by every method of a benchmark run.

    Args:
        budget: Epochs of budget per run.
        tau_budgets: Budgets at which Kendall's τ is measured.
        n_candidates: New configs scored per suggestion.
        initial_steps: Adam steps of the from-scratch fits (the optimizer's default; paper: 1000).
        refine_steps: Adam steps of the warm-started refits (the optimizer's default; paper: 50).
        initial_warm_steps: ``FMSOptimizer(initial_warm_steps=...)``: None fits each fit of the
            initial phase from scratch.
        lr: The surrogate's Adam learning rate (``FMSOptimizer(lr=...)``; paper: 1e-3).
        pretrain_configs: Configs of the other task used to pretrain the surrogate (transfer runs).
        pretrain_steps: Adam steps of that pretraining.
        threads: ``torch.set_num_threads`` during the run.
        gmn_training: ``FMSOptimizer(gmn_training=...)`` of the ``fms-gmn`` variants that do not
            name one (None: the optimizer's default).

    Raises:
        ConfigurationError: If a value is out of range.
    """

    budget: int = 100
    tau_budgets: tuple[int, ...] = (50, 100)
    n_candidates: int = 256
    initial_steps: int = 200
    refine_steps: int = 10
    initial_warm_steps: int | None = None
    lr: float = 5e-3
    pretrain_configs: int = 32
    pretrain_steps: int = 500
    threads: int = 1
    gmn_training: str | None = None

    def __post_init__(self) -> None:
        if self.budget < 1 or any(not 1 <= b <= self.budget for b in self.tau_budgets):
            raise ConfigurationError(
                f"RunSettings received budget={self.budget}, tau_budgets={self.tau_budgets}; expected "
                f"budget >= 1 and every tau budget within [1, budget]."
            )


@dataclass(frozen=True)
class RunResult:
    """One replayed run (saved as JSON).

    Args:
        benchmark: Benchmark name.
        variant: Method variant (see :data:`VARIANTS`), with ``+transfer`` for pretrained runs.
        seed: Optimizer seed.
        regret: Regret after each epoch of budget `(budget,)`.
        tau: ``{budget: τ}`` (empty for the Optuna peers, which have no surrogate to rank with).
        overhead_seconds: Wall time inside ``suggest()`` (for a peer: inside Optuna).
        overhead_cpu_seconds: Process CPU time inside ``suggest()`` (robust to contended cores).
        total_seconds: Wall time of the run (including τ evaluation and loading snapshots).
        n_trials: Configs started.
        best_config: Config of the incumbent.
        overhead_at_epoch: Cumulative overhead seconds once each epoch of budget was processed `(budget,)`
            (empty in runs saved before it was recorded).
        train_seconds_at_epoch: Cumulative training seconds of the epochs trained `(budget,)`, from the
            cache (see :func:`epoch_costs`).
        train_seconds_source: Where those seconds come from: ``"cache"`` (measured per epoch at build
            time), ``"build-mean"`` (the build's mean seconds per epoch) or ``"constant"`` (1 s per epoch).
        epochs_per_trial: Epochs each started trial was trained, in start order (empty if unrecorded);
            shows how the budget was spread, e.g. the share of 1-epoch probes.
    """

    benchmark: str
    variant: str
    seed: int
    regret: tuple[float, ...]
    tau: dict[int, float] = field(default_factory=dict)
    overhead_seconds: float = 0.0
    overhead_cpu_seconds: float = 0.0
    total_seconds: float = 0.0
    n_trials: int = 0
    best_config: dict[str, Any] = field(default_factory=dict)
    overhead_at_epoch: tuple[float, ...] = ()
    train_seconds_at_epoch: tuple[float, ...] = ()
    train_seconds_source: str = ""
    epochs_per_trial: tuple[int, ...] = ()

    @property
    def wall_seconds_at_epoch(self) -> tuple[float, ...]:
        """Simulated wall time after each epoch of budget: training seconds + overhead (empty if unrecorded)."""
        if len(self.overhead_at_epoch) != len(self.regret) or len(self.train_seconds_at_epoch) != len(self.regret):
            return ()
        return tuple(a + b for a, b in zip(self.train_seconds_at_epoch, self.overhead_at_epoch))

    def to_json(self) -> str:
        """JSON text (τ keys become strings)."""
        d = asdict(self)
        d["tau"] = {str(k): v for k, v in self.tau.items()}
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> RunResult:
        """Inverse of :meth:`to_json`; runs saved before a field existed load with its default."""
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in json.loads(text).items() if k in known}
        d["tau"] = {int(k): float(v) for k, v in d.get("tau", {}).items()}
        for key in ("regret", "overhead_at_epoch", "train_seconds_at_epoch", "epochs_per_trial"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def epoch_costs(bench: Benchmark) -> tuple[np.ndarray, str]:
    """Training seconds of every (config, epoch) of ``bench`` `(n_configs, E)`, and where they come from.

    ``bench.epoch_seconds`` (measured at build time, ``metrics.json`` key ``epoch_seconds``) when the
    cache has it, ``"cache"``; otherwise one constant for every epoch: the build's mean seconds per
    epoch from ``meta.json`` (``"build-mean"``), or 1 s (``"constant"``).
    """
    shape = bench.curves.shape
    try:
        measured = getattr(bench, "epoch_seconds", None)
    except (OSError, KeyError, ValueError):  # a cache built before the seconds were recorded
        measured = None
    if measured is not None:
        arr = np.asarray(measured, dtype=float)
        if arr.shape == shape and np.all(np.isfinite(arr)) and np.all(arr >= 0):
            return arr, "cache"
    build = bench.meta.get("build_seconds_last_session")
    if isinstance(build, (int, float)) and build > 0:
        return np.full(shape, float(build) / (shape[0] * shape[1])), "build-mean"
    return np.ones(shape), "constant"


def _pretrain_trials(source: Benchmark, n: int, seed: int, uses_weights: bool) -> list[dict[str, Any]]:
    picks = np.random.default_rng([seed, 99]).choice(len(source.configs), size=min(n, len(source.configs)),
                                                     replace=False)
    out = []
    for k in sorted(int(p) for p in picks):
        t: dict[str, Any] = {"config": source.configs[k], "curve": source.curves[k].tolist()}
        if uses_weights:
            t["weights"] = [source.snapshot(k, e) for e in range(source.epochs + 1)]
        out.append(t)
    return out


def _tau(opt: FMSOptimizer, bench: Benchmark, final_seen: dict[int, float]) -> float:
    if opt.method is Method.RANDOM:
        pred = unobserved_fill([final_seen.get(k) for k in range(len(bench.configs))])
    else:
        pred = opt.predict(bench.configs)[0].numpy()
    return kendall_tau(pred, bench.final)


def run_replay(bench: Benchmark, variant: str, seed: int, settings: RunSettings | None = None, *,
               pretrain_from: Benchmark | None = None) -> RunResult:
    """Replay one HPO run of ``variant`` on ``bench``.

    Args:
        bench: The cached benchmark.
        variant: A key of :data:`VARIANTS`.
        seed: The optimizer's seed.
        settings: Shared settings (default :class:`RunSettings`).
        pretrain_from: Another task's benchmark (same hub) to pretrain the surrogate on (paper Fig. 3).

    Returns:
        The :class:`RunResult`.

    Raises:
        UnknownPresetError: For an unknown ``variant``.
        ConfigurationError: If ``pretrain_from`` has a different search space, or is used with ``random``.
    """
    from fms_lightning.bench import peers
    from fms_lightning.errors import UnknownPresetError

    if variant not in VARIANTS and not peers.is_peer(variant):
        raise UnknownPresetError(f"Unknown variant {variant!r}; expected one of {list(VARIANTS)}, or an Optuna "
                                 f"peer: {list(peers.PEERS)} (TPE ones also as '<name>-s<n>').")
    if peers.is_peer(variant):
        if pretrain_from is not None:
            raise ConfigurationError(f"pretrain_from with variant {variant!r}; transfer needs an FMS model-based "
                                     f"method, not an Optuna peer.")
        return peers.run_peer(bench, variant, seed, settings)
    settings = settings or RunSettings()
    method, curve = VARIANTS[variant]
    if pretrain_from is not None and (method == "random" or pretrain_from.space != bench.space):
        raise ConfigurationError(
            f"pretrain_from={pretrain_from.name!r} with variant {variant!r}; transfer needs a model-based "
            f"method and a benchmark of the same hub and grid as {bench.name!r}."
        )
    costs, source = epoch_costs(bench)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    start = time.perf_counter()
    try:
        opt = FMSOptimizer(
            bench.space, max_epochs=bench.epochs, method=method, mode="max", seed=seed, learning_curve=curve,
            n_candidates=settings.n_candidates, initial_steps=settings.initial_steps,
            refine_steps=settings.refine_steps, initial_warm_steps=settings.initial_warm_steps, lr=settings.lr, graph_fn=bench.graph_fn, starting_weights_fn=bench.starting_weights,
            model_factory=bench.model if method == "fms-nfn" else None,  # the NFN traces the hub's architecture
            **GMN_TRAINING_VARIANTS.get(
                variant, {"gmn_training": settings.gmn_training if method in ("fms-gmn", "fms-nfn") else None}
            ),
            **VARIANT_OPTIONS.get(variant, {}),
        )
        if pretrain_from is not None:
            opt.pretrain(_pretrain_trials(pretrain_from, settings.pretrain_configs, seed, opt.method.uses_weights),
                         steps=settings.pretrain_steps)
        values: list[float] = []
        tau: dict[int, float] = {}
        final_seen: dict[int, float] = {}
        overhead_at: list[float] = []
        train_at: list[float] = []
        overhead, overhead_cpu, trained, suggestion = 0.0, 0.0, 0.0, None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # surrogate fallbacks are counted as they are
            while len(values) < settings.budget:
                t0, c0 = time.perf_counter(), time.process_time()
                suggestion = opt.suggest()
                overhead += time.perf_counter() - t0
                overhead_cpu += time.process_time() - c0
                k = bench.index(suggestion.config)
                done = opt.trial(suggestion.trial_id).epochs
                for epoch in range(done + 1, suggestion.epoch + 1):
                    if len(values) >= settings.budget:
                        break
                    w = bench.snapshot(k, epoch) if opt.method.uses_weights else None
                    value = float(bench.curves[k, epoch - 1])
                    opt.observe(suggestion.trial_id, epoch, value, weights=w)
                    values.append(value)
                    trained += float(costs[k, epoch - 1])
                    overhead_at.append(overhead)
                    train_at.append(trained)
                    if epoch == bench.epochs:
                        final_seen[k] = value
                    if len(values) in settings.tau_budgets:
                        tau[len(values)] = _tau(opt, bench, final_seen)
        best = opt.best()
    finally:
        torch.set_num_threads(old_threads)
    name = variant + ("+transfer" if pretrain_from is not None else "")
    return RunResult(
        benchmark=bench.name, variant=name, seed=seed,
        regret=tuple(float(r) for r in regret_curve(values, bench.best_possible)), tau=tau,
        overhead_seconds=round(overhead, 4), overhead_cpu_seconds=round(overhead_cpu, 4), total_seconds=round(time.perf_counter() - start, 3),
        n_trials=len(opt.trial_ids), best_config=dict(best[1]) if best else {},
        epochs_per_trial=tuple(opt.trial(t).epochs for t in opt.trial_ids),
        overhead_at_epoch=tuple(round(s, 5) for s in overhead_at),
        train_seconds_at_epoch=tuple(round(s, 5) for s in train_at), train_seconds_source=source,
    )


def run_grid(bench: Benchmark, variants: Sequence[str], seeds: Sequence[int], out_dir: str | Path,
             settings: RunSettings | None = None, *, pretrain_from: Benchmark | None = None,
             log: Any = None) -> list[Path]:
    """Run every (variant, seed) not yet saved under ``out_dir/<bench>/`` (resumable).

    Returns:
        The result files (existing and new).
    """
    paths = []
    for seed in seeds:  # seed-major: a partial grid has every method for its first seeds
        for variant in variants:
            tag = variant + ("+transfer" if pretrain_from is not None else "")
            path = Path(out_dir) / bench.name / f"{tag}-seed{seed}.json"
            if not path.is_file():
                result = run_replay(bench, variant, seed, settings, pretrain_from=pretrain_from)
                text = result.to_json()
                atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))
                if log is not None:
                    taus = " ".join(f"tau@{b}={t:+.3f}" for b, t in sorted(result.tau.items()))
                    print(f"[{bench.name}] {tag:<22} seed {seed}: regret {result.regret[-1]:.4f} {taus} "
                          f"overhead {result.overhead_seconds:.1f}s (cpu {result.overhead_cpu_seconds:.1f}s)", file=log,
                          flush=True)
            paths.append(path)
    return paths
