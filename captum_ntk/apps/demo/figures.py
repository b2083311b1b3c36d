r"""The demo's figures: class attributions, exemplar grids and alpha-selection curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...attribution import NTKAttribution
from ...surrogate import KernelGLM
from .config import DemoConfig, DemoModel
from .evaluate import Data, kernel_attributions

__all__ = ["exemplar_rows", "model_figures", "plot_alpha_selection"]


def exemplar_rows(test_y: Tensor, test_pred: Tensor, n: int) -> Tensor:
    """Test indices for the grids: one misclassified digit (if any), then distinct classes."""
    chosen: list[int] = []
    wrong = torch.nonzero(test_pred != test_y).flatten().tolist()
    if wrong:
        chosen.append(wrong[0])
    seen = {int(test_y[i]) for i in chosen}
    for i in range(len(test_y)):
        if len(chosen) >= n:
            break
        if int(test_y[i]) not in seen:
            chosen.append(i)
            seen.add(int(test_y[i]))
    for i in range(len(test_y)):  # fewer classes than n
        if len(chosen) >= n:
            break
        if i not in chosen:
            chosen.append(i)
    return torch.tensor(chosen[:n], dtype=torch.long)


def class_names(spec: DemoModel) -> list[str]:
    """The digit names of the model's classes."""
    if spec.classes is None:
        return [str(d) for d in range(10)]
    return [str(d) for d in spec.classes]


def model_figures(
    spec: DemoModel,
    attr: NTKAttribution,
    test_kernel: Tensor,
    glm: KernelGLM,
    data: Data,
    test_pred: Tensor,
    config: DemoConfig,
) -> list[str]:
    r"""Writes the class-attribution plot and the exemplar grids of one model.

    Args:
        spec (DemoModel): the model.
        attr (NTKAttribution): its attribution object (figure kernel).
        test_kernel (Tensor): (n_test, n_train) kernel.
        glm (KernelGLM): the fitted kGLM.
        data (tuple of Tensor): x_train, y_train, x_test, y_test.
        test_pred (Tensor): (n_test,) the network's predictions.
        config (DemoConfig): output folder, seed, n_exemplars, top_k.

    Returns:
        list of str: the file names written into ``config.output``.
    """
    from ..plots import plot_class_attribution, plot_exemplars, predicted_class_attributions

    x_train, y_train, x_test, y_test = data
    names = class_names(spec)
    attributions = kernel_attributions(test_kernel, glm)  # == attr.attribute(x_test)
    out, prefix = config.output, spec.name
    plot_class_attribution(
        attributions,
        y_train,
        test_pred,
        class_names=names,
        title=f"{prefix}: trNTK kGLM attributions ({len(y_test)} test digits, "
        f"{len(y_train)} training digits)",
        path=out / f"{prefix}_class_attribution.png",
        seed=config.seed,
    )
    files = [f"{prefix}_class_attribution.png"]
    rows = exemplar_rows(y_test, test_pred, config.n_exemplars)
    k = min(config.top_k, len(y_train))
    toward = predicted_class_attributions(attributions[rows], test_pred[rows])
    common: dict[str, Any] = dict(
        test_labels=y_test[rows], test_pred=test_pred[rows], train_labels=y_train, class_names=names
    )
    for kind, largest in (("proponents", True), ("opponents", False)):
        scores, indices = torch.topk(toward, k, dim=1, largest=largest)
        plot_exemplars(
            x_test[rows],
            x_train,
            indices,
            scores,
            score_name="attr",
            title=f"{prefix}: top-{k} {kind} (trNTK kGLM attribution to the predicted class)",
            path=out / f"{prefix}_{kind}.png",
            **common,
        )
        files.append(f"{prefix}_{kind}.png")
    similar = attr.influence(x_test[rows], k=k)
    plot_exemplars(
        x_test[rows],
        x_train,
        similar.indices,
        similar.influence_scores,
        score_name="K",
        title=f"{prefix}: top-{k} most similar training digits under the trNTK",
        path=out / f"{prefix}_similar.png",
        **common,
    )
    files.append(f"{prefix}_similar.png")
    return files


def plot_alpha_selection(
    curves: Sequence[dict[str, Any]], title: str, path: str | Path | None = None
) -> Any:
    r"""Cross-validated faithfulness against alpha, one line per kGLM target.

    Args:
        curves (sequence of dict): one per target, with ``"target"``, ``"alpha"`` (the chosen
                value) and ``"alpha_grid"``: ``{"alphas", "mean_tau", "std_tau"}`` sequences
                (``KernelGLM.cv_results_``). Entries whose ``alpha_grid`` is None are skipped.
        title (str): the figure title.
        path (str or Path, optional): where to save a PNG.

    Returns:
        matplotlib.figure.Figure: the figure.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), dpi=100)
    ax = fig.add_subplot()
    for curve in curves:
        grid = curve.get("alpha_grid")
        if grid is None:
            continue
        alphas = [float(a) for a in grid["alphas"]]
        mean = [float(t) for t in grid["mean_tau"]]
        std = [float(s) for s in grid["std_tau"]]
        line = ax.plot(alphas, mean, marker="o", label=f"target={curve['target']}")[0]
        low = [m - s for m, s in zip(mean, std, strict=True)]
        high = [m + s for m, s in zip(mean, std, strict=True)]
        ax.fill_between(alphas, low, high, color=line.get_color(), alpha=0.2)
        ax.axvline(float(curve["alpha"]), color=line.get_color(), linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("alpha (relative to the kernel's scale)")
    ax.set_ylabel("held-out Kendall tau (mean ± std over folds)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100, bbox_inches="tight")
    return fig
