"""End-to-end scale benchmark: streamed featurization into a disk store, train kernel on disk,
streaming top-k and the streamed kGLM fit, with time and peak memory.

::

    # GPU (meant for an H100/A100): ResNet-18, CIFAR-shaped synthetic inputs, proj-pNTK K=10240
    python benchmarks/bench_scale.py resnet --n-train 50000 --device cuda --store /scratch/s
    # the same at small N on the CPU, to check it runs
    python benchmarks/bench_scale.py resnet --n-train 256 --n-test 32 --device cpu --store /tmp/r
    # CPU: MLP proj-pNTK at N = 20,000 (peak resident memory from resource.getrusage)
    python benchmarks/bench_scale.py mlp --n-train 20000 --projection-dim 1024 --store /tmp/mlp
    # CPU: streamed kGLM alone on a synthetic 50k x 50k float32 kernel (10 GB on disk)
    python benchmarks/bench_scale.py kglm --n-train 50000 --iters 5 --dir /tmp/kglm --cold

Inputs are generated per index from a seed (the dataset is never held whole). Prints one line
per stage: seconds, peak resident memory (ru_maxrss) and, on CUDA, peak allocated GPU memory.
The ``kglm`` mode writes a cosine-normalised ``Z Z^T`` kernel (``Z`` a seeded ``(N, dim)``
float32 matrix with class structure) row block by row block to ``DIR/kernel.npy``, then times
``fit_streamed`` for a fixed number of L-BFGS (cross-entropy) and CG (squared loss) iterations,
per pass over the kernel; ``--cold`` evicts the file from the page cache first, so the first
pass reads the disk and the next ones show whether the page cache holds the file.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from captum_ntk.engine.data.streaming import StreamingSource
from captum_ntk.kernels.matrix import build_feature_map
from captum_ntk.store import featurize, streaming_topk, write_kernel
from captum_ntk.surrogate.streamed import fit_streamed


class SyntheticImages(Dataset):
    """Example ``i`` is drawn from a generator seeded with ``seed + i``: (x, label)."""

    def __init__(self, n: int, shape: tuple[int, ...], classes: int, seed: int) -> None:
        self.n, self.shape, self.classes, self.seed = n, shape, classes, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        gen = torch.Generator().manual_seed(self.seed + i)
        x = torch.randn(self.shape, generator=gen)
        return x, int(torch.randint(0, self.classes, (1,), generator=gen))


def _peak() -> str:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    text = f"peak RSS {rss:.2f} GiB"
    if torch.cuda.is_available():
        text += f", peak GPU {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    return text


def _stage(name: str, start: float, extra: str = "") -> None:
    print(f"{name:<28s} {time.perf_counter() - start:9.1f} s   {_peak()} {extra}", flush=True)


def _model(kind: str, device: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if kind == "resnet":
        from captum_ntk.apps.reproduce.paper_models import resnet18_cifar

        return resnet18_cifar(10, seed=0).eval().to(device), (3, 32, 32)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))  # digits-shaped
    return model.to(device), (64,)


def run(args: argparse.Namespace) -> None:
    """Featurize train and test, write the train kernel, top-k and the streamed kGLM."""
    model, shape = _model(args.model, args.device)
    store = Path(args.store)
    if args.fresh and store.exists():
        shutil.rmtree(store)
    fmap = build_feature_map(
        model, "proj_pntk", projection_dim=args.projection_dim, seed=0, device=args.device
    )
    print(
        f"{args.model}: P = {fmap.function.num_params:,}, K = {fmap.projection.projection_dim},"
        f" N_train = {args.n_train:,}, N_test = {args.n_test:,}, block {args.block}"
    )
    options = {"kernel": "proj_pntk", "projection": "rademacher", "seed": 0, "layers": None}
    train_data = SyntheticImages(args.n_train, shape, 10, seed=0)
    test_data = SyntheticImages(args.n_test, shape, 10, seed=10**9)
    start = time.perf_counter()
    train = featurize(
        fmap, StreamingSource(train_data, args.block), store / "train", options, show_progress=True
    )
    _stage("featurize train", start, f"({args.n_train / (time.perf_counter() - start):.0f} ex/s)")
    start = time.perf_counter()
    test = featurize(fmap, StreamingSource(test_data, args.block), store / "test", options)
    _stage("featurize test", start)
    start = time.perf_counter()
    streaming_topk(test, train, 10, device=args.device)
    _stage("top-10 test x train", start)
    if args.skip_kernel:
        return
    start = time.perf_counter()
    kernel = write_kernel(
        train, None, store / "kernel", normalize=True, device=args.device, show_progress=True
    )
    _stage("train kernel to disk", start, f"({kernel.nbytes / 2**30:.2f} GiB)")
    labels = torch.tensor([train_data[i][1] for i in range(args.n_train)])
    start = time.perf_counter()
    glm = fit_streamed(
        kernel,
        labels,
        alpha=1e-3,
        max_iter=args.kglm_iter,
        block_rows=args.kglm_block,
        device=args.device,
        show_progress=True,
    )
    elapsed = time.perf_counter() - start
    _stage(
        "streamed kGLM",
        start,
        f"({glm.n_iter_} L-BFGS iterations, {elapsed / max(glm.n_iter_, 1):.1f} s/iteration)",
    )


def _synthetic_features(n: int, dim: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit rows ``(N, dim)`` float32: shared + class + example parts (cosines ~0.3 / ~0.6)."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (n,), generator=gen)
    shared = torch.randn(dim, generator=gen)
    centres = torch.randn(classes, dim, generator=gen)
    z = shared + 1.2 * centres[labels] + 1.3 * torch.randn(n, dim, generator=gen)
    return z / z.norm(dim=1, keepdim=True), labels


def _write_kernel(z: torch.Tensor, path: Path, block: int) -> None:
    """``z z^T`` to ``path`` (.npy, float32), one row block at a time, then fsync."""
    n = z.shape[0]
    np.lib.format.open_memmap(path, "w+", np.float32, (n, n))._mmap.close()  # header only
    offset = np.load(path, mmap_mode="r").offset
    buffer = torch.empty(min(block, n), n)  # reused: fresh pages are slow to map
    with open(path, "r+b") as handle:
        handle.seek(offset)
        for start in tqdm(range(0, n, block), desc="kernel row blocks"):
            rows = z[start : start + block]
            out = torch.mm(rows, z.T, out=buffer[: rows.shape[0]])
            handle.write(memoryview(out.numpy()).cast("B"))
        handle.flush()
        os.fsync(handle.fileno())


def _read_pass(path: Path, block_bytes: int) -> float:
    """Seconds to read the file once (no computation)."""
    buffer = bytearray(block_bytes)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while handle.readinto(buffer):
            pass
    return time.perf_counter() - start


def _fit_line(name: str, glm, start: float, unit: str) -> None:
    passes = glm.pass_seconds_
    _stage(
        name,
        start,
        f"({glm.n_iter_} {unit} iterations, {len(passes)} passes; pass 1 {passes[0]:.1f} s, "
        f"later passes {np.mean(passes[1:]):.1f} s each [{min(passes[1:]):.1f}-"
        f"{max(passes[1:]):.1f}])",
    )


def run_kglm(args: argparse.Namespace) -> None:
    """Synthetic kernel on disk, then fixed-iteration streamed fits (log_loss, squared)."""
    n, directory = args.n_train, Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "kernel.npy"
    torch.manual_seed(0)
    z, labels = _synthetic_features(n, args.dim, 10)
    print(f"kglm: N = {n:,}, dim = {args.dim}, block {args.kglm_block} rows, {args.iters} iters")
    start = time.perf_counter()
    _write_kernel(z, path, args.kglm_block)
    _stage("write kernel (+fsync)", start, f"({path.stat().st_size / 2**30:.2f} GiB)")
    block_bytes = args.kglm_block * n * 4
    if args.cold:  # drop this file's pages from the page cache (no root needed)
        with open(path, "rb") as handle:
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    for i in (1, 2):
        seconds = _read_pass(path, block_bytes)
        _stage(f"read pass {i} (no compute)", time.perf_counter() - seconds)
    targets = z @ torch.randn(args.dim, 10, generator=torch.Generator().manual_seed(1))
    options = {"alpha": 1e-3, "max_iter": args.iters, "block_rows": args.kglm_block}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the iterations are capped on purpose
        start = time.perf_counter()
        glm = fit_streamed(path, labels, device="cpu", show_progress=True, **options)
        _fit_line("streamed kGLM log_loss", glm, start, "L-BFGS")
        start = time.perf_counter()
        glm = fit_streamed(
            path, 4 * targets, loss="squared", device="cpu", show_progress=True, **options
        )
        _fit_line("streamed kGLM squared", glm, start, "CG")
    if not args.keep_kernel:
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=("resnet", "mlp", "kglm"))
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--n-test", type=int, default=1_000)
    parser.add_argument("--projection-dim", type=int, default=None, help="default: 10240 cap")
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--store", default="bench_scale_store")
    parser.add_argument("--fresh", action="store_true", help="delete the store first")
    parser.add_argument("--skip-kernel", action="store_true", help="no N x N kernel / kGLM")
    parser.add_argument("--kglm-iter", type=int, default=1000, help="L-BFGS iterations cap")
    parser.add_argument("--kglm-block", type=int, default=2048, help="kernel rows per block")
    parser.add_argument("--dir", default="bench_scale_kglm", help="kglm: kernel directory")
    parser.add_argument("--iters", type=int, default=5, help="kglm: L-BFGS / CG iterations")
    parser.add_argument("--dim", type=int, default=256, help="kglm: feature dimension")
    parser.add_argument("--cold", action="store_true", help="kglm: evict the file first")
    parser.add_argument("--keep-kernel", action="store_true", help="kglm: keep kernel.npy")
    args = parser.parse_args()
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    np.random.seed(0)
    if args.model == "kglm":
        run_kglm(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
