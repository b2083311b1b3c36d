"""Two gloo processes on the CPU give exactly the single-process store, kernel and top-k."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

from captum_ntk.store import shard, world

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import store_worker as worker  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_shard_covers_blocks_contiguously():
    for n in (0, 1, 5, 17):
        for size in (1, 2, 3, 8):
            ranges = [shard(n, r, size) for r in range(size)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert world() == (0, 1)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")
def test_two_gloo_ranks_equal_one_process(tmp_path):
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            OMP_NUM_THREADS="1",
        )
        cmd = [
            sys.executable,
            str(HERE / "store_worker.py"),
            "distributed",
            str(tmp_path / "multi"),
            str(tmp_path / "multi.npz"),
        ]
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait(timeout=180) for p in procs]
    assert codes == [0, 0]
    worker.distributed_run_single(str(tmp_path / "single"), str(tmp_path / "single.npz"))
    multi, single = np.load(tmp_path / "multi.npz"), np.load(tmp_path / "single.npz")
    for key in ("kernel", "scores", "indices"):
        assert np.array_equal(multi[key], single[key]), key
    for name in ("features.npy", "sq_norms.npy"):
        for split in ("train", "test"):
            a = np.load(tmp_path / "multi" / split / name)
            assert np.array_equal(a, np.load(tmp_path / "single" / split / name))
    # rank 0 held rows 0..2, rank 1 rows 10..13: gathered in rank order
    assert multi["gathered"].tolist() == [0, 1, 2, 10, 11, 12, 13]
    markers = os.listdir(tmp_path / "multi" / "train" / "done")
    assert len(markers) == 7  # ceil(53 / 8) blocks, split between the two ranks
