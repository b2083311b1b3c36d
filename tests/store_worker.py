"""Factories and a subprocess entry point for the store, CLI and distributed tests.

Run as a script::

    python tests/store_worker.py featurize DIR [KILL_AFTER]   # SIGKILL itself after KILL_AFTER blocks
    python tests/store_worker.py distributed DIR OUT.npz      # under RANK / WORLD_SIZE / MASTER_* env
"""

from __future__ import annotations

import os
import signal
import sys

import torch
from torch import nn
from torch.utils.data import TensorDataset

N_TRAIN, N_TEST, BLOCK = 53, 11, 8
OPTIONS = {"kernel": "proj_pntk", "projection": "rademacher", "seed": 3, "layers": None}


def make_model() -> nn.Module:
    """A small float64 MLP with fixed weights."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 24), nn.Tanh(), nn.Linear(24, 4)).double()


def _data(n: int, seed: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=gen, dtype=torch.float64)
    return TensorDataset(x, torch.randint(0, 4, (n,), generator=gen))


def make_data() -> TensorDataset:
    """The training set (N_TRAIN examples with labels)."""
    return _data(N_TRAIN, 1)


def make_test_data() -> TensorDataset:
    """The test set (N_TEST examples)."""
    return _data(N_TEST, 2)


def feature_map(model: nn.Module):
    from captum_ntk.kernels.matrix import build_feature_map

    return build_feature_map(model, "proj_pntk", projection_dim=64, seed=OPTIONS["seed"])


def featurize_run(directory: str, kill_after: int | None) -> None:
    """Featurizes the training set; with ``kill_after`` SIGKILLs itself on the next block."""
    from captum_ntk.engine.data.streaming import StreamingSource
    from captum_ntk.store import featurize

    fmap = feature_map(make_model())
    calls = {"n": 0}
    compute = fmap.__call__

    class Killing(type(fmap)):
        def __call__(self, inputs):
            if inputs.num_examples > 1:  # not the one-example shape probe
                if kill_after is not None and calls["n"] == kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
                calls["n"] += 1
            return compute(inputs)

    fmap.__class__ = Killing
    featurize(fmap, StreamingSource(make_data(), BLOCK), directory, OPTIONS)


def distributed_run_single(directory: str, output: str) -> None:
    """Features, train kernel and top-k (sharded under a process group), saved by rank 0."""
    import numpy as np

    from captum_ntk.engine.data.streaming import StreamingSource
    from captum_ntk.store import all_gather_rows, featurize, streaming_topk, world, write_kernel

    fmap = feature_map(make_model())
    train = featurize(fmap, StreamingSource(make_data(), BLOCK), f"{directory}/train", OPTIONS)
    test = featurize(fmap, StreamingSource(make_test_data(), 4), f"{directory}/test", OPTIONS)
    kernel = write_kernel(train, None, f"{directory}/kernel", normalize=True)
    scores, indices = streaming_topk(test, train, 5)
    rank, size = world()
    rows = torch.arange(rank * 10, rank * 10 + 3 + rank, dtype=torch.float64)
    gathered = all_gather_rows(rows, sum(3 + r for r in range(size)))
    if rank == 0:
        np.savez(
            output,
            kernel=np.array(kernel),
            scores=scores.numpy(),
            indices=indices.numpy(),
            gathered=gathered.numpy(),
        )


def distributed_run(directory: str, output: str) -> None:
    """:func:`distributed_run_single` under a gloo process group (env:// rendezvous)."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        distributed_run_single(directory, output)
        # leave together: a rank that tears gloo down while its peer is still finishing can
        # make the peer abort ("terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, target = sys.argv[1], sys.argv[2]
    if mode == "featurize":
        featurize_run(target, int(sys.argv[3]) if len(sys.argv) > 3 else None)
    else:
        distributed_run(target, sys.argv[3])
