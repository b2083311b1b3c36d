"""Time and peak memory of each ``captum-ntk reproduce`` row on synthetic data of the real size.

Full rows do not all fit a small CPU, so for each row this script times a few training steps
and the exact trNTK of 8 and 32 examples (and the contraction of 32 examples' features) on
inputs of the row's real shape and count, and extrapolates (``estimate_seconds``: steps x time
per step; per-example cost x N plus per-pair cost x pairs for the kernel). It also runs the MLP
row end to end at a small size
(--n-train 200 --n-test 100 --epochs 5) and reports that measured time. Peak memory is the
process's maximum resident set size (``resource.getrusage``), which only grows.

    python benchmarks/reproduce_rows.py            # all image rows (+ bert-cola with --text)
    python benchmarks/reproduce_rows.py --rows resnet34-cifar10 --memory-gb 8   # larger blocks
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from captum_ntk.apps.reproduce.data import RowData
from captum_ntk.apps.reproduce.estimate import estimate_seconds, format_duration
from captum_ntk.apps.reproduce.rows import ROWS
from captum_ntk.apps.reproduce.runner import ReproduceConfig, run_reproduce
from captum_ntk.apps.reproduce.synthetic import write_idx_dataset

SIZES = {  # (n_train, n_test, input shape) of the paper's rows
    "mnist": (10000, 1960, (1, 28, 28)),
    "fmnist": (10000, 2000, (1, 28, 28)),
    "cifar2": (10000, 2000, (3, 32, 32)),
    "cifar10": (50000, 10000, (3, 32, 32)),
}


def _maxrss_mb() -> float:
    scale = 1024 if sys.platform != "darwin" else 1024 * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / scale / 1024


def _data(name: str) -> RowData:
    spec = ROWS[name]
    key = "cifar2" if spec.dataset == "cifar10" and spec.classes else spec.dataset
    n_train, n_test, shape = SIZES[key]
    classes = 2 if spec.classes else 10
    gen = torch.Generator().manual_seed(0)
    return RowData(
        torch.rand(n_train, *shape, generator=gen),
        torch.randint(0, classes, (n_train,), generator=gen),
        torch.rand(n_test, *shape, generator=gen),
        torch.randint(0, classes, (n_test,), generator=gen),
    )


def _end_to_end() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = write_idx_dataset(Path(tmp) / "raw", n_train=1000, n_test=400, gz=True).parent
        start = time.perf_counter()
        config = ReproduceConfig(
            "mlp-mnist2",
            root,
            n_train=200,
            n_test=100,
            epochs=5,
            out=Path(tmp) / "out",
            show_progress=False,
            estimate=False,
        )
        run_reproduce(config, log=lambda _: None)
        print(
            f"measured  mlp-mnist2 --n-train 200 --n-test 100 --epochs 5: "
            f"{time.perf_counter() - start:.1f} s, peak RSS {_maxrss_mb():.0f} MB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", default=",".join(n for n in ROWS if ROWS[n].build is not None))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--memory-gb", type=float, default=None, help="the kernels' block budget (reproduce's)"
    )
    args = parser.parse_args()
    if args.memory_gb is not None and not args.memory_gb > 0:
        parser.error(f"--memory-gb must be positive, got {args.memory_gb}")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU")
    _end_to_end()
    for name in args.rows.split(","):
        spec = ROWS[name]
        if spec.build is None:
            print(f"skipped   {name}: text rows are timed with the CLI (needs the tokenizer)")
            continue
        data = _data(name)
        start = time.perf_counter()
        limit = None if args.memory_gb is None else int(args.memory_gb * 2**30)
        guess = estimate_seconds(spec.build(0), data, spec.train, "cpu", limit)
        print(
            f"estimated {name:<20} N={len(data.y_train)}+{len(data.y_test)}: training "
            f"{format_duration(guess['train'])} ({spec.train.epochs} epochs), exact trNTK "
            f"{format_duration(guess['kernel'])}; per seed {format_duration(guess['total'])} "
            f"(timing took {time.perf_counter() - start:.1f} s, peak RSS {_maxrss_mb():.0f} MB)"
        )


if __name__ == "__main__":
    main()
