r"""Counterfactual validity of the surrogates on an MNIST2 row: a ground truth with signal.

At a reduced size (``--n-train`` / ``--n-test``, the ``--quick`` sizes by default) the row's
network is trained once (seed 0); then the LDS ground truth is retrained two ways:

- **independent seeds** (TRAK's protocol): ``--independent-subsets`` halves, 2 runs each, every
  retraining its own seed; its run agreement (the Spearman correlation of two retrainings of
  the same halves, :meth:`~captum_ntk.metrics.SubsetGroundTruth.run_agreement`) is the noise
  floor of that protocol;
- **shared seeds** (common random numbers, ``reproduce``'s default): ``--subsets`` halves,
  ``--runs`` runs, run ``r`` of every half from seed ``r + 1``.

Against the shared-seed ground truth (averaged over its runs, and per run to show the spread
between seeds) it scores the paper's kGLM, the library default (``fit_surrogate()``), kGLMs fitted
to the labels and to the logits at each alpha (the trade-off), and ``MarginNTKAttribution``.
Each kGLM also gets its tau_K in both protocols.

    python benchmarks/reproduce_lds.py --data-root DIR --row mlp-mnist2 --cache /tmp/lds-mlp
    python benchmarks/reproduce_lds.py --data-root DIR --row cnn-mnist2 --epochs 10 --lr 0.1
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from captum_ntk import MarginNTKAttribution
from captum_ntk.apps.reproduce.data import load_row_data
from captum_ntk.apps.reproduce.evaluate import (
    KernelResult,
    _faithfulness_row,
    class_one_logits,
    evaluate_kernel,
    surrogate_options,
    test_logits,
)
from captum_ntk.apps.reproduce.lds import _RowTrainer, correct_class_scores
from captum_ntk.apps.reproduce.quick import QUICK_ROWS
from captum_ntk.apps.reproduce.rows import PAPER_ALPHA, get_row
from captum_ntk.apps.reproduce.training import train_model
from captum_ntk.metrics import RetrainingHarness, linear_datamodeling_score, margin_output

ALPHAS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)


def surrogate_scores(model, data, seed: int) -> dict[str, dict]:
    """Correct-class scores and taus of the paper's kGLM, the default and the alpha curves."""
    logits = test_logits(model, data, "cpu")
    class_one = class_one_logits(logits)
    paper, default = evaluate_kernel(
        "trntk", model, data, alpha=PAPER_ALPHA, seed=seed, show_progress=False,
        class_one=class_one,
    )  # fmt: skip
    out = {
        "paper's kGLM": {**paper.row, "scores": correct_class_scores(paper, data.y_test)},
        f"default (alpha {default.row['alpha']:g})": {
            **default.row,
            "scores": correct_class_scores(default, data.y_test),
        },
    }
    attr, test_kernel = paper.attr, paper.test_kernel
    for target in ("labels", "logits"):
        for alpha in ALPHAS:
            options = surrogate_options(attr, alpha) if target == "labels" else {"alpha": alpha}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                glm = attr.fit_surrogate(**options)
            row, _ = _faithfulness_row(model, attr, data, glm, test_kernel, class_one, "cpu", seed)
            result = KernelResult(row, attr, test_kernel, glm, None, None)
            out[f"{target}, alpha {alpha:g}"] = {
                **row,
                "scores": correct_class_scores(result, data.y_test),
            }
    margin = MarginNTKAttribution(model, TensorDataset(data.x_train, data.y_train))
    out["MarginNTKAttribution"] = {"scores": margin.influence((data.x_test, data.y_test))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--row", default="mlp-mnist2", choices=("mlp-mnist2", "cnn-mnist2"))
    parser.add_argument("--n-train", type=int, default=None)
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--subsets", type=int, default=64)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--independent-subsets", type=int, default=32)
    parser.add_argument("--cache", type=Path, default=Path(".lds_cache_reproduce"))
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("reproduce_lds.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec, quick = get_row(args.row), QUICK_ROWS[args.row]
    data = load_row_data(
        spec, args.data_root, args.n_train or quick.n_train, args.n_test or quick.n_test
    )
    settings = replace(
        spec.train, epochs=args.epochs or quick.epochs, lr=args.lr or quick.lr or spec.train.lr
    )
    model = spec.build(0)
    train_model(model, data.x_train, data.y_train, settings, seed=0, show_progress=False)
    model.eval()
    methods = surrogate_scores(model, data, 0)
    harness = RetrainingHarness(
        _RowTrainer(spec, settings, data, "cpu"),
        margin_output(data.x_test, data.y_test),
        len(data.y_train),
        cache_dir=args.cache / f"{args.row}-{len(data.y_train)}-{settings.epochs}-{settings.lr:g}",
        num_workers=args.workers,
        show_progress=True,
    )
    independent = harness.subset_ground_truth(args.independent_subsets, 2, seed=0)
    shared = harness.subset_ground_truth(args.subsets, args.runs, seed=0, shared_seeds=True)
    report = {
        "row": args.row,
        "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread",
        "sizes": [len(data.y_train), len(data.y_test), settings.epochs, settings.lr],
        "agreement_independent": independent.run_agreement(),
        "agreement_shared": shared.run_agreement(),
        "methods": {},
    }
    print(f"{args.row}: {len(data.y_train)} train / {len(data.y_test)} test, {settings.epochs} "
          f"epochs, lr {settings.lr:g}; {report['machine']}")  # fmt: skip
    print(f"run agreement: independent seeds {report['agreement_independent']:.3f} "
          f"({args.independent_subsets} halves x 2), shared seeds "
          f"{report['agreement_shared']:.3f} ({args.subsets} halves x {args.runs})")  # fmt: skip
    print("| method | tau_K (paper protocol) | tau_K (correct class) | LDS (shared, mean of runs) "
          "| LDS per run: min / max | LDS (independent) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for name, m in methods.items():
        lds = linear_datamodeling_score(m["scores"], shared.masks, shared.outputs)
        per_run = [
            linear_datamodeling_score(m["scores"], shared.masks, shared.run_outputs[:, r])
            for r in range(args.runs)
        ]
        noisy = linear_datamodeling_score(m["scores"], independent.masks, independent.outputs)
        report["methods"][name] = {
            "tau_paper": m.get("tau_paper", math.nan), "tau": m.get("tau", math.nan),
            "lds": lds, "lds_per_run": per_run, "lds_independent": noisy,
        }  # fmt: skip
        taus = [f"{m[k]:.3f}" if k in m else "-" for k in ("tau_paper", "tau")]
        print(f"| {name} | {taus[0]} | {taus[1]} | {lds:.3f} | {min(per_run):.3f} / "
              f"{max(per_run):.3f} | {noisy:.3f} |", flush=True)  # fmt: skip
    args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
