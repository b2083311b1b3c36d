"""The cost estimator: fixed costs paid once, the run's budget and blocks, and the feature blocks
the kernel assembly really computes (recomputation included)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from captum_ntk import TrNTKAttribution
from captum_ntk.apps.reproduce import estimate
from captum_ntk.apps.reproduce.data import RowData
from captum_ntk.apps.reproduce.training import TrainSettings
from captum_ntk.kernels import assembly


def _row(n: int = 1000, n_test: int = 200, width: int = 4) -> RowData:
    return RowData(torch.randn(n, width), torch.zeros(n, dtype=torch.long),
                   torch.randn(n_test, width), torch.zeros(n_test, dtype=torch.long))  # fmt: skip


def test_fixed_costs_are_paid_once(monkeypatch) -> None:
    c_train, per_step = 2.0, 0.01  # a training call: set-up, then steps
    costs = estimate.KernelCosts(block=10, block_bytes=100, block_seconds=0.3, pair_seconds=1e-4)

    def train_seconds(model, data, settings, steps, device):
        return c_train + per_step * steps

    monkeypatch.setattr(estimate, "_train_seconds", train_seconds)
    monkeypatch.setattr(estimate, "_kernel_costs", lambda *args: costs)
    settings = TrainSettings("sgd", 1e-3, 10, 4, "mse")
    guess = estimate.estimate_seconds(None, _row(), settings, "cpu")  # features fit: once each
    assert math.isclose(guess["train"], per_step * 10 * 250, rel_tol=1e-9)
    pairs = 1000 * 1001 / 2 + 200 * 1000
    assert math.isclose(guess["kernel"], 0.3 * (100 + 20) + 1e-4 * pairs, rel_tol=1e-9)


def test_feature_blocks_when_the_training_features_do_not_fit() -> None:
    # 10 training blocks of 100 bytes, budget 1000 // 4 = 250: groups of 2 blocks (5 groups),
    # the columns past each group recomputed (8 + 6 + 4 + 2 + 0), then 2 test blocks (one
    # group) against all 10 training blocks.
    assert estimate.feature_blocks(100, 20, 10, 100, 1000) == 10 + 2 + 20 + 10
    assert estimate.feature_blocks(100, 20, 10, 100, 4000) == 12  # 10 x 100 <= 1000: kept
    # a block larger than a quarter of the budget still makes a group of one block
    assert estimate.feature_blocks(30, 0, 10, 500, 1000) == 3 + 2 + 1 + 0


@pytest.mark.parametrize("limit_blocks", [2.5, 40.0])
def test_feature_blocks_match_the_engine(monkeypatch, limit_blocks) -> None:
    # Count the feature blocks a real TrNTKAttribution computes for the train kernel and test x
    # train under a tight budget (recomputation) and a loose one (kept), against the model.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x, y, x_test = torch.randn(40, 6), torch.randint(0, 3, (40,)), torch.randn(12, 6)
    probe = TrNTKAttribution(model, TensorDataset(x, y), batch_size=4)
    feats = assembly.FeatureCache(probe.feature_map, probe.train_inputs.slice(0, 4), 4).get(0)
    block_bytes = assembly.nbytes(feats)
    limit = int(4 * limit_blocks * block_bytes)  # a row group of limit_blocks blocks
    attr = TrNTKAttribution(model, TensorDataset(x, y), batch_size=4, memory_limit=limit)
    assert attr.block_size == 4
    computed = []
    real = assembly.widen_features
    monkeypatch.setattr(assembly, "widen_features", lambda f: computed.append(1) or real(f))
    attr.compute_train_kernel()
    attr.influence(x_test)
    expected = estimate.feature_blocks(40, 12, 4, block_bytes, limit)
    assert len(computed) == expected
    assert (expected > 13) == (limit_blocks < 10)  # the tight budget recomputes


def test_the_runs_budget_and_block_are_timed(monkeypatch) -> None:
    # The row's kernels run under the device's default budget (2 GiB on a CPU), in blocks of
    # min(batch_size, auto_batch_size): the estimate times one such block and no bigger one.
    seen: list[int] = []
    real_build = estimate.build_feature_map

    def build(*args, **kwargs):
        seen.append(kwargs["memory_limit"])
        return real_build(*args, **kwargs)

    monkeypatch.setattr(estimate, "_train_seconds", lambda *args: 1.0)
    monkeypatch.setattr(estimate, "build_feature_map", build)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    settings = TrainSettings("sgd", 1e-3, 1, 4, "mse")
    estimate.estimate_seconds(model, _row(40, 10), settings, "cpu")
    estimate.estimate_seconds(model, _row(40, 10), settings, "cpu", memory_limit=1 << 20)
    assert seen == [2 << 30, 1 << 20]
    monkeypatch.setattr(estimate, "auto_batch_size", lambda fmap, probe, limit: 3)
    costs = estimate._kernel_costs(model, torch.randn(40, 4), "cpu", 2 << 30, 64)
    assert costs.block == 3 and costs.block_bytes > 0
    assert costs.block_seconds > 0 and costs.pair_seconds > 0
    assert estimate._kernel_costs(model, torch.randn(40, 4), "cpu", 2 << 30, 2).block == 2


def test_format_duration_picks_a_readable_unit() -> None:
    day = 86400
    assert [estimate.format_duration(s) for s in (42, 210, 3 * 3600, 4 * day, 3 * 365.25 * day)] == [
        "42 s", "3.5 min", "3.0 h", "4.0 days", "3 years"
    ]  # fmt: skip
    assert estimate.format_duration(12345 * 365.25 * day) == "12,345 years"
