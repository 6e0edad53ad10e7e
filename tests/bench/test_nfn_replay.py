"""method="fms-nfn": a replay on the tiny cnn benchmark, and the optimizer's hub check at construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fms_lightning.bench.build import build_benchmark
from fms_lightning.bench.replay import RunResult, RunSettings, run_replay
from fms_lightning.bench.spec import bench_spec
from fms_lightning.bench.table import Benchmark
from fms_lightning.errors import ConfigurationError
from fms_lightning.examples.hub_models import DigitsConvNet, DigitsResNet
from fms_lightning.optimizer import FMSOptimizer
from fms_lightning.space import HubChoice, LogUniform, SearchSpace
from fms_lightning.surrogate.readout import GMNTraining, SnapshotFeaturizer
from fms_lightning.weightspace import NFNEncoder

SETTINGS = RunSettings(budget=8, tau_budgets=(4, 8), n_candidates=8, initial_steps=10, refine_steps=3)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Benchmark:
    root = tmp_path_factory.mktemp("bench-cache")
    return Benchmark(build_benchmark(bench_spec("cnn", "mirror", "tiny"), root, progress=False))


@pytest.mark.parametrize("variant", ["fms-nfn", "fms-nfn-nocurve"])
def test_replay_fms_nfn(bench: Benchmark, variant: str) -> None:
    result = run_replay(bench, variant, seed=3, settings=SETTINGS)
    regret = np.array(result.regret)
    assert regret.shape == (SETTINGS.budget,) and np.all(np.diff(regret) <= 1e-12) and np.all(regret >= 0)
    assert set(result.tau) == {4, 8} and all(-1.0 <= t <= 1.0 for t in result.tau.values())
    assert RunResult.from_json(result.to_json()) == result


def _space() -> SearchSpace:
    return SearchSpace({"hub": HubChoice(("a", "b", "c")), "lr": LogUniform(1e-4, 1e-1)})


def test_fms_nfn_trains_an_nfn_of_the_hub_architecture() -> None:
    weights = {m: DigitsConvNet(4, 8).state_dict() for m in "abc"}
    opt = FMSOptimizer(_space(), max_epochs=2, method="fms-nfn", starting_weights_fn=lambda c: weights[c["hub"]],
                       model_factory=lambda c: DigitsConvNet(4, 8), n_candidates=4, initial_steps=3)
    assert isinstance(opt.featurizer, SnapshotFeaturizer) and opt.gmn_training is GMNTraining.READOUT
    assert isinstance(opt.featurizer.encoder, NFNEncoder)
    s = opt.suggest()
    opt.observe(s.trial_id, 1, 0.5, weights=DigitsConvNet(4, 8).state_dict())
    assert opt.suggest().epoch in (1, 2)


def test_fms_nfn_refuses_a_hub_of_mixed_architectures_naming_the_members() -> None:
    weights = {"a": DigitsConvNet(4, 8), "b": DigitsConvNet(6, 8), "c": DigitsConvNet(4, 8)}
    with pytest.raises(ConfigurationError, match=r"1 of 3 members differ .*'b': parameter 'features.0.weight' has "
                                                 r"shape \(6, 1, 3, 3\)"):
        FMSOptimizer(_space(), max_epochs=2, method="fms-nfn",
                     starting_weights_fn=lambda c: weights[c["hub"]].state_dict())
    torch.manual_seed(0)
    with pytest.raises(ConfigurationError, match=r"'layer1.shortcut' reads the output of 'stem.2', which "
                                                 r"'layer1.conv1' already read"):
        FMSOptimizer(_space(), max_epochs=2, method="fms-nfn", model_factory=lambda c: DigitsResNet(4),
                     starting_weights_fn=lambda c: DigitsResNet(4).state_dict())


def test_only_the_encoder_training_methods_take_gmn_training() -> None:
    with pytest.raises(ConfigurationError, match="only method='fms-gmn' or 'fms-nfn'"):
        FMSOptimizer(_space(), max_epochs=2, method="dyhpo", gmn_training="full")
