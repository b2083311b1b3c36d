r"""Faithfulness of kGLM surrogates by target and kernel: label-fitted (the paper) vs distilled.

For each task and kernel, fits ``attr.fit_surrogate(target=..., alpha="auto")`` for every target
and prints Kendall tau_K (float64 correct-class log-probabilities), tau on margins, TAD and
R_miss on the test set, and the alpha chosen by 5-fold held-out faithfulness on the train kernel.

    python benchmarks/surrogate_targets.py                 # near-separable task only
    python benchmarks/surrogate_targets.py --digits        # also the digits MLP / CNN / binary MLP
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from sklearn.exceptions import ConvergenceWarning
from torch.utils.data import TensorDataset

from captum_ntk.apps.tasks import Task, digits_task, near_separable_task
from captum_ntk.attribution import ATTRIBUTION_CLASSES
from captum_ntk.metrics import faithfulness

TARGETS = ("labels", "predictions", "probabilities", "logits")
KERNELS = ("trntk", "trntk0", "proj_trntk", "proj_pntk")


def evaluate(task: Task, kernel: str, projection_dim: int) -> list[dict]:
    options = {"projection_dim": projection_dim} if kernel.startswith("proj") else {}
    attr = ATTRIBUTION_CLASSES[kernel](
        task.model, TensorDataset(task.x_train, task.y_train), batch_size=128, **options
    )
    test_kernel = attr.influence(task.x_test)
    rows = []
    for target in TARGETS:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            glm = attr.fit_surrogate(target=target)
        seconds = time.perf_counter() - start
        scores = faithfulness(
            task.model, attr, task.x_test, task.y_test, surrogate=glm, test_kernel=test_kernel
        )
        rows.append(
            {
                "task": task.name,
                "kernel": kernel,
                "target": target,
                "alpha": glm.alpha_,
                "seconds": seconds,
                **scores,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", action="store_true", help="also the digits demo models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--projection-dim", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tasks = [near_separable_task(seed=args.seed)]
    if args.digits:
        tasks += [digits_task(kind, seed=args.seed) for kind in ("mlp", "cnn", "mlp-binary")]
    header = (
        f"{'task':15s} {'kernel':10s} {'target':13s} {'tau_K':>6s} {'tau_m':>6s} {'ties':>5s} "
        f"{'TAD':>6s} {'R_miss':>6s} {'alpha':>7s} {'fit_s':>6s}"
    )
    print(header)
    print("-" * len(header))
    for task in tasks:
        print(
            f"# {task.name}: {task.description}; n_train={len(task.x_train)}, "
            f"n_test={len(task.x_test)}, network test accuracy {task.accuracy():.3f}"
        )
        for kernel in KERNELS:
            for r in evaluate(task, kernel, args.projection_dim):
                print(
                    f"{r['task']:15s} {r['kernel']:10s} {r['target']:13s} {r['tau']:6.3f} "
                    f"{r['tau_margin']:6.3f} {r['ties']:5d} {r['tad']:6.3f} {r['r_miss']:6.3f} "
                    f"{r['alpha']:7.0e} {r['seconds']:6.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
