"""Picklable retraining tasks for the counterfactual-metric tests (importable by spawned workers).

``AdditiveTask``: a "training" whose outputs are exactly additive in the training examples,
``f_S(z) = sum_{i in S} tau[z, i] + noise(seed)``, so the true attribution is ``tau``.
"""

from __future__ import annotations

import os
import sys

import torch
from torch import Tensor, nn


class Outputs(nn.Module):
    """A 'model' holding fixed test outputs."""

    def __init__(self, values: Tensor) -> None:
        super().__init__()
        self.values = nn.Parameter(values, requires_grad=False)

    def forward(self) -> Tensor:
        return self.values


def read_outputs(model: nn.Module) -> Tensor:
    return model()


class AdditiveTask:
    """``train(indices, seed)``: outputs ``tau[:, indices].sum(1) + noise * N(0, 1)[seed]``."""

    def __init__(self, tau: Tensor, noise: float = 0.0, fail_after: int | None = None) -> None:
        self.tau, self.noise, self.fail_after, self.calls = tau, noise, fail_after, 0

    def __call__(self, indices: Tensor, seed: int) -> nn.Module:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        generator = torch.Generator().manual_seed(seed)
        jitter = torch.randn(self.tau.shape[0], generator=generator, dtype=torch.float64)
        return Outputs(self.tau[:, indices].sum(dim=1) + self.noise * jitter)


def make_tau(n_test: int = 6, n_train: int = 40, seed: int = 0) -> Tensor:
    return torch.randn(
        n_test, n_train, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def distributed_main(output: str) -> None:
    """One rank of a 2-process gloo run of the harness (launched by the test)."""
    import torch.distributed as dist

    from captum_ntk.metrics import RetrainingHarness

    dist.init_process_group("gloo")
    harness = RetrainingHarness(AdditiveTask(make_tau(), noise=0.1), read_outputs, 40)
    truth = harness.subset_ground_truth(num_subsets=7, runs=2, seed=3)
    calls = torch.tensor([harness.train_fn.calls])
    dist.all_reduce(calls)
    if dist.get_rank() == 0:
        torch.save({"outputs": truth.run_outputs, "calls": int(calls)}, output)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    distributed_main(sys.argv[1])
