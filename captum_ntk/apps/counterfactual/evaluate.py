r"""``captum-ntk evaluate``: faithfulness and counterfactual validity of the kernel attributions.

For a built-in task: the retrained ground truth (resumable, ``--cache``), the model to explain
(the task trained on the full training set, seed 0), and per kernel the ``fit_surrogate()``
defaults' tau_K, LDS, cancellation ratio and (optionally) the removal test, and the
:class:`~captum_ntk.attribution.MarginNTKAttribution` scores of ``--margin-networks`` networks. Peers (TRAK,
TracInCP, ...) are measured on the same ground truth by ``benchmarks/attribution_quality.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from sklearn.exceptions import ConvergenceWarning
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from ...attribution import ATTRIBUTION_CLASSES, MarginNTKAttribution
from ...kernels.registry import kernel_names
from ...metrics import (
    correct_class_log_probability,
    kendall_tau,
    linear_datamodeling_score,
    removal_test,
)
from .tasks import TASKS, get_task

__all__ = ["add_evaluate_parser", "kernel_attribution_scores", "run_evaluate_command"]


def kernel_attribution_scores(
    model: nn.Module,
    kernel: str,
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    projection_dim: int | None = None,
    **fit_options: Any,
) -> dict[str, Any]:
    r"""Eq. 3 attributions of each test example's correct class, with tau_K and cancellation.

    Args:
        model (nn.Module): the network (eval mode).
        kernel (str): an attributable kernel name (``trntk``, ``proj_pntk``, ...).
        x_train, y_train, x_test, y_test (Tensor): the data.
        projection_dim (int, optional): K of projected kernels.
        **fit_options: passed to ``fit_surrogate`` (default: its defaults).

    Returns:
        dict: ``scores`` ``(n_test, n_train)``, ``tau`` (Kendall tau_K of correct-class
        log-probabilities), ``alpha`` (the kGLM's) and ``cancellation`` (median over test
        examples of ``sum_i |A(z, x_i)| / |sum_i A(z, x_i)|`` for the correct class).
    """
    options = {"projection_dim": projection_dim} if kernel.startswith("proj") else {}
    attr = ATTRIBUTION_CLASSES[kernel](model, TensorDataset(x_train, y_train), **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        glm = attr.fit_surrogate(**fit_options)
    attributions = attr.attribute(x_test)  # (n_test, C, N)
    rows = torch.arange(len(y_test))
    kglm_logits = attributions.sum(dim=-1)
    with torch.no_grad():
        logits = model(x_test)
    tau = kendall_tau(
        correct_class_log_probability(logits, y_test),
        correct_class_log_probability(kglm_logits, y_test),
    )
    if attributions.shape[1] == 1:  # one-logit kGLM: the correct class's sign
        sign = (2 * y_test - 1).to(attributions.dtype)[:, None]
        correct, total = sign * attributions[:, 0], sign[:, 0] * kglm_logits[:, 0]
    else:
        correct, total = attributions[rows, y_test], kglm_logits[rows, y_test]
    cancellation = correct.abs().sum(dim=-1) / total.abs()
    return {
        "scores": correct,
        "tau": tau,
        "alpha": glm.alpha_,
        "cancellation": float(cancellation.median()),
    }


def add_evaluate_parser(commands: argparse._SubParsersAction) -> None:
    """The ``evaluate`` subcommand."""
    parser = commands.add_parser(
        "evaluate",
        help="tau_K, LDS and removal tests of the kernel attributions on a built-in task",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--task", choices=tuple(TASKS), default="digits-mlp")
    parser.add_argument("--kernels", default="trntk,proj_trntk,proj_pntk", help="comma-separated")
    parser.add_argument("--subsets", type=int, default=200, help="random halves (default 200)")
    parser.add_argument("--runs", type=int, default=4, help="retrainings per subset (default 4)")
    parser.add_argument("--cache", type=Path, default=Path("captum_ntk_lds_cache"))
    parser.add_argument("--workers", type=int, default=0, help="retraining processes")
    parser.add_argument("--projection-dim", type=int, default=2048)
    parser.add_argument("--removal-examples", type=int, default=0, help="0: no removal test")
    parser.add_argument("--k", type=int, default=10, help="examples removed (default 10)")
    parser.add_argument(
        "--margin-networks",
        type=int,
        default=1,
        help="networks (seeds 0..N-1) of the MarginNTKAttribution row (0: no row; default 1)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")


def run_evaluate_command(args: argparse.Namespace) -> int:
    """Runs ``captum-ntk evaluate``; prints a markdown table."""
    names = [k.strip() for k in args.kernels.split(",") if k.strip()]
    unknown = [k for k in names if k not in ATTRIBUTION_CLASSES]
    if unknown or args.subsets < 3 or args.runs < 1:
        print(
            f"captum-ntk evaluate: error: kernels must be among {', '.join(kernel_names(attributable=True))} "
            f"(got {unknown}); --subsets >= 3 and --runs >= 1",
            file=sys.stderr,
        )
        return 2
    task = get_task(args.task)
    x, y, xt, yt = task.data
    harness = task.harness(args.cache / task.name, num_workers=args.workers, show_progress=True)
    truth = harness.subset_ground_truth(args.subsets, args.runs, seed=0)
    model = task.train(torch.arange(task.num_train), seed=0)
    rows = []
    print(f"{task.name}: {args.subsets} subsets x {args.runs} runs, ground truth in {args.cache}")
    print("| kernel | alpha | tau_K | LDS | cancellation | removal drop top-k / random |")
    print("|---|---:|---:|---:|---:|---:|")

    def add_row(name: str, scores: Tensor, **extra: Any) -> None:
        row = {"kernel": name, **extra}
        row["lds"] = linear_datamodeling_score(scores, truth.masks, truth.outputs)
        removal = "-"
        if args.removal_examples:
            test_rows = torch.arange(args.removal_examples)
            result = removal_test(scores, harness, k=args.k, test_indices=test_rows)
            row["removal"] = result.summary()
            removal = f"{result.drop_top:.2f} / {result.drop_random:.2f}"
        rows.append(row)
        alpha = f"{row['alpha']:g}" if "alpha" in row else "-"
        tau = f"{row['tau']:.3f}" if "tau" in row else "-"
        ratio = f"{row['cancellation']:.1f}" if "cancellation" in row else "-"
        print(f"| {name} | {alpha} | {tau} | {row['lds']:.3f} | {ratio} | {removal} |", flush=True)

    for kernel in names:
        out = kernel_attribution_scores(
            model, kernel, x, y, xt, yt, projection_dim=args.projection_dim
        )
        add_row(kernel, out.pop("scores"), **out)
    if args.margin_networks > 0:
        models = [model] + [
            task.train(torch.arange(task.num_train), seed)
            for seed in range(1, args.margin_networks)
        ]
        scores = MarginNTKAttribution(models, TensorDataset(x, y)).influence((xt, yt))
        add_row(f"margin NTK x{args.margin_networks}", scores)
    if args.json is not None:
        args.json.write_text(json.dumps({"task": task.name, "rows": rows}, indent=1))
    return 0
