r"""Matplotlib figures of the analysis toolkit (matplotlib is imported on first use)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .analytic import relu_mlp_ntk
from .evolution import KernelEvolution

__all__ = ["plot_eigenmodes", "plot_feature_tradeoff", "plot_kernel_evolution"]


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def plot_eigenmodes(
    num_modes: int = 4,
    *,
    depth: int = 2,
    W_std: float = math.sqrt(2.0),
    b_std: float = 0.5,
    num_points: int = 200,
    interval: tuple[float, float] = (-2.0, 2.0),
    which: str = "ntk",
) -> Any:
    r"""Eigenmodes of the analytic ReLU NTK (or NNGP) on a 1-D input interval.

    The Gram of ``num_points`` equispaced scalars is diagonalised; eigenvector k, rescaled by
    sqrt(num_points), approximates the k-th eigenfunction under the uniform distribution on the
    interval. A bias (``b_std > 0``) makes the modes non-trivial: without it a 1-D input has
    only two directions (+ and -) and the kernel has rank <= 2.

    Args:
        num_modes (int): modes to draw. Default: 4.
        depth, W_std, b_std: as :func:`relu_mlp_ntk`.
        num_points (int): grid size. Default: 200.
        interval (tuple): (low, high) of the inputs. Default: (-2, 2).
        which (str): ``"ntk"`` or ``"nngp"``. Default: ``"ntk"``.

    Returns:
        matplotlib.figure.Figure: modes (left) and the eigenvalue decay (right).
    """
    if which not in ("ntk", "nngp"):
        raise ValueError(f"which must be 'ntk' or 'nngp', got {which!r}.")
    grid = torch.linspace(interval[0], interval[1], num_points, dtype=torch.float64)[:, None]
    nngp, ntk = relu_mlp_ntk(grid, grid, depth, W_std, b_std)
    gram = ntk if which == "ntk" else nngp
    lam, vec = torch.linalg.eigh(gram)
    lam, vec = lam.flip(0), vec.flip(1)
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for k in range(num_modes):
        mode = vec[:, k] * math.sqrt(num_points)
        mode = mode * (1 if float(mode[-1]) >= 0 else -1)  # fixed sign convention
        left.plot(grid[:, 0], mode, label=f"mode {k} (lambda/N = {float(lam[k]) / num_points:.3g})")
    left.set(
        xlabel="x", ylabel="eigenfunction", title=f"ReLU {which.upper()} eigenmodes, depth {depth}"
    )
    left.legend(fontsize=7)
    shown = lam[: min(40, num_points)].clamp_min(1e-300) / num_points
    right.semilogy(range(len(shown)), shown, "o-", ms=3)
    right.set(xlabel="k", ylabel="lambda_k / N", title="eigenvalue decay")
    fig.tight_layout()
    return fig


def _polar_path(ax: Any, runs: Mapping[str, KernelEvolution]) -> None:
    for name, run in runs.items():
        ax.plot(
            run.history["angle_to_initial"], run.history["relative_norm"], "o-", ms=2, label=name
        )
    ax.set_title("angle to K_0 (rad) vs |K_t| / |K_0|", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")


def plot_kernel_evolution(
    runs: Mapping[str, KernelEvolution] | KernelEvolution,
    metrics: Sequence[str] = ("distance_to_initial", "velocity", "alignment", "effective_rank"),
) -> Any:
    r"""Figure of one or more kernel trajectories (e.g. standard vs adversarial training).

    Top row: one pairwise-distance heatmap per run (kept snapshots), the polar path (angle from
    the initial kernel, relative norm) and the normalised top-k spectra at the first and last
    checkpoint. Bottom row: the chosen scalar histories against the step.

    Args:
        runs (KernelEvolution or mapping name -> KernelEvolution): the trackers.
        metrics (sequence of str): scalar histories to draw in the bottom row.

    Returns:
        matplotlib.figure.Figure.
    """
    if isinstance(runs, KernelEvolution):
        runs = {"run": runs}
    if not runs or any(len(r) == 0 for r in runs.values()):
        raise ValueError("Every run needs at least one checkpoint (call update first).")
    plt = _pyplot()
    top = len(runs) + 2
    cols = max(top, len(metrics))
    fig = plt.figure(figsize=(3.2 * cols, 6.4))
    for i, (name, run) in enumerate(runs.items()):
        ax = fig.add_subplot(2, cols, i + 1)
        steps, dist = run.pairwise_distances()
        image = ax.imshow(dist.numpy(), cmap="viridis", origin="lower")
        ticks = list(range(0, len(steps), max(1, len(steps) // 4)))
        ax.set_xticks(ticks, [steps[t] for t in ticks])
        ax.set_yticks(ticks, [steps[t] for t in ticks])
        ax.set_title(f"{name}: kernel distance", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    _polar_path(fig.add_subplot(2, cols, len(runs) + 1, projection="polar"), runs)
    ax = fig.add_subplot(2, cols, len(runs) + 2)
    for name, run in runs.items():
        for index, style in ((0, ":"), (-1, "-")):
            spec = run.spectra[index]
            ax.semilogy(spec / spec.sum(), style, label=f"{name} step {run.steps[index]}")
    ax.set(xlabel="k", title="top-k spectrum (normalised)")
    ax.legend(fontsize=6)
    for j, metric in enumerate(metrics):
        ax = fig.add_subplot(2, cols, cols + j + 1)
        for name, run in runs.items():
            ax.plot(run.steps, run.history[metric], "o-", ms=2, label=name)
        ax.set(xlabel="step", title=metric)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_feature_tradeoff(
    usefulness: Sequence[float],
    robustness: Sequence[float],
    tradeoff: Mapping[str, Sequence[float]] | None = None,
) -> Any:
    r"""Per-eigen-feature usefulness and robustness, and the top-m accuracy trade-off.

    Args:
        usefulness (sequence of float): clean accuracy per feature (``EigenFeatures.usefulness``).
        robustness (sequence of float): robust accuracy per feature.
        tradeoff (mapping, optional): output of ``EigenFeatures.tradeoff``.

    Returns:
        matplotlib.figure.Figure.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2 if tradeoff is not None else 1, figsize=(10, 3.6), squeeze=False)
    ax = axes[0, 0]
    ax.plot(list(usefulness), "o-", ms=3, label="usefulness (clean accuracy)")
    ax.plot(list(robustness), "s-", ms=3, label="robustness (accuracy under attack)")
    ax.set(xlabel="eigen-feature k (descending eigenvalue)", ylabel="accuracy")
    ax.legend(fontsize=8)
    if tradeoff is not None:
        ax = axes[0, 1]
        ax.plot(tradeoff["m"], tradeoff["accuracy"], "o-", label="clean")
        ax.plot(tradeoff["m"], tradeoff["robust_accuracy"], "s-", label="under attack")
        ax.set(xscale="log", xlabel="top-m eigen-features", ylabel="accuracy")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
