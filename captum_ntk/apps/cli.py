r"""The ``captum-ntk`` command line.

::

    captum-ntk demo                      # full demo
    captum-ntk demo --target labels      # the paper's label-fitted kGLM
    captum-ntk demo --quick --no-plots   # seconds
    captum-ntk demo --kernels trntk,proj_trntk,ck --output out/
    captum-ntk evaluate --task digits-mlp --workers 2   # tau_K and LDS against retraining
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]

_DEMO_DESCRIPTION = """\
Train three small classifiers on scikit-learn's 8x8 digits (offline) -- an MLP and a CNN with
10 classes and a single-logit MLP on two digits (3 vs 8 by default) -- then, for each model and kernel, fit the
kernel GLM surrogate (kGLM, Eq. 1 of Engel et al.) on the train kernel and measure its
faithfulness to the network on the test set: Kendall tau_K of the correct-class probabilities,
test accuracy differential TAD and misclassification coincidence R_miss (the paper's Table 2).

The kGLM is fitted with the library's defaults (fit_surrogate's default target, alpha chosen
by cross-validation); --target labels gives the paper's label-fitted kGLM. On the trNTK the
label-fitted and distilled kGLMs are compared.

Writes into --output: report.md (the tables, warnings and figures), results.json, Fig.-2-style
class attribution plots, top-5 proponent / opponent / most-similar exemplar grids (trNTK) and
the alpha-selection curves.
"""

_KERNEL_HELP = (
    "comma-separated kernels, or 'all' (default): trntk, trntk0, pntk, pntk0, proj_trntk, "
    "proj_pntk, ck, embedding. 'entk' adds an eNTK timing on 8 test digits (no kGLM)."
)


def _kernels(text: str) -> tuple[str, ...]:
    from .demo import ALL_KERNELS

    if text.strip().lower() == "all":
        return ALL_KERNELS
    names = tuple(k.strip().lower().replace("-", "_") for k in text.split(",") if k.strip())
    unknown = [k for k in names if k not in ALL_KERNELS and k != "entk"]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown kernel(s) {unknown or text!r}; choose from {', '.join(ALL_KERNELS)}, entk"
        )
    return names


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


_TARGETS = ("logits", "probabilities", "predictions", "labels")


def _alpha(text: str) -> float | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number >= 0, got {text!r}")
    return value


def _pair(text: str) -> tuple[int, int]:
    try:
        digits = tuple(int(d) for d in text.split(","))
    except ValueError:
        digits = ()
    if len(digits) != 2 or len(set(digits)) != 2 or not all(0 <= d <= 9 for d in digits):
        raise argparse.ArgumentTypeError(f"expected two different digits like 3,8, got {text!r}")
    return digits  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``captum-ntk`` (``demo``, ``reproduce``, ``featurize``, ``score``,
    ``evaluate``)."""
    parser = argparse.ArgumentParser(
        prog="captum-ntk",
        description="Neural-tangent-kernel surrogate models and data attribution for PyTorch.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    _add_demo_parser(commands)
    from .reproduce.cli import add_reproduce_parser

    add_reproduce_parser(commands)
    from .featurize import add_store_parsers

    add_store_parsers(commands)
    from .counterfactual.evaluate import add_evaluate_parser

    add_evaluate_parser(commands)
    return parser


def _add_demo_parser(commands: argparse._SubParsersAction) -> None:
    """The ``demo`` subcommand and its options."""
    demo = commands.add_parser(
        "demo",
        help="faithfulness table and attribution figures on sklearn's digits",
        description=_DEMO_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--output",
        "-o",
        type=Path,
        default=Path("captum_ntk_demo_output"),
        metavar="DIR",
        help="output folder (default: %(default)s)",
    )
    demo.add_argument(
        "--n-train",
        type=_positive,
        default=None,
        metavar="N",
        help="training digits of the 10-class models (default: 1000; --quick: 200)",
    )
    demo.add_argument(
        "--n-test",
        type=_positive,
        default=None,
        metavar="N",
        help="test digits (default: 500; --quick: 100)",
    )
    demo.add_argument(
        "--projection-dim",
        type=_positive,
        default=None,
        metavar="K",
        help="K of proj_trntk / proj_pntk (default: 1024; --quick: 256); lowered to a power of "
        "two <= P/2 for a model with P <= K parameters",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of everything (default: 0)")
    demo.add_argument("--kernels", type=_kernels, default=None, metavar="LIST", help=_KERNEL_HELP)
    demo.add_argument(
        "--target",
        choices=_TARGETS,
        default=None,
        help="what the kGLM is fitted to (default: the library's default, fit_surrogate's "
        "target); 'labels' is the paper's kGLM (Eq. 1)",
    )
    demo.add_argument(
        "--alpha",
        type=_alpha,
        default=None,
        help="kGLM L2 strength relative to the kernel's scale, or 'auto' (default: auto, "
        "chosen per kernel by held-out faithfulness plus counterfactual self-consistency on "
        "the training set)",
    )
    demo.add_argument(
        "--no-compare",
        action="store_true",
        help="skip the label-fitted vs distilled comparison on the trNTK",
    )
    demo.add_argument(
        "--class-weight",
        choices=("balanced", "none"),
        default="balanced",
        help="kGLM class weights (default: %(default)s)",
    )
    demo.add_argument(
        "--binary-classes",
        type=_pair,
        default=None,
        metavar="A,B",
        help="the two digits of the single-logit model (default: 3,8)",
    )
    demo.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads during the demo; 0 (default) keeps torch's default, "
        "all cores, the fastest on an idle machine",
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help="reduced sizes for a smoke test; its numbers are not representative",
    )
    demo.add_argument("--no-plots", action="store_true", help="skip the figures")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run_demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    from .demo import make_config, run_demo

    config = make_config(
        output=args.output,
        n_train=args.n_train,
        n_test=args.n_test,
        projection_dim=args.projection_dim,
        seed=args.seed,
        kernels=args.kernels,
        quick=args.quick,
        plots=not args.no_plots,
        alpha=args.alpha,
        target=args.target,
        compare=not args.no_compare,
        binary_classes=args.binary_classes,
        show_progress=not args.no_progress,
    )
    config.class_weight = None if args.class_weight == "none" else "balanced"
    config.threads = args.threads if args.threads > 0 else None
    try:
        run_demo(config)
    except ValueError as error:
        print(f"captum-ntk demo: error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    r"""Entry point of the ``captum-ntk`` console script.

    Args:
        argv (sequence of str, optional): arguments without the program name. Default:
                ``sys.argv[1:]``.

    Returns:
        int: the exit status (0 on success).
    """
    args = build_parser().parse_args(argv)
    if args.command == "reproduce":
        from .reproduce.cli import run_reproduce_command

        return run_reproduce_command(args)
    if args.command in ("featurize", "score"):
        from .featurize import run_store_command

        return run_store_command(args)
    if args.command == "demo":
        return _run_demo(args)
    if args.command == "evaluate":
        from .counterfactual.evaluate import run_evaluate_command

        return run_evaluate_command(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
