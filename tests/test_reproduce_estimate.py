"""The cost estimator separates fixed costs from per-step, per-example and per-pair costs."""

from __future__ import annotations

import math

import torch

from captum_ntk.apps.reproduce import estimate
from captum_ntk.apps.reproduce.data import RowData
from captum_ntk.apps.reproduce.training import TrainSettings


def test_fixed_costs_are_paid_once(monkeypatch) -> None:
    c_train, per_step = 2.0, 0.01  # a training call: set-up, then steps
    c_kernel, per_example, per_pair = 3.0, 0.05, 1e-4

    def train_seconds(model, data, settings, steps, device):
        return c_train + per_step * steps

    def kernel_seconds(model, inputs, m, device, memory_limit):
        return c_kernel + per_example * m + per_pair * m * m / 2

    monkeypatch.setattr(estimate, "_train_seconds", train_seconds)
    monkeypatch.setattr(estimate, "_kernel_seconds", kernel_seconds)
    monkeypatch.setattr(estimate, "_pair_seconds", lambda model, inputs, m, device, limit: per_pair)
    data = RowData(torch.zeros(1000, 4), torch.zeros(1000, dtype=torch.long),
                   torch.zeros(200, 4), torch.zeros(200, dtype=torch.long))  # fmt: skip
    settings = TrainSettings("sgd", 1e-3, 10, 4, "mse")
    guess = estimate.estimate_seconds(None, data, settings, "cpu")
    assert math.isclose(guess["train"], per_step * 10 * 250, rel_tol=1e-9)
    pairs = 1000 * 1001 / 2 + 200 * 1000
    assert math.isclose(guess["kernel"], per_example * 1200 + per_pair * pairs, rel_tol=1e-9)


def _mlp_row() -> tuple[torch.nn.Module, RowData]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    data = RowData(torch.randn(40, 4), torch.zeros(40, dtype=torch.long),
                   torch.randn(10, 4), torch.zeros(10, dtype=torch.long))  # fmt: skip
    return model, data


def test_kernels_are_timed_under_the_runs_memory_budget(monkeypatch) -> None:
    # The row's kernels are computed under the device's default budget (2 GiB on a CPU) with
    # automatic blocks; the estimate must time (and take the memory of) that, not a bigger one.
    seen: list[dict] = []

    def kernel_matrix(model, batch, **options):
        seen.append(options)
        return torch.zeros(len(batch), len(batch))

    monkeypatch.setattr(estimate, "_train_seconds", lambda *args: 1.0)
    monkeypatch.setattr(estimate, "_pair_seconds", lambda *args: 1e-6)
    monkeypatch.setattr(estimate, "kernel_matrix", kernel_matrix)
    model, data = _mlp_row()
    settings = TrainSettings("sgd", 1e-3, 1, 4, "mse")
    estimate.estimate_seconds(model, data, settings, "cpu")
    assert [o["memory_limit"] for o in seen] == [2 << 30, 2 << 30]
    assert all("batch_size" not in o for o in seen)
    seen.clear()
    estimate.estimate_seconds(model, data, settings, "cpu", memory_limit=12345)
    assert [o["memory_limit"] for o in seen] == [12345, 12345]


def test_pair_timing_holds_only_one_blocks_features(monkeypatch) -> None:
    # With a budget whose blocks hold 3 examples, the contraction is timed on 3 examples'
    # features, not on the 32 asked for.
    counts: list[int] = []
    real_build = estimate.build_feature_map

    class Spy:
        def __init__(self, fmap) -> None:
            self.fmap = fmap

        def __call__(self, inputs):
            counts.append(inputs.num_examples)
            return self.fmap(inputs)

        def __getattr__(self, name):
            return getattr(self.fmap, name)

    monkeypatch.setattr(estimate, "build_feature_map", lambda *a, **k: Spy(real_build(*a, **k)))
    monkeypatch.setattr(estimate, "auto_batch_size", lambda fmap, probe, limit: 3)
    model, data = _mlp_row()
    seconds = estimate._pair_seconds(model, data.x_train, 32, "cpu", 2 << 30)
    assert counts == [3]
    assert math.isfinite(seconds) and seconds > 0
