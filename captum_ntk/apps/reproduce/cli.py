r"""The ``reproduce`` subcommand of ``captum-ntk``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["add_reproduce_parser", "run_reproduce_command"]

_DESCRIPTION = """\
Reproduce a row of Engel et al.'s Table 1 / 2 on your own copy of the data (nothing is
downloaded): train the paper's network (or load --checkpoint), compute the kernel(s), fit the
kGLM surrogate and print tau_K, TAD and R_miss (mean ± standard error over --seeds) beside the
paper's value. Writes report.md, results.json and figures into --out.

--data-root: MNIST / Fashion-MNIST: the folder with train-images-idx3-ubyte[.gz] etc. (or its
raw/ subfolder); CIFAR-10: cifar-10-batches-py (or its parent); CoLA: the folder with
train.tsv and dev.tsv.
"""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _kernels(text: str) -> tuple[str, ...]:
    from .runner import KERNEL_CHOICES

    names = tuple(k.strip().lower().replace("-", "_") for k in text.split(",") if k.strip())
    unknown = [k for k in names if k not in KERNEL_CHOICES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown kernel(s) {unknown or text!r}; choose from {', '.join(KERNEL_CHOICES)}"
        )
    return names


def _surrogates(text: str) -> tuple[str, ...]:
    names = tuple(k.strip().lower() for k in text.split(",") if k.strip())
    if not names or any(n not in ("paper", "default") for n in names):
        raise argparse.ArgumentTypeError(f"choose from paper, default; got {text!r}")
    return names


def add_reproduce_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    r"""Adds ``reproduce`` to the subcommands of ``captum-ntk``.

    Args:
        commands: the ``add_subparsers`` object of the main parser.

    Returns:
        argparse.ArgumentParser: the subcommand's parser.
    """
    from .rows import ROWS

    parser = commands.add_parser(
        "reproduce",
        help="reproduce a row of the paper's tables on your own data files",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "row",
        metavar="ROW",
        nargs="?",
        choices=sorted(ROWS),
        help=", ".join(ROWS) + " (optional with --quick: all CPU-feasible rows)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the CPU-feasible rows (or ROW) at reduced sizes, in minutes; data looked for "
        "under --data-root in torchvision's layout (MNIST/, FashionMNIST/, "
        "cifar-10-batches-py/)",
    )
    parser.add_argument("--data-root", type=Path, required=True, metavar="DIR")
    parser.add_argument(
        "--seeds",
        type=_positive,
        default=1,
        metavar="N",
        help="networks trained with seeds 0..N-1 (default: 1)",
    )
    parser.add_argument(
        "--kernels",
        type=_kernels,
        default=None,
        metavar="LIST",
        help="comma-separated kernels (default: the row's)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--n-train", type=_positive, default=None, metavar="N")
    parser.add_argument("--n-test", type=_positive, default=None, metavar="N")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="PATH",
        help="state_dict to load instead of training ({seed} is replaced)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output folder (default: reproduce_output/ROW)",
    )
    parser.add_argument(
        "--store",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder of trained networks and kernels: a rerun reuses what it holds",
    )
    parser.add_argument(
        "--surrogates",
        type=_surrogates,
        default=("paper", "default"),
        metavar="LIST",
        help="paper (the authors' kGLM), default (this library's) or both (default: both)",
    )
    parser.add_argument(
        "--lds-subsets",
        type=int,
        default=0,
        metavar="M",
        help="LDS of each surrogate against M networks retrained on random halves (default: "
        "0, off; retrains M networks: use with --quick or a small --n-train)",
    )
    parser.add_argument(
        "--lds-runs",
        type=_positive,
        default=2,
        metavar="R",
        help="retrainings per subset of the LDS ground truth, averaged (default: 2)",
    )
    parser.add_argument(
        "--lds-seeds",
        choices=("shared", "independent"),  # lds.LDS_SEEDS (not imported: no torch here)
        default="shared",
        help="shared: run r of every subset starts from the same seed (default; the binary "
        "rows' margins move with the seed more than with the data); independent: TRAK's",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="processes for the LDS retrainings (default: 0)"
    )
    parser.add_argument("--epochs", type=_positive, default=None, help="override the epochs")
    parser.add_argument("--lr", type=float, default=None, help="override the learning rate")
    parser.add_argument("--alpha", type=float, default=None, help="kGLM L2 (default: 1e-4)")
    parser.add_argument("--projection-dim", type=_positive, default=10240, metavar="K")
    parser.add_argument(
        "--model-path",
        type=Path,
        default=None,
        metavar="DIR",
        help="local Hugging Face folder for bert-cola (default: MiniLM)",
    )
    parser.add_argument(
        "--memory-gb",
        type=_positive_float,
        default=None,
        metavar="G",
        help="GiB for the kernels' blocks, and for the estimate (default: the device's, 2 GiB "
        "on a CPU); more memory, larger blocks, faster exact kernels of big networks",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--no-estimate", action="store_true", help="skip the time estimate")
    parser.add_argument("--no-plots", action="store_true", help="skip the figures")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def run_reproduce_command(args: argparse.Namespace) -> int:
    r"""Runs ``captum-ntk reproduce`` from parsed arguments; returns the exit status."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import torch

    from .rows import PAPER_ALPHA
    from .runner import ReproduceConfig, run_reproduce

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    config = ReproduceConfig(
        row=args.row or "mlp-mnist2",
        data_root=args.data_root,
        seeds=args.seeds,
        kernels=args.kernels,
        device=args.device,
        n_train=args.n_train,
        n_test=args.n_test,
        checkpoint=args.checkpoint,
        out=args.out,
        store=args.store,
        epochs=args.epochs,
        lr=args.lr,
        alpha=PAPER_ALPHA if args.alpha is None else args.alpha,
        projection_dim=args.projection_dim,
        memory_limit=None if args.memory_gb is None else int(args.memory_gb * 2**30),
        model_path=args.model_path,
        plots=not args.no_plots,
        show_progress=not args.no_progress,
        estimate=not args.no_estimate,
        surrogates=args.surrogates,
        lds_subsets=args.lds_subsets,
        lds_runs=args.lds_runs,
        lds_seeds=args.lds_seeds,
        workers=args.workers,
    )
    try:
        if args.quick:
            from .quick import QUICK_ROWS, run_quick

            if args.row is not None and args.row not in QUICK_ROWS:
                raise ValueError(f"--quick runs {', '.join(QUICK_ROWS)}, not {args.row}.")
            run_quick(config, [args.row] if args.row else None)
        elif args.row is None:
            raise ValueError("name a ROW, or pass --quick to run every CPU-feasible row.")
        else:
            run_reproduce(config)
    except (FileNotFoundError, ValueError) as error:
        print(f"captum-ntk reproduce: error: {error}", file=sys.stderr)
        return 2
    return 0
