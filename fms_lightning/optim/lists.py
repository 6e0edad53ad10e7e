"""Build your own ordered hyperparameter list: the cost C_τ (§2.5), greedy Algorithm 1 (§2.6), and LOO.

Glossary (notation of the NAdamW-lists paper, §2.5–2.6):

- ``P``: candidate points; ``N``: workloads; ``K``: the list length.
- ``f_{pi} = t_{pi} / T_i``: the step fraction of point ``p`` on workload ``i``:
  the first step ``t_{pi}`` at which the validation target was reached over
  the step budget ``T_i`` (``∞`` when never reached).
- ``L``: an ordered list of point indices; ``t_i = min_{p ∈ L} t_{pi}``.
- ``τ``: the penalty factor (default 2.0), the score of a workload no point reaches.
- ``C_τ(L) = Π_i min(t_i / T_i, τ)^{1/N}``: the cost of a list (§2.5); lower is better.
- Algorithm 1 (greedy): ``L ← L + argmin_{p ∉ L} C_τ(L + p)``, ``K`` times.
  Ties go to the lowest point index, so the result is deterministic.
- Exhaustive (§2.6, Appendix D): the ``K``-subset of lowest cost over all
  ``C(P, K)``; ordered here greedily within the subset so that it can be written
  as a list. Only for small ``P``.
- Leave-one-workload-out (§3.1): build the list on ``N − 1`` workloads and score
  it on the one held out.

The math functions take `numpy` arrays and are pure; :func:`build_list` and
:func:`leave_one_workload_out` wrap them around :class:`ListTrials`.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fms_lightning.errors import ConfigurationError
from fms_lightning.optim.list_trials import (
    ListTrials,
    WorkloadSpec,
    read_trials_csv,
    read_trials_studies,
)
from fms_lightning.optim.presets import NAdamWPoint, dump_hparam_list

__all__ = [
    "DEFAULT_TAU",
    "list_cost",
    "greedy_order",
    "exhaustive_subset",
    "BuiltList",
    "HeldOutResult",
    "build_list",
    "leave_one_workload_out",
    "write_list_yaml",
    "register",
]

DEFAULT_TAU = 2.0
Method = Literal["greedy", "exhaustive"]
_MAX_COMBINATIONS = 2_000_000


def _check_tau(tau: float) -> float:
    tau = float(tau)
    if not (math.isfinite(tau) and tau >= 1.0):
        raise ConfigurationError(
            f"The penalty factor tau must be a finite number >= 1 (the paper uses 2.0), got {tau!r}."
        )
    return tau


def _check_fractions(fractions: np.ndarray) -> np.ndarray:
    f = np.asarray(fractions, dtype=float)
    if f.ndim != 2 or f.shape[0] == 0 or f.shape[1] == 0:
        raise ConfigurationError(f"Step fractions must be a non-empty (P, N) array, got shape {f.shape}.")
    if np.isnan(f).any() or (f < 0).any():
        raise ConfigurationError("Step fractions must be >= 0, or inf for 'never reached'; got NaN or negatives.")
    return f


def _check_k(k: int, num_points: int) -> int:
    if isinstance(k, bool) or int(k) != k or not 1 <= int(k) <= num_points:
        raise ConfigurationError(f"The list length K must be an integer in 1..P={num_points}, got {k!r}.")
    return int(k)


def _geo_cost(best: np.ndarray, tau: float) -> np.ndarray:
    """``Π_i min(best_i, τ)^{1/N}`` over the last axis of ``best`` `(..., N)`."""
    clipped = np.minimum(best, tau)
    with np.errstate(divide="ignore"):  # a fraction of 0 gives log 0 = -inf, i.e. a cost of 0
        return np.exp(np.mean(np.log(clipped), axis=-1))


def list_cost(fractions: np.ndarray, indices: Sequence[int] | None = None, *, tau: float = DEFAULT_TAU) -> float:
    """The cost ``C_τ(L)`` of a list (§2.5 of the NAdamW-lists paper).

    Args:
        fractions: `(P, N)` step fractions ``t_{pi}/T_i``, ``inf`` where never reached.
        indices: The rows that form ``L``; default all ``P`` rows. An empty list
            reaches nothing and costs ``τ``.
        tau: The penalty factor ``τ >= 1``.

    Returns:
        ``Π_i min(min_{p ∈ L} f_{pi}, τ)^{1/N}``.

    Raises:
        ConfigurationError: For a bad array, an index out of range or ``τ < 1``.

    >>> f = np.array([[0.5, np.inf], [np.inf, 0.25]])
    >>> round(list_cost(f, [0], tau=2.0), 6)  # sqrt(0.5 * 2)
    1.0
    >>> round(list_cost(f, [0, 1]), 6)  # sqrt(0.5 * 0.25)
    0.353553
    """
    f = _check_fractions(fractions)
    tau = _check_tau(tau)
    idx = list(range(f.shape[0])) if indices is None else [int(i) for i in indices]
    bad = [i for i in idx if not 0 <= i < f.shape[0]]
    if bad:
        raise ConfigurationError(f"List indices {bad} are outside 0..{f.shape[0] - 1} (P={f.shape[0]} points).")
    if not idx:
        return tau
    return float(_geo_cost(f[idx].min(axis=0), tau))


def greedy_order(fractions: np.ndarray, k: int, *, tau: float = DEFAULT_TAU) -> tuple[int, ...]:
    """Algorithm 1 of the NAdamW-lists paper: greedily build an ordered list of ``K`` points.

    Args:
        fractions: `(P, N)` step fractions, ``inf`` where never reached.
        k: The list length ``K`` (``1..P``).
        tau: The penalty factor.

    Returns:
        ``K`` row indices, best first. By construction the first ``K − 1`` are
        the greedy list of length ``K − 1``.

    Raises:
        ConfigurationError: For a bad array, ``K`` or ``τ``.

    >>> f = np.array([[0.5, np.inf], [0.3, 0.9], [np.inf, 0.1]])
    >>> greedy_order(f, 2)  # point 2 alone costs sqrt(2 * 0.1); point 1 then complements it
    (2, 1)
    """
    f = _check_fractions(fractions)
    tau = _check_tau(tau)
    k = _check_k(k, f.shape[0])
    best = np.full(f.shape[1], np.inf)
    chosen: list[int] = []
    available = np.ones(f.shape[0], dtype=bool)
    for _ in range(k):
        costs = _geo_cost(np.minimum(best[None, :], f), tau)  # `(P,)`: C_τ(L + p) for every p
        costs[~available] = np.inf
        p = int(np.argmin(costs))  # first minimum: ties go to the lowest index
        chosen.append(p)
        available[p] = False
        best = np.minimum(best, f[p])
    return tuple(chosen)


def exhaustive_subset(
    fractions: np.ndarray, k: int, *, tau: float = DEFAULT_TAU, max_combinations: int = _MAX_COMBINATIONS
) -> tuple[int, ...]:
    """The ``K``-subset of lowest ``C_τ`` over all ``C(P, K)`` subsets (§2.6, Appendix D).

    The subset is returned ordered by Algorithm 1 run inside it, so that it can
    be written as a list; unlike the greedy list, its prefixes are not optimal
    for smaller budgets. Among subsets of equal cost, the lexicographically first wins.

    Args:
        fractions: `(P, N)` step fractions.
        k: The subset size ``K``.
        tau: The penalty factor.
        max_combinations: Refuse to enumerate more subsets than this.

    Returns:
        ``K`` row indices.

    Raises:
        ConfigurationError: For bad inputs, or more than ``max_combinations`` subsets.
    """
    f = _check_fractions(fractions)
    tau = _check_tau(tau)
    k = _check_k(k, f.shape[0])
    total = math.comb(f.shape[0], k)
    if total > max_combinations:
        raise ConfigurationError(
            f"The exhaustive search would score C({f.shape[0]}, {k}) = {total} subsets, more than "
            f"max_combinations={max_combinations}; use the greedy method, a smaller K, or raise the limit."
        )
    best_cost, best_set = math.inf, tuple(range(k))
    clipped = np.minimum(f, tau)
    for combo in itertools.combinations(range(f.shape[0]), k):
        cost = float(_geo_cost(clipped[list(combo)].min(axis=0), tau))
        if cost < best_cost:
            best_cost, best_set = cost, combo
    inner = greedy_order(f[list(best_set)], k, tau=tau)
    return tuple(best_set[j] for j in inner)


@dataclass(frozen=True)
class BuiltList:
    """An ordered list built from trials.

    Attributes:
        indices: `(K,)` row indices into the trials' points, best first.
        point_ids: `(K,)` the points' ids.
        points: `(K,)` the points.
        prefix_costs: `(K,)` ``C_τ`` of the first ``k`` points, ``k = 1..K``.
        reached: `(K,)` how many workloads the first ``k`` points reach.
        num_workloads: ``N``.
        tau: The penalty factor used.
        method: ``"greedy"`` or ``"exhaustive"``.
    """

    indices: tuple[int, ...]
    point_ids: tuple[str, ...]
    points: tuple[NAdamWPoint, ...]
    prefix_costs: tuple[float, ...]
    reached: tuple[int, ...]
    num_workloads: int
    tau: float
    method: str

    @property
    def cost(self) -> float:
        """``C_τ`` of the whole list."""
        return self.prefix_costs[-1]

    def format_table(self) -> str:
        """A plain-text table: rank, point id, cost of the prefix, workloads reached."""
        lines = [f"{'rank':>4}  {'point':<12}{'C_tau(first k)':>15}  reached", "-" * 42]
        for r, (pid, c, n) in enumerate(zip(self.point_ids, self.prefix_costs, self.reached), start=1):
            lines.append(f"{r:>4}  {pid:<12}{c:>15.6f}  {n}/{self.num_workloads}")
        return "\n".join(lines)


@dataclass(frozen=True)
class HeldOutResult:
    """One fold of leave-one-workload-out: a list built without ``workload``, scored on it.

    Attributes:
        workload: The held-out workload.
        point_ids: The list built on the other ``N − 1`` workloads.
        fraction: ``t_i / T_i`` of the list on the held-out workload (``inf`` if not reached).
        reached: Whether the list reached the held-out target.
        first_hit: 1-based rank of the first point that reached it, or ``None``.
        cost: ``min(fraction, τ)``: the held-out workload's factor of ``C_τ``.
    """

    workload: str
    point_ids: tuple[str, ...]
    fraction: float
    reached: bool
    first_hit: int | None
    cost: float


def _order(fractions: np.ndarray, k: int, tau: float, method: str) -> tuple[int, ...]:
    if method == "greedy":
        return greedy_order(fractions, k, tau=tau)
    if method == "exhaustive":
        return exhaustive_subset(fractions, k, tau=tau)
    raise ConfigurationError(f"Unknown list construction method {method!r}; expected 'greedy' or 'exhaustive'.")


def build_list(trials: ListTrials, k: int, *, tau: float = DEFAULT_TAU, method: Method = "greedy") -> BuiltList:
    """Build an ordered ``K``-point list from trials (Algorithm 1, or the exhaustive search).

    Args:
        trials: P points on N workloads.
        k: The list length ``K``.
        tau: The penalty factor.
        method: ``"greedy"`` (the paper's) or ``"exhaustive"`` (small ``P`` only).

    Returns:
        The list, with the cost of every prefix.

    Raises:
        ConfigurationError: For a bad ``K``, ``τ`` or method.
    """
    f = trials.fractions
    idx = _order(f, k, _check_tau(tau), method)
    best = np.minimum.accumulate(f[list(idx)], axis=0)  # `(K, N)`: t_i/T_i of each prefix
    costs = tuple(float(c) for c in _geo_cost(best, tau))
    reached = tuple(int(n) for n in np.isfinite(best).sum(axis=1))
    return BuiltList(
        idx, tuple(trials.point_ids[i] for i in idx), tuple(trials.points[i] for i in idx), costs, reached,
        len(trials.workloads), float(tau), method,
    )


def leave_one_workload_out(
    trials: ListTrials, k: int, *, tau: float = DEFAULT_TAU, method: Method = "greedy"
) -> tuple[HeldOutResult, ...]:
    """Leave-one-workload-out evaluation (§3.1): one fold per workload.

    Args:
        trials: P points on N >= 2 workloads.
        k: The list length ``K``.
        tau: The penalty factor.
        method: ``"greedy"`` or ``"exhaustive"``.

    Returns:
        One :class:`HeldOutResult` per workload, in workload order.

    Raises:
        ConfigurationError: With fewer than two workloads, or a bad ``K``, ``τ`` or method.
    """
    n = len(trials.workloads)
    if n < 2:
        raise ConfigurationError(f"Leave-one-workload-out needs at least 2 workloads, got {n}.")
    tau = _check_tau(tau)
    f = trials.fractions
    out = []
    for held in range(n):
        rest = [i for i in range(n) if i != held]
        idx = _order(f[:, rest], k, tau, method)
        column = f[list(idx), held]
        hits = np.flatnonzero(np.isfinite(column))
        frac = float(column.min())
        out.append(HeldOutResult(
            trials.workloads[held], tuple(trials.point_ids[i] for i in idx), frac, bool(hits.size),
            int(hits[0]) + 1 if hits.size else None, min(frac, tau),
        ))
    return tuple(out)


def write_list_yaml(built: BuiltList, path: str | os.PathLike[str], *, name: str = "custom") -> None:
    """Write a built list in the YAML format of ``load_hparam_list`` (and ``preset=path.yaml#rank``)."""
    dump_hparam_list(built.points, path, name=name)


# ----------------------------------------------------------------------------- CLI
def _parse_study_spec(text: str) -> WorkloadSpec:
    """``DIR,target=0.95[,mode=max][,budget=20][,metric=val_acc][,name=digits]``."""
    head, *pairs = text.split(",")
    opts: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key.strip() not in ("target", "mode", "budget", "metric", "name"):
            raise ConfigurationError(
                f"Bad --study option {pair!r} in {text!r}; expected key=value with key in "
                "target, mode, budget, metric, name (e.g. runs/wine,target=0.95,mode=max)."
            )
        opts[key.strip()] = value.strip()
    if "target" not in opts:
        raise ConfigurationError(f"--study {text!r} needs a target, e.g. {head},target=0.95.")
    try:
        return WorkloadSpec(
            head, float(opts["target"]), opts.get("mode", "max"),  # type: ignore[arg-type]
            float(opts["budget"]) if "budget" in opts else None, opts.get("metric"), opts.get("name"),
        )
    except ValueError as err:
        raise ConfigurationError(f"--study {text!r}: {err}") from err


def _cmd_build(args: argparse.Namespace) -> int:
    if bool(args.csv) == bool(args.study):
        raise ConfigurationError("lists build needs exactly one source: --csv FILE, or one or more --study SPEC.")
    if args.csv:
        trials = read_trials_csv(args.csv, missing=args.missing)
    else:
        trials = read_trials_studies([_parse_study_spec(s) for s in args.study], missing=args.missing)
    method: Method = "exhaustive" if args.exhaustive else "greedy"
    built = build_list(trials, args.k, tau=args.tau, method=method)
    print(f"{method} list of {args.k} from {len(trials.point_ids)} points on {len(trials.workloads)} workloads "
          f"(tau={args.tau}):")
    print(built.format_table())
    if args.loo:
        print("\nleave-one-workload-out:")
        print(f"{'held out':<20}{'reached':>8}  {'t/T':>9}  {'first hit':>9}  list")
        for r in leave_one_workload_out(trials, args.k, tau=args.tau, method=method):
            frac = f"{r.fraction:.4f}" if math.isfinite(r.fraction) else "inf"
            print(f"{r.workload:<20}{str(r.reached):>8}  {frac:>9}  {str(r.first_hit or '-'):>9}  "
                  f"{' '.join(r.point_ids)}")
    write_list_yaml(built, args.output, name=args.name)
    print(f"\nwrote {args.output}; use it with: fms-lightning demo preset={args.output}#1")
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``lists build ...`` to an argparse ``subparsers`` object.

    Args:
        subparsers: What ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The ``lists`` parser. Its subcommands set ``func``, which takes the
        parsed namespace and returns an exit status.
    """
    lists = subparsers.add_parser("lists", help="build your own ordered hyperparameter list from trials")
    sub = lists.add_subparsers(dest="lists_command", required=True)
    build = sub.add_parser(
        "build", help="greedy (Algorithm 1) or exhaustive list construction; writes a list YAML",
        description="Build an ordered list from trials of P points on N workloads (NAdamW-lists paper, §2.5-2.6).",
    )
    build.add_argument("--csv", help="trials CSV: columns point, workload, step, budget and the seven NAdamW fields")
    build.add_argument(
        "--study", action="append", default=[],
        help="a study folder as one workload: DIR,target=X[,mode=max|min][,budget=EPOCHS][,metric=NAME][,name=W]; "
        "repeat per workload",
    )
    build.add_argument("-k", "--k", type=int, default=5, help="list length K (default 5)")
    build.add_argument("--tau", type=float, default=DEFAULT_TAU, help="penalty factor τ (default 2.0)")
    build.add_argument("--exhaustive", action="store_true", help="best K-subset over all C(P, K) (small P only)")
    build.add_argument("--loo", action="store_true", help="also print leave-one-workload-out results")
    build.add_argument("--missing", choices=("error", "never"), default="error",
                       help="a (point, workload) pair without a trial: an error, or never reached")
    build.add_argument("--name", default="custom", help="the list's name in the YAML (default custom)")
    build.add_argument("-o", "--output", required=True, help="where to write the list YAML")
    build.set_defaults(func=_cmd_build)
    return lists
