r"""Attribution quality side by side: faithfulness (tau_K), counterfactual validity (LDS) and removal.

For each built-in retraining task (``captum_ntk.apps.counterfactual``: digits MLP, digits CNN),
one retrained ground truth (``--subsets`` random halves x ``--runs`` seeds, TRAK's logsumexp
margin, cached in ``--cache`` so a rerun or an interrupted run resumes) scores every method in
the same run:

- ``MarginNTKAttribution`` (the margin's eNTK, exact and projected to ``--trak-dim``) for one
  network and an ensemble of ``--ensemble``;
- every attributable kernel with ``fit_surrogate()`` defaults (Eq. 3 attributions of the correct
  class), the paper's label-fitted kGLM, the probability-distilled kGLM, and an ensemble of
  ``--ensemble`` independently trained networks (attributions averaged);
- peers (``benchmarks/peers.py``): TRAK with 1 / ``--ensemble`` / ``--trak-models`` models
  (``--trak-dim`` dimensions), Captum's TracInCP (checkpoints at epochs 10, 20, 30), gradient dot
  product, representer points;
- the trade-off curve (tau_K and LDS against alpha for the logits and labels targets, trNTK)
  with ``--curve FIGURE.png``;
- the removal test (top-``--k`` proponents vs ``--k`` random examples, ``--removal-examples``
  test digits, ``--removal-runs`` seeds) for the main methods.

    python benchmarks/attribution_quality.py --tasks digits-mlp,digits-cnn --workers 2
    python benchmarks/attribution_quality.py --quick        # 40 subsets x 1 run, minutes
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from peers import grad_dot_scores, representer_scores, tracin_cp_scores, trak_scores
from torch import nn
from torch.utils.data import TensorDataset

from captum_ntk import MarginNTKAttribution
from captum_ntk.apps.counterfactual import get_task
from captum_ntk.apps.counterfactual.evaluate import kernel_attribution_scores
from captum_ntk.metrics import (
    linear_datamodeling_score,
    removal_test,
)

KERNELS = ("trntk", "trntk0", "proj_trntk", "proj_pntk", "pntk", "ck", "embedding")
CURVE_ALPHAS = {
    "logits": (1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-6, 1e-8),
    "labels": (1.0, 0.1, 0.01, 1e-3, 1e-4),
}


def train_with_checkpoints(task, directory: Path) -> tuple[nn.Module, list[str]]:
    paths: list[str] = []

    def save(epoch: int, model: nn.Module) -> None:
        if epoch % 10 == 0:
            paths.append(str(directory / f"epoch{epoch}.pt"))
            torch.save(model.state_dict(), paths[-1])

    from captum_ntk.apps.models import train_classifier

    x, y, _, _ = task.data
    model = train_classifier(
        task.make_model(0),
        x,
        y,
        epochs=task.epochs,
        lr=task.lr,
        batch_size=task.batch_size,
        seed=0,
        on_epoch_end=save,
    )
    return model, paths


def evaluate_task(name: str, args: argparse.Namespace) -> dict:
    task = get_task(name)
    x, y, xt, yt = task.data
    start = time.perf_counter()
    harness = task.harness(Path(args.cache) / name, num_workers=args.workers, show_progress=True)
    truth = harness.subset_ground_truth(args.subsets, args.runs, seed=0)
    ground_truth_s = time.perf_counter() - start
    everything = torch.arange(task.num_train)
    models = [task.train(everything, seed) for seed in range(max(args.ensemble, args.trak_models))]
    results: dict[str, dict] = {}

    def add(method: str, scores: torch.Tensor, **extra) -> None:
        lds = linear_datamodeling_score(scores, truth.masks, truth.outputs)
        results[method] = {"scores": scores, "lds": lds, **extra}
        shown = {k: v for k, v in extra.items() if k != "scores"}
        print(f"  {name:11s} {method:34s} LDS {lds:6.3f} {shown}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        model, checkpoints = train_with_checkpoints(task, Path(tmp))
        for p, q in zip(model.parameters(), models[0].parameters()):
            assert torch.equal(p, q), "checkpointed training must equal task.train"
        for kernel in KERNELS:
            start = time.perf_counter()
            out = kernel_attribution_scores(
                model, kernel, x, y, xt, yt, projection_dim=args.projection_dim
            )
            add(
                f"{kernel} (default)", out.pop("scores"), seconds=time.perf_counter() - start, **out
            )
        for target in ("labels", "probabilities"):
            out = kernel_attribution_scores(
                model, "trntk", x, y, xt, yt, projection_dim=args.projection_dim, target=target
            )
            add(f"trntk ({target}, alpha auto)", out.pop("scores"), **out)
        curve = {}
        for target, alphas in CURVE_ALPHAS.items():
            for alpha in alphas:
                out = kernel_attribution_scores(
                    model, "trntk", x, y, xt, yt, projection_dim=0, target=target, alpha=alpha
                )
                lds = linear_datamodeling_score(out["scores"], truth.masks, truth.outputs)
                curve[f"{target} {alpha:g}"] = {
                    "target": target,
                    "alpha": alpha,
                    "tau": out["tau"],
                    "lds": lds,
                    "cancellation": out["cancellation"],
                }
                print(
                    f"  {name:11s} curve trntk {target} alpha={alpha:g}: tau {out['tau']:.3f} LDS {lds:.3f}",
                    flush=True,
                )
        ensemble = [
            kernel_attribution_scores(m, "trntk", x, y, xt, yt, projection_dim=0)
            for m in models[: args.ensemble]
        ]
        add(
            f"trntk ensemble of {args.ensemble}",
            # each network's rows scaled to unit norm (the LDS is invariant to a positive scale
            # per row; raw averages let a near-interpolating member's huge scores dominate)
            torch.stack(
                [e["scores"] / e["scores"].norm(dim=1, keepdim=True) for e in ensemble]
            ).mean(0),
            tau_mean=sum(e["tau"] for e in ensemble) / len(ensemble),
        )
        for count in sorted({1, args.ensemble}):
            for dim in (None, args.trak_dim):
                start = time.perf_counter()
                margin = MarginNTKAttribution(
                    models[:count], TensorDataset(x, y), batch_size=300, projection_dim=dim
                )
                label = "exact" if dim is None else f"K={dim}"
                add(
                    f"margin NTK ({label}), {count} network(s)",
                    margin.influence((xt, yt)),
                    seconds=time.perf_counter() - start,
                )
        for count in sorted({1, args.ensemble, args.trak_models}):
            start = time.perf_counter()
            scores = trak_scores(models[:count], x, y, xt, yt, projection_dim=args.trak_dim)
            add(f"TRAK, {count} model(s)", scores, seconds=time.perf_counter() - start)
        add(
            "TracInCP (Captum, 3 checkpoints)",
            tracin_cp_scores(task.make_model(0), checkpoints, x, y, xt, yt),
        )
        add("gradient dot product", grad_dot_scores(model, x, y, xt, yt))
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        add("representer points", representer_scores(model, last, x, y, xt, yt))

    removal_methods = [
        "trntk (default)",
        "trntk (labels, alpha auto)",
        f"trntk ensemble of {args.ensemble}",
        "margin NTK (exact), 1 network(s)",
        f"margin NTK (exact), {args.ensemble} network(s)",
        "TRAK, 1 model(s)",
        f"TRAK, {args.ensemble} model(s)",
        "TracInCP (Captum, 3 checkpoints)",
        "gradient dot product",
        "representer points",
    ]
    test_rows = torch.arange(args.removal_examples)
    for method in removal_methods if args.removal_examples else []:
        outcome = removal_test(
            results[method]["scores"],
            harness,
            k=args.k,
            test_indices=test_rows,
            runs=args.removal_runs,
            seed=0,
        )
        results[method]["removal"] = outcome.summary()
        print(f"  {name:11s} removal {method:34s} {outcome.summary()}", flush=True)
    for value in results.values():
        value.pop("scores")
    return {
        "task": name,
        "ground_truth_seconds": ground_truth_s,
        "methods": results,
        "curve": curve,
    }


def markdown(report: dict) -> str:
    """The methods table of each task (rerun: ``python attribution_quality.py --table JSON``)."""
    lines = []
    for task in report["tasks"]:
        lines += [
            f"#### {task['task']}",
            "",
            "| method | alpha | tau_K | LDS | sum abs(A) / abs(logit) | removal: margin drop, top-k / random | flips, top-k / random |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for method, row in task["methods"].items():
            tau = f"{row['tau']:.3f}" if "tau" in row else "-"
            alpha = f"{row['alpha']:g}" if "alpha" in row else "-"
            ratio = f"{row['cancellation']:.1f}" if "cancellation" in row else "-"
            rem = row.get("removal")
            drop = f"{rem['drop_top']:+.2f} / {rem['drop_random']:+.2f}" if rem else "-"
            flips = (
                f"{rem['flip_fraction_top']:.2f} / {rem['flip_fraction_random']:.2f}"
                if rem
                else "-"
            )
            lines.append(
                f"| {method} | {alpha} | {tau} | {row['lds']:.3f} | {ratio} | {drop} | {flips} |"
            )
        lines.append("")
        lines += [
            "| trNTK kGLM target | alpha | tau_K | LDS | sum abs(A) / abs(logit) |",
            "|---|---:|---:|---:|---:|",
        ]
        for point in task["curve"].values():
            lines.append(
                f"| {point['target']} | {point['alpha']:g} | {point['tau']:.3f} | {point['lds']:.3f} | "
                f"{point['cancellation']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot_curve(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(report["tasks"]), figsize=(5.5 * len(report["tasks"]), 4), squeeze=False
    )
    for ax, task in zip(axes[0], report["tasks"]):
        for target, marker in (("logits", "o"), ("labels", "s")):
            points = [v for v in task["curve"].values() if v["target"] == target]
            ax.plot(
                [p["tau"] for p in points],
                [p["lds"] for p in points],
                marker=marker,
                label=f"target={target}",
            )
            for p in points:
                ax.annotate(f"{p['alpha']:g}", (p["tau"], p["lds"]), fontsize=7)
        default = task["methods"]["trntk (default)"]
        ax.scatter(
            [default["tau"]],
            [default["lds"]],
            s=120,
            facecolors="none",
            edgecolors="red",
            label=f"default (alpha {default['alpha']:g})",
        )
        ax.set_xlabel("tau_K (faithfulness)")
        ax.set_ylabel("LDS (counterfactual validity)")
        ax.set_title(f"{task['task']}: trNTK kGLM, alpha annotated")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="digits-mlp,digits-cnn")
    parser.add_argument("--subsets", type=int, default=200)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--cache", default=".lds_cache")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ensemble", type=int, default=10)
    parser.add_argument("--trak-models", type=int, default=50)
    parser.add_argument("--trak-dim", type=int, default=512)
    parser.add_argument("--projection-dim", type=int, default=2048)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--removal-examples", type=int, default=30)
    parser.add_argument("--removal-runs", type=int, default=4)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="40 subsets x 1 run, ensembles of 3 / TRAK 5, removal on 10 digits",
    )
    parser.add_argument("--json", default="attribution_quality.json")
    parser.add_argument("--curve", default=None, help="write the trade-off figure here")
    parser.add_argument("--table", default=None, help="print the tables of a JSON report, exit")
    args = parser.parse_args()
    if args.table:
        report = json.loads(Path(args.table).read_text())
        print(markdown(report))
        if args.curve:
            plot_curve(report, args.curve)
        return
    if args.quick:
        args.subsets, args.runs, args.ensemble, args.trak_models = 40, 1, 3, 5
        args.removal_examples, args.removal_runs = 10, 1
    torch.set_num_threads(2)
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    report = {
        "settings": vars(args),
        "tasks": [evaluate_task(t, args) for t in args.tasks.split(",")],
    }
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(markdown(report))
    if args.curve:
        plot_curve(report, args.curve)


if __name__ == "__main__":
    main()
