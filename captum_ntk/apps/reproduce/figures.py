r"""Figures of a reproduced row: Fig.-2-style class attribution, exemplars, Fig.-1 linearization."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ..plots import plot_class_attribution, plot_exemplars, predicted_class_attributions
from .data import RowData
from .evaluate import KernelResult

__all__ = ["plot_linearization", "row_figures", "text_exemplars"]


def kernel_attributions(test_kernel: Tensor, result: KernelResult) -> Tensor:
    r"""Eq. 3 attributions (n_test, C, n_train) from a precomputed test kernel."""
    coef = result.glm.coef_.to("cpu", torch.float64)
    intercept = result.glm.intercept_.to("cpu", torch.float64)
    kernel = test_kernel.to("cpu", torch.float64)
    return kernel[:, None, :] * coef[None] + (intercept / kernel.shape[1])[None, :, None]


def plot_linearization(
    p_surrogate: Tensor, p_nn: Tensor, *, title: str, path: Path, eps: float = 1e-6
) -> Figure:
    r"""Fig. 1 of Engel et al.: network vs kGLM correct-class probability, in logit space.

    Args:
        p_surrogate (Tensor): (n,) kGLM probabilities of the correct class.
        p_nn (Tensor): (n,) network probabilities of the correct class.
        title (str): figure title.
        path (Path): where the PNG goes.
        eps (float): probabilities are clipped to [eps, 1 - eps] before the logit.

    Returns:
        Figure: the scatter plot with the least-squares line.
    """
    u = torch.logit(p_surrogate.double().clamp(eps, 1 - eps)).numpy()
    v = torch.logit(p_nn.double().clamp(eps, 1 - eps)).numpy()
    fig = Figure(figsize=(5.2, 4.6), layout="constrained")
    ax = fig.subplots()
    ax.scatter(u, v, s=6, alpha=0.5)
    if len(u) > 1 and np.ptp(u) > 0:
        slope, offset = np.polyfit(u, v, 1)
        grid = np.linspace(u.min(), u.max(), 50)
        ax.plot(
            grid, slope * grid + offset, color="tab:red", label=f"v = {slope:.2f} u + {offset:.2f}"
        )
        ax.legend(fontsize=8)
    ax.set_xlabel("logit of kGLM probability (correct class)")
    ax.set_ylabel("logit of network probability (correct class)")
    ax.set_title(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def _rows(test_y: Tensor, pred: Tensor, n: int) -> Tensor:
    wrong = torch.nonzero(pred != test_y).flatten().tolist()[:1]
    rest = [i for i in range(len(test_y)) if i not in wrong]
    by_class = sorted(rest, key=lambda i: (int(test_y[i]), i))
    picks = wrong + [by_class[j] for j in np.linspace(0, len(by_class) - 1, n).astype(int)]
    return torch.tensor(list(dict.fromkeys(picks))[:n], dtype=torch.long)


def row_figures(
    name: str, result: KernelResult, data: RowData, pred: Tensor, names: tuple[str, ...], out: Path
) -> list[str]:
    r"""Class attribution, top-5 proponents / opponents and the linearization plot of one seed.

    Args:
        name (str): the row name (file prefix).
        result (KernelResult): the trNTK evaluation.
        data (RowData): the row's data (images; text rows get no exemplar grids).
        pred (Tensor): (n_test,) network predictions.
        names (tuple of str): class names.
        out (Path): output folder.

    Returns:
        list of str: the files written (relative to ``out``).
    """
    attributions = kernel_attributions(result.test_kernel, result)
    files = [f"{name}_class_attribution.png", f"{name}_linearization.png"]
    plot_class_attribution(
        attributions,
        data.y_train,
        pred,
        class_names=names,
        path=out / files[0],
        title=f"{name}: trNTK kGLM attributions",
    )
    plot_linearization(
        result.p_surrogate,
        result.p_nn,
        title=f"{name}: kGLM vs network (trNTK)",
        path=out / files[1],
    )
    if data.is_text:
        return files
    rows = _rows(data.y_test, pred, 4)
    toward = predicted_class_attributions(attributions[rows], pred[rows])
    k = min(5, toward.shape[1])
    for kind, largest in (("proponents", True), ("opponents", False)):
        scores, indices = torch.topk(toward, k, dim=1, largest=largest)
        file = f"{name}_{kind}.png"
        plot_exemplars(
            data.x_test[rows],
            data.x_train,
            indices,
            scores,
            test_labels=data.y_test[rows],
            test_pred=pred[rows],
            train_labels=data.y_train,
            class_names=names,
            score_name="attr",
            title=f"{name}: top-{k} {kind} (trNTK kGLM)",
            path=out / file,
        )
        files.append(file)
    return files


def text_exemplars(result: KernelResult, data: RowData, pred: Tensor, n: int = 3) -> list[str]:
    r"""Markdown lines: a few test sentences with their top-3 proponent training sentences."""
    attributions = kernel_attributions(result.test_kernel, result)
    rows = _rows(data.y_test, pred, n)
    toward = predicted_class_attributions(attributions[rows], pred[rows])
    lines = []
    for r, i in enumerate(rows.tolist()):
        lines.append(
            f'- test: "{data.test_texts[i]}" (label {int(data.y_test[i])}, '
            f"predicted {int(pred[i])})"
        )
        for j in torch.topk(toward[r], min(3, toward.shape[1])).indices.tolist():
            lines.append(f'  - "{data.train_texts[j]}" (label {int(data.y_train[j])})')
    return lines
