"""Building your own list: C_τ, greedy Algorithm 1, exhaustive, LOO, readers, YAML and the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import doctest
import math

import numpy as np
import pytest

from fms_lightning.errors import ConfigurationError, FMSError
from fms_lightning.optim import NADAMW_LIST, NAdamWPoint, load_hparam_list
from fms_lightning.optim import list_trials as list_trials_module
from fms_lightning.optim import lists as lists_module
from fms_lightning.optim.list_trials import (
    ListTrials,
    WorkloadSpec,
    read_trials_csv,
    read_trials_studies,
    write_trials_csv,
)
from fms_lightning.optim.lists import (
    build_list,
    exhaustive_subset,
    greedy_order,
    leave_one_workload_out,
    list_cost,
    register,
    write_list_yaml,
)

INF = math.inf


def _trials(fractions: list[list[float]], budgets: list[float] | None = None) -> ListTrials:
    f = np.array(fractions, dtype=float)
    p, n = f.shape
    b = np.array(budgets if budgets is not None else [100.0] * n)
    points = tuple(dataclasses.replace(NADAMW_LIST[i % 5], lr=0.001 * (i + 1)) for i in range(p))
    return ListTrials(tuple(f"p{i}" for i in range(p)), points, tuple(f"w{i}" for i in range(n)), f * b, b)


# ----------------------------------------------------------------------- cost
def test_cost_hand_computed() -> None:
    f = np.array([[0.5, INF], [0.3, 0.9], [INF, 0.1]])
    assert list_cost(f, [0]) == pytest.approx(math.sqrt(0.5 * 2.0))  # never reached counts as τ = 2
    assert list_cost(f, [0, 1]) == pytest.approx(math.sqrt(0.3 * 0.9))  # t_i is the best over L
    assert list_cost(f, [0, 2]) == pytest.approx(math.sqrt(0.5 * 0.1))
    assert list_cost(f, [2], tau=1.5) == pytest.approx(math.sqrt(1.5 * 0.1))
    assert list_cost(f, []) == 2.0
    assert list_cost(np.full((2, 3), INF)) == pytest.approx(2.0)
    # Three workloads: a cube root of the product.
    g = np.array([[0.2, 0.4, 0.8]])
    assert list_cost(g) == pytest.approx((0.2 * 0.4 * 0.8) ** (1 / 3))


def test_cost_is_order_invariant_and_monotone() -> None:
    rng = np.random.default_rng(0)
    f = rng.uniform(0.05, 1.0, size=(6, 4))
    f[rng.uniform(size=f.shape) < 0.3] = INF
    assert list_cost(f, [0, 3, 5]) == pytest.approx(list_cost(f, [5, 0, 3]))
    assert list_cost(f, [0, 3, 5]) <= list_cost(f, [0, 3]) <= list_cost(f, [0])


@pytest.mark.parametrize("tau", [0.5, math.nan, math.inf])
def test_bad_tau_is_rejected(tau: float) -> None:
    with pytest.raises(ConfigurationError, match="tau must be a finite number >= 1"):
        list_cost(np.ones((1, 1)), tau=tau)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ConfigurationError, match=r"outside 0\.\.1"):
        list_cost(np.ones((2, 1)), [2])
    with pytest.raises(ConfigurationError, match="non-empty"):
        list_cost(np.ones(3))
    with pytest.raises(ConfigurationError, match=r"K must be an integer in 1\.\.P=2"):
        greedy_order(np.ones((2, 1)), 3)
    with pytest.raises(FMSError, match="NaN or negatives"):
        greedy_order(np.array([[-1.0]]), 1)


# --------------------------------------------------------------------- greedy
def test_greedy_hand_computed() -> None:
    # First pick: C(p0) = sqrt(0.5*2) = 1, C(p1) = sqrt(0.27) ≈ 0.52, C(p2) = sqrt(2*0.1) ≈ 0.447 -> p2.
    # Second: C(p2+p0) = sqrt(0.05) ≈ 0.224, C(p2+p1) = sqrt(0.03) ≈ 0.173 -> p1.
    f = np.array([[0.5, INF], [0.3, 0.9], [INF, 0.1]])
    assert greedy_order(f, 1) == (2,)
    assert greedy_order(f, 2) == (2, 1)
    assert greedy_order(f, 3) == (2, 1, 0)


def test_tau_changes_the_choice() -> None:
    # p0 is fast on one workload only; p1 reaches both. C(p0) = sqrt(0.05 τ), C(p1) = 0.5.
    f = np.array([[0.05, INF], [0.5, 0.5]])
    assert greedy_order(f, 1, tau=2.0) == (0,)  # sqrt(0.1) ≈ 0.316 < 0.5
    assert greedy_order(f, 1, tau=6.0) == (1,)  # sqrt(0.3) ≈ 0.548 > 0.5


def test_ties_go_to_the_lowest_index() -> None:
    f = np.array([[INF, INF], [0.4, 0.4], [0.4, 0.4]])
    assert greedy_order(f, 2) == (1, 0)  # after p1, adding p0 or p2 changes nothing: p0 wins the tie


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("shape", [(8, 3), (12, 5), (6, 1)])
def test_ordering_property(seed: int, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(seed)
    f = rng.uniform(0.05, 1.0, size=shape)
    f[rng.uniform(size=shape) < 0.4] = INF
    full = greedy_order(f, shape[0])
    assert sorted(full) == list(range(shape[0]))
    for k in range(1, shape[0] + 1):
        assert greedy_order(f, k) == full[:k]


def test_each_greedy_step_is_the_best_single_addition() -> None:
    rng = np.random.default_rng(7)
    f = rng.uniform(0.05, 1.0, size=(9, 4))
    f[rng.uniform(size=f.shape) < 0.4] = INF
    order = greedy_order(f, 5)
    for k in range(5):
        rest = [p for p in range(9) if p not in order[:k]]
        costs = [list_cost(f, [*order[:k], p]) for p in rest]
        assert list_cost(f, order[: k + 1]) == pytest.approx(min(costs))


# ----------------------------------------------------------------- exhaustive
def test_greedy_vs_exhaustive_hand_computed() -> None:
    # Greedy takes the all-rounder p0 (cost 0.3), then p1: sqrt(0.1*0.3) ≈ 0.173.
    # The best pair is {p1, p2}: sqrt(0.1*0.1) = 0.1.
    f = np.array([[0.3, 0.3], [0.1, INF], [INF, 0.1]])
    assert greedy_order(f, 2) == (0, 1)
    assert exhaustive_subset(f, 2) == (1, 2)
    assert list_cost(f, exhaustive_subset(f, 2)) == pytest.approx(0.1)
    assert list_cost(f, greedy_order(f, 2)) == pytest.approx(math.sqrt(0.03))


@pytest.mark.parametrize("seed", range(4))
def test_exhaustive_is_never_worse_than_greedy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    f = rng.uniform(0.05, 1.0, size=(8, 4))
    f[rng.uniform(size=f.shape) < 0.4] = INF
    for k in (1, 2, 3, 4):
        assert list_cost(f, exhaustive_subset(f, k)) <= list_cost(f, greedy_order(f, k)) + 1e-12
    assert exhaustive_subset(f, 1) == greedy_order(f, 1)


def test_exhaustive_refuses_huge_searches() -> None:
    with pytest.raises(ConfigurationError, match="C\\(40, 10\\) = 847660528 subsets"):
        exhaustive_subset(np.ones((40, 2)), 10)


# ------------------------------------------------------------- build and LOO
def test_build_list_reports_prefix_costs() -> None:
    built = build_list(_trials([[0.5, INF], [0.3, 0.9], [INF, 0.1]]), 3)
    assert built.point_ids == ("p2", "p1", "p0")
    assert built.prefix_costs == pytest.approx((math.sqrt(0.2), math.sqrt(0.03), math.sqrt(0.03)))
    assert built.reached == (1, 2, 2)
    assert built.cost == built.prefix_costs[-1]
    assert "p2" in built.format_table()
    with pytest.raises(ConfigurationError, match="expected 'greedy' or 'exhaustive'"):
        build_list(_trials([[0.5]]), 1, method="random")  # type: ignore[arg-type]


def test_leave_one_workload_out_hand_computed() -> None:
    trials = _trials([[0.2, 0.2, INF], [INF, INF, 0.5], [0.5, 0.5, 0.5]])
    folds = leave_one_workload_out(trials, 1)
    assert [r.workload for r in folds] == ["w0", "w1", "w2"]
    # Without w0 (or w1): C(p0) = sqrt(0.2*2) ≈ 0.63, C(p1) = 1, C(p2) = 0.5 -> p2, which reaches w0 at 0.5.
    assert folds[0].point_ids == ("p2",) and folds[0].fraction == pytest.approx(0.5)
    assert folds[0].reached and folds[0].first_hit == 1 and folds[0].cost == pytest.approx(0.5)
    assert folds[1].point_ids == ("p2",)
    # Without w2: p0 (0.2) wins and never reaches w2, which then costs τ.
    assert folds[2].point_ids == ("p0",) and not folds[2].reached
    assert folds[2].first_hit is None and folds[2].cost == 2.0 and math.isinf(folds[2].fraction)
    # With K=2 the w2 fold adds a point that reaches it second.
    assert leave_one_workload_out(trials, 2)[2].first_hit == 2


def test_loo_needs_two_workloads() -> None:
    with pytest.raises(ConfigurationError, match="at least 2 workloads, got 1"):
        leave_one_workload_out(_trials([[0.5], [0.2]]), 1)


# ------------------------------------------------------------------ readers
def test_csv_round_trip(tmp_path) -> None:
    trials = _trials([[0.5, INF, 0.25], [0.3, 0.9, INF]], budgets=[100.0, 40.0, 8.0])
    path = tmp_path / "trials.csv"
    write_trials_csv(trials, path)
    back = read_trials_csv(path)
    assert back.point_ids == trials.point_ids and back.workloads == trials.workloads
    assert back.points == trials.points
    np.testing.assert_array_equal(back.steps, trials.steps)
    np.testing.assert_array_equal(back.budgets, trials.budgets)
    assert "never" in path.read_text()


def _csv(tmp_path, rows: list[str]):
    header = "point,workload,step,budget,lr,warmup_fraction,beta1,beta2,weight_decay,dropout,label_smoothing"
    path = tmp_path / "t.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


HP = "0.001,0.05,0.9,0.99,0.01,0.0,0.1"


def test_csv_never_spellings_and_missing_pairs(tmp_path) -> None:
    path = _csv(tmp_path, [f"a,w1,,10,{HP}", f"a,w2,inf,20,{HP}", f"b,w1,5,10,{HP}"])
    with pytest.raises(ConfigurationError, match="1 \\(point, workload\\) pairs have no trial.*missing='never'"):
        read_trials_csv(path)
    trials = read_trials_csv(path, missing="never")
    assert np.isinf(trials.steps).sum() == 3 and trials.steps[1, 0] == 5.0


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([f"a,w1,5,10,{HP}", f"a,w1,6,10,{HP}"], "a second row for point 'a'"),
        ([f"a,w1,5,10,{HP}", f"b,w1,6,12,{HP}"], "workload 'w1' has budget 12.0"),
        ([f"a,w1,soon,10,{HP}"], "step 'soon' is not a number"),
        ([f"a,w1,5,10,{HP}", "a,w2,5,10,0.002,0.05,0.9,0.99,0.01,0.0,0.1"], "other hyperparameters"),
        (["a,w1,5,10,0.001,0.05,1.5,0.99,0.01,0.0,0.1"], "beta1=1.5 is invalid"),
    ],
)
def test_csv_errors_say_where(tmp_path, rows: list[str], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        read_trials_csv(_csv(tmp_path, rows))


def test_csv_missing_columns(tmp_path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("point,workload,step\na,w,1\n")
    with pytest.raises(ConfigurationError, match="lacks the columns \\['budget', 'lr'"):
        read_trials_csv(path)
    with pytest.raises(ConfigurationError, match="does not exist"):
        read_trials_csv(tmp_path / "nope.csv")


def test_read_from_studies(tmp_path) -> None:
    from fms_lightning.study import Study

    a, b = NADAMW_LIST[0].to_dict(), NADAMW_LIST[1].to_dict()
    curves = {"wine": ([0.5, 0.8, 0.9], [0.6, 0.7, 0.75]), "digits": ([0.4, 0.6, 0.7], [0.7, 0.95, 0.97])}
    for name, (ca, cb) in curves.items():
        with Study(tmp_path / name) as study:
            for config, curve in ((a, ca), (b, cb)):
                tid = study.add_trial({**config, "seed": 0})  # extra keys are ignored
                for epoch, v in enumerate(curve, start=1):
                    study.add_observation(tid, epoch, v, metrics={"val_acc": v, "val_loss": 1 - v})
    specs = [
        WorkloadSpec(str(tmp_path / "wine"), 0.8),
        WorkloadSpec(str(tmp_path / "digits"), 0.1, mode="min", metric="val_loss", budget=10, name="d"),
    ]
    trials = read_trials_studies(specs)
    assert trials.workloads == ("wine", "d") and trials.point_ids == ("p1", "p2")
    assert trials.points == (NADAMW_LIST[0], NADAMW_LIST[1])
    np.testing.assert_array_equal(trials.budgets, [3.0, 10.0])
    np.testing.assert_array_equal(trials.steps, [[2.0, INF], [INF, 2.0]])
    with pytest.raises(ConfigurationError, match="no metric 'f1'"):
        read_trials_studies([WorkloadSpec(str(tmp_path / "wine"), 0.8, metric="f1")])


def test_study_configs_must_be_nadamw_points(tmp_path) -> None:
    from fms_lightning.study import Study

    with Study(tmp_path / "s") as study:
        study.add_trial({"lr": 0.1})
    with pytest.raises(ConfigurationError, match="lacks the NAdamW fields \\['warmup_fraction'"):
        read_trials_studies([WorkloadSpec(str(tmp_path / "s"), 0.5, budget=3)])


def test_workload_spec_validates() -> None:
    with pytest.raises(ConfigurationError, match="mode must be 'min' or 'max', got 'up'"):
        WorkloadSpec("x", 0.5, mode="up")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="budget must be > 0"):
        WorkloadSpec("x", 0.5, budget=0)


# --------------------------------------------------------------- YAML and CLI
def test_yaml_output_loads_as_a_preset_list(tmp_path) -> None:
    from fms_lightning.examples.demo import resolve_preset_spec

    trials = _trials([[0.5, INF], [0.3, 0.9], [INF, 0.1]])
    built = build_list(trials, 2)
    path = tmp_path / "mine.yaml"
    write_list_yaml(built, path, name="mine")
    loaded = load_hparam_list(path)
    assert loaded == built.points == (trials.points[2], trials.points[1])
    assert resolve_preset_spec(f"{path}#2") == trials.points[1]
    assert all(isinstance(p, NAdamWPoint) for p in loaded)


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fms-lightning")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_builds_a_list(tmp_path, capsys) -> None:
    trials = _trials([[0.3, 0.3], [0.1, INF], [INF, 0.1]])
    write_trials_csv(trials, tmp_path / "t.csv")
    out = tmp_path / "list.yaml"
    assert _run_cli(["lists", "build", "--csv", str(tmp_path / "t.csv"), "-k", "2", "--loo", "-o", str(out)]) == 0
    assert load_hparam_list(out) == (trials.points[0], trials.points[1])
    text = capsys.readouterr().out
    assert "leave-one-workload-out" in text and "preset=" in text
    assert _run_cli(["lists", "build", "--csv", str(tmp_path / "t.csv"), "-k", "2", "--exhaustive",
                     "--tau", "1.5", "-o", str(out)]) == 0
    assert load_hparam_list(out) == (trials.points[1], trials.points[2])


def test_cli_study_specs(tmp_path) -> None:
    from fms_lightning.study import Study

    with Study(tmp_path / "w") as study:
        tid = study.add_trial(NADAMW_LIST[2].to_dict())
        study.add_observation(tid, 1, 0.9)
    out = tmp_path / "l.yaml"
    assert _run_cli(["lists", "build", "--study", f"{tmp_path / 'w'},target=0.8,budget=4", "-k", "1",
                     "-o", str(out)]) == 0
    assert load_hparam_list(out) == (NADAMW_LIST[2],)
    with pytest.raises(ConfigurationError, match="needs a target"):
        _run_cli(["lists", "build", "--study", str(tmp_path / "w"), "-o", str(out)])
    with pytest.raises(ConfigurationError, match="Bad --study option 'goal=1'"):
        _run_cli(["lists", "build", "--study", f"{tmp_path / 'w'},goal=1", "-o", str(out)])
    with pytest.raises(ConfigurationError, match="exactly one source"):
        _run_cli(["lists", "build", "-o", str(out)])


@pytest.mark.parametrize("module", [lists_module, list_trials_module])
def test_docstring_examples(module) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
