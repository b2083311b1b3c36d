r"""How ``alpha="auto"`` chooses, against the retrained ground truth: tau_K and LDS per alpha.

For each built-in retraining task (digits MLP, digits CNN; the LDS ground truth of
``attribution_quality.py``, ``--subsets`` random halves x ``--runs`` seeds, cached in ``--cache``)
and each kernel, the kGLM distilled from the network's logits (``fit_surrogate`` defaults) is
fitted at every alpha of the grid. Each alpha gets its test tau_K (correct-class
log-probabilities), its LDS against the retrained networks, and what ``alpha="auto"`` sees on
the training set: held-out tau and counterfactual self-consistency. The table marks the alpha
chosen by the rule without the consistency floor (``floor 0``) and with it (the default).

    python benchmarks/alpha_selection.py --cache .lds_cache
"""

from __future__ import annotations

import argparse
import json
import platform
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

import captum_ntk as cn
from captum_ntk.apps.counterfactual import get_task
from captum_ntk.metrics import linear_datamodeling_score
from captum_ntk.surrogate.consistency import select_alpha
from captum_ntk.surrogate.scores import correct_class_log_proba, kendall_tau_b

CLASSES = {
    "trntk": cn.TrNTKAttribution,
    "trntk0": cn.TrNTK0Attribution,
    "pntk": cn.PNTKAttribution,
    "ck": cn.ConjugateKernelAttribution,
    "embedding": cn.EmbeddingKernelAttribution,
    # attribution_quality.py's projection size
    "proj_trntk": partial(cn.ProjTrNTKAttribution, projection_dim=2048),
    "proj_pntk": partial(cn.ProjPNTKAttribution, projection_dim=2048),
}


def correct_class_scores(attributions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(n, C, N) Eq. 3 attributions -> (n, N) of each example's correct class."""
    if attributions.shape[1] == 1:
        return (2 * labels - 1).to(attributions)[:, None] * attributions[:, 0]
    return attributions[torch.arange(len(labels)), labels]


def study(attr, model, x_test, y_test, truth) -> dict:
    """auto's choice and cv results, then tau_K and LDS at every alpha of its grid."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto = attr.fit_surrogate()
    cv = auto.cv_results_
    with torch.no_grad():
        logits = model(x_test).double()
    grid = []
    for alpha in cv["alphas"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            attr.fit_surrogate(alpha=float(alpha))
        attributions = attr.attribute(x_test).double()
        tau = kendall_tau_b(
            correct_class_log_proba(logits, y_test),
            correct_class_log_proba(attributions.sum(-1), y_test),
        )
        scores = correct_class_scores(attributions, y_test)
        lds = float(linear_datamodeling_score(scores, truth.masks, truth.outputs))
        grid.append({"alpha": float(alpha), "tau": float(tau), "lds": lds})
    weight = 0.5
    return {
        "grid": grid,
        "held_out_tau": cv["mean_tau"].tolist(),
        "consistency": cv["consistency"].tolist(),
        "chosen": float(auto.alpha_),
        "chosen_without_floor": select_alpha(cv["alphas"], cv, weight, floor=0.0),
    }


def table(name: str, kernel: str, row: dict) -> str:
    lines = [
        f"\n{name}, {kernel}: auto (floor 0.5) chose {row['chosen']:g}, without the floor "
        f"{row['chosen_without_floor']:g}",
        "| alpha | held-out tau | self-consistency | test tau_K | LDS | chosen |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for entry, tau, consistency in zip(row["grid"], row["held_out_tau"], row["consistency"]):
        marks = [m for m, a in (("auto", row["chosen"]), ("floor 0", row["chosen_without_floor"]))
                 if a == entry["alpha"]]  # fmt: skip
        lines.append(
            f"| {entry['alpha']:g} | {tau:.3f} | {consistency:.3f} | {entry['tau']:.3f} | "
            f"{entry['lds']:.3f} | {', '.join(marks)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="digits-mlp,digits-cnn")
    parser.add_argument("--kernels", default="trntk,trntk0,pntk,proj_trntk,proj_pntk,ck,embedding")
    parser.add_argument("--subsets", type=int, default=200)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--cache", default=".lds_cache")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", default="alpha_selection.json")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, torch {torch.__version__}")
    report: dict = {"settings": vars(args), "tasks": {}}
    for name in args.tasks.split(","):
        task = get_task(name)
        x, y, x_test, y_test = task.data
        harness = task.harness(Path(args.cache) / name, num_workers=args.workers)
        truth = harness.subset_ground_truth(args.subsets, args.runs, seed=0)
        model = task.train(torch.arange(task.num_train), 0).eval()
        for kernel in args.kernels.split(","):
            attr = CLASSES[kernel](model, TensorDataset(x, y))
            row = study(attr, model, x_test, y_test, truth)
            report["tasks"][f"{name}/{kernel}"] = row
            print(table(name, kernel, row), flush=True)
            Path(args.json).write_text(json.dumps(report, indent=1))
    chosen = [r for r in report["tasks"].values()]
    mean = {k: np.mean([next(g["lds"] for g in r["grid"] if g["alpha"] == r[k]) for r in chosen])
            for k in ("chosen", "chosen_without_floor")}  # fmt: skip
    print(f"\nmean LDS of the chosen alpha: with the floor {mean['chosen']:.3f}, without "
          f"{mean['chosen_without_floor']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
