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

    def kernel_seconds(model, inputs, m, device):
        return c_kernel + per_example * m + per_pair * m * m / 2

    monkeypatch.setattr(estimate, "_train_seconds", train_seconds)
    monkeypatch.setattr(estimate, "_kernel_seconds", kernel_seconds)
    monkeypatch.setattr(estimate, "_pair_seconds", lambda model, inputs, m, device: per_pair)
    data = RowData(torch.zeros(1000, 4), torch.zeros(1000, dtype=torch.long),
                   torch.zeros(200, 4), torch.zeros(200, dtype=torch.long))  # fmt: skip
    settings = TrainSettings("sgd", 1e-3, 10, 4, "mse")
    guess = estimate.estimate_seconds(None, data, settings, "cpu")
    assert math.isclose(guess["train"], per_step * 10 * 250, rel_tol=1e-9)
    pairs = 1000 * 1001 / 2 + 200 * 1000
    assert math.isclose(guess["kernel"], per_example * 1200 + per_pair * pairs, rel_tol=1e-9)
