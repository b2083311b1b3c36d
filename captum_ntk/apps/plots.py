r"""Figures for kernel data attribution (matplotlib, no pyplot state: safe under Agg).

::

    A = attr.attribute(test_x)                                    # (n_test, C, n_train)
    fig = plot_class_attribution(A, train_y, test_pred, path="fig2.png")
    top = attr.influence(test_x[:4], k=5)
    fig = plot_exemplars(test_x[:4], train_x, top.indices, top.influence_scores, path="top5.png")

Both functions build a :class:`matplotlib.figure.Figure` directly (not through
``pyplot``), so they open no window, keep no global figure alive and work with any backend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

__all__ = ["plot_class_attribution", "plot_exemplars", "predicted_class_attributions"]

#: Values per violin at most (a seeded subsample keeps the KDE fast and the figure stable).
_MAX_VIOLIN_POINTS = 4000


def predicted_class_attributions(attributions: Tensor, test_pred: Tensor) -> Tensor:
    r"""Attributions to each test example's predicted class.

    For C > 1 logits this is ``attributions[n, test_pred[n], :]``. A binary kGLM has one logit
    (the score of class 1, C = 1): evidence for class 0 is its negative, so the sign is flipped
    for examples predicted as class 0.

    Args:
        attributions (Tensor): (n_test, C, n_train) data attributions (Eq. 3).
        test_pred (Tensor): (n_test,) predicted classes (0/1 when C = 1).

    Returns:
        Tensor: (n_test, n_train) attributions toward the predicted class.
    """
    attributions, test_pred = _check_attributions(attributions, test_pred)
    if attributions.shape[1] == 1:
        sign = torch.where(test_pred == 1, 1.0, -1.0).to(attributions.dtype)
        return attributions[:, 0, :] * sign[:, None]
    return attributions[torch.arange(len(test_pred)), test_pred, :]


def _check_attributions(attributions: Tensor, test_pred: Tensor) -> tuple[Tensor, Tensor]:
    attributions = torch.as_tensor(attributions).detach().cpu().double()
    test_pred = torch.as_tensor(test_pred).detach().cpu().long().reshape(-1)
    if attributions.dim() != 3:
        raise ValueError(
            f"attributions must be (n_test, C, n_train), got shape {tuple(attributions.shape)}."
        )
    if test_pred.shape[0] != attributions.shape[0]:
        raise ValueError(
            f"test_pred has {test_pred.shape[0]} entries for {attributions.shape[0]} test examples."
        )
    n_classes = max(2, attributions.shape[1])
    if test_pred.numel() and (int(test_pred.min()) < 0 or int(test_pred.max()) >= n_classes):
        raise ValueError(f"test_pred must lie in [0, {n_classes}).")
    return attributions, test_pred


def _names(class_names: Sequence[str] | None, n: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(n)]
    if len(class_names) < n:
        raise ValueError(f"class_names has {len(class_names)} entries, need {n}.")
    return [str(c) for c in class_names[:n]]


def _save(fig: Figure, path: str | Path | None, dpi: int) -> None:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")


def plot_class_attribution(
    attributions: Tensor,
    train_labels: Tensor,
    test_pred: Tensor,
    *,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    path: str | Path | None = None,
    dpi: int = 120,
    seed: int = 0,
) -> Figure:
    r"""Class-level view of data attributions, like Fig. 2 of Engel et al.

    (a) Heat map of the mean attribution of a training example of class k (columns) to logit
    c (rows), averaged over test examples and over the training examples of class k. A
    faithful, class-structured surrogate has a positive diagonal.
    (b) Distribution of the attributions to each test example's *predicted* class, split by
    the class of the training example: for training class k, the left violin holds
    attributions to test examples predicted as k, the right one to test examples predicted
    as another class.

    Args:
        attributions (Tensor): (n_test, C, n_train) attributions, e.g. from
                ``NTKAttribution.attribute``. C = 1 (binary kGLM) is allowed.
        train_labels (Tensor): (n_train,) class labels of the training examples.
        test_pred (Tensor): (n_test,) predicted classes of the test examples (0/1 if C = 1).
        class_names (sequence of str, optional): names of the classes. Default: "0", "1", ...
        title (str, optional): figure title.
        path (str or Path, optional): save the figure there (PNG, PDF, ... by suffix).
        dpi (int): resolution when saving. Default: 120.
        seed (int): seed of the subsample drawn for large violins. Default: 0.

    Returns:
        Figure: the figure, with two axes.
    """
    attributions, test_pred = _check_attributions(attributions, test_pred)
    train_labels = torch.as_tensor(train_labels).detach().cpu().long().reshape(-1)
    n_test, n_logits, n_train = attributions.shape
    if train_labels.shape[0] != n_train:
        raise ValueError(f"train_labels has {train_labels.shape[0]} entries, expected {n_train}.")
    n_classes = max(2, n_logits, int(train_labels.max()) + 1 if n_train else 0)
    names = _names(class_names, n_classes)

    fig = Figure(figsize=(12.5, 4.8), layout="constrained")
    ax_heat, ax_dist = fig.subplots(1, 2, width_ratios=(1, 1.45))
    _class_heatmap(fig, ax_heat, attributions, train_labels, names, n_logits, n_classes)
    _predicted_class_violins(ax_dist, attributions, test_pred, train_labels, names, n_classes, seed)
    if title:
        fig.suptitle(title)
    _save(fig, path, dpi)
    return fig


def _class_heatmap(
    fig: Figure,
    ax_heat: Any,
    attributions: Tensor,
    train_labels: Tensor,
    names: list[str],
    n_logits: int,
    n_classes: int,
) -> None:
    """Panel (a): mean attribution of a training example of each class to each logit."""
    # (a) mean over test examples and over training examples of each class
    per_logit = attributions.mean(dim=0)  # (C, n_train)
    heat = torch.full((n_logits, n_classes), float("nan"), dtype=torch.float64)
    for k in range(n_classes):
        members = train_labels == k
        if bool(members.any()):
            heat[:, k] = per_logit[:, members].mean(dim=1)

    limit = float(np.nanmax(np.abs(heat.numpy()))) if bool(torch.isfinite(heat).any()) else 1.0
    limit = limit if limit > 0 else 1.0
    image = ax_heat.imshow(
        heat.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest"
    )
    ax_heat.set_xticks(range(n_classes), names)
    logit_names = [names[1] + " (single logit)"] if n_logits == 1 else names[:n_logits]
    ax_heat.set_yticks(range(n_logits), logit_names)
    ax_heat.set_xlabel("training class")
    ax_heat.set_ylabel("kGLM logit")
    ax_heat.set_title("(a) mean attribution of a training example, by class")
    if n_logits * n_classes <= 120:
        decimals = max(0, 1 - math.floor(math.log10(limit)))
        for c in range(n_logits):
            for k in range(n_classes):
                value = float(heat[c, k])
                if math.isfinite(value):
                    ax_heat.text(
                        k,
                        c,
                        f"{value:.{decimals}f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if abs(value) > 0.6 * limit else "black",
                    )
    fig.colorbar(image, ax=ax_heat, shrink=0.85)


def _predicted_class_violins(
    ax_dist: Any,
    attributions: Tensor,
    test_pred: Tensor,
    train_labels: Tensor,
    names: list[str],
    n_classes: int,
    seed: int,
) -> None:
    """Panel (b): attributions to the predicted logit by training class, same vs other."""
    # (b) attributions to the predicted class, per training class, same vs other prediction
    toward = predicted_class_attributions(attributions, test_pred)  # (n_test, n_train)
    generator = np.random.default_rng(seed)
    same_data, other_data, same_pos, other_pos = [], [], [], []
    for k in range(n_classes):
        members = train_labels == k
        if not bool(members.any()):
            continue
        block = toward[:, members]
        predicted_k = test_pred == k
        for values, data, pos, offset in (
            (block[predicted_k], same_data, same_pos, -0.2),
            (block[~predicted_k], other_data, other_pos, 0.2),
        ):
            flat = values.reshape(-1).numpy()
            if flat.size == 0:
                continue
            if flat.size > _MAX_VIOLIN_POINTS:
                flat = generator.choice(flat, _MAX_VIOLIN_POINTS, replace=False)
            data.append(flat)
            pos.append(k + offset)
    for data, pos, color, label in (
        (same_data, same_pos, "tab:red", "test predicted as this class"),
        (other_data, other_pos, "tab:blue", "test predicted as another class"),
    ):
        if not data:
            continue
        parts = ax_dist.violinplot(data, positions=pos, widths=0.38, showmedians=True)
        for body in parts["bodies"]:
            body.set_facecolor(color)
            body.set_edgecolor(color)
            body.set_alpha(0.45)
        for key in ("cbars", "cmins", "cmaxes", "cmedians"):
            if key in parts:
                parts[key].set_color(color)
                parts[key].set_linewidth(0.8)
        ax_dist.plot([], [], color=color, linewidth=6, alpha=0.45, label=label)
    ax_dist.axhline(0.0, color="0.4", linewidth=0.6)
    ax_dist.set_xticks(range(n_classes), names)
    ax_dist.set_xlabel("training class")
    ax_dist.set_ylabel("attribution to the predicted class")
    ax_dist.set_title("(b) attributions to the predicted logit, by training class")
    ax_dist.legend(loc="upper right", fontsize=8, frameon=False)


def _as_images(images: Tensor) -> np.ndarray:
    """(n, H, W) arrays from (n, D), (n, 1, H, W), (n, H, W) or (n, 3, H, W) tensors."""
    x = torch.as_tensor(images).detach().cpu().float()
    if x.dim() == 2:
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise ValueError(f"flat images need a square number of pixels, got {x.shape[1]}.")
        return x.reshape(-1, side, side).numpy()
    if x.dim() == 4 and x.shape[1] == 1:
        return x[:, 0].numpy()
    if x.dim() == 4 and x.shape[1] == 3:
        x = x.permute(0, 2, 3, 1)
        low, high = x.amin(), x.amax()
        return ((x - low) / (high - low).clamp_min(1e-12)).numpy()
    if x.dim() == 3:
        return x.numpy()
    raise ValueError(f"images must be (n, D), (n, H, W) or (n, 1|3, H, W), got {tuple(x.shape)}.")


def plot_exemplars(
    test_images: Tensor,
    train_images: Tensor,
    indices: Tensor,
    scores: Tensor,
    *,
    test_labels: Tensor | None = None,
    test_pred: Tensor | None = None,
    train_labels: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    score_name: str = "score",
    title: str | None = None,
    path: str | Path | None = None,
    dpi: int = 120,
) -> Figure:
    r"""Grid of test images, each followed by its top-k training exemplars.

    Row i shows ``test_images[i]`` then ``train_images[indices[i, j]]`` for j = 0..k-1, each
    titled with its label and ``scores[i, j]`` (e.g. ``KMostInfluentialResults`` from
    ``influence(inputs, k=5)``, or the largest / smallest attributions).

    Args:
        test_images (Tensor): (n_test, 64), (n_test, 1, 8, 8) or (n_test, H, W) images.
        train_images (Tensor): (n_train, ...) training images in the same layout.
        indices (Tensor): (n_test, k) training indices.
        scores (Tensor): (n_test, k) kernel values or attributions shown in the titles.
        test_labels (Tensor, optional): (n_test,) true labels of the test images.
        test_pred (Tensor, optional): (n_test,) predicted labels of the test images.
        train_labels (Tensor, optional): (n_train,) labels of the training images.
        class_names (sequence of str, optional): names of the classes.
        score_name (str): what the scores are, shown in the exemplar titles. Default: "score".
        title (str, optional): figure title.
        path (str or Path, optional): save the figure there.
        dpi (int): resolution when saving. Default: 120.

    Returns:
        Figure: the figure, one row per test image and k + 1 columns.
    """
    tests = _as_images(test_images)
    trains = _as_images(train_images)
    indices = torch.as_tensor(indices).detach().cpu().long()
    scores = torch.as_tensor(scores).detach().cpu().double()
    if indices.dim() != 2 or indices.shape != scores.shape or indices.shape[0] != len(tests):
        raise ValueError(
            f"indices and scores must both be (n_test={len(tests)}, k), got "
            f"{tuple(indices.shape)} and {tuple(scores.shape)}."
        )
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= len(trains)):
        raise ValueError(f"indices must lie in [0, {len(trains)}).")
    n_rows, k = indices.shape

    def name(label: Tensor | None, i: int) -> str:
        if label is None:
            return "?"
        value = int(torch.as_tensor(label)[i])
        return class_names[value] if class_names is not None else str(value)

    fig = Figure(figsize=(1.45 * (k + 1) + 0.3, 1.7 * n_rows + 0.5), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n_rows, k + 1, squeeze=False))
    cmap = "gray_r"
    for i in range(n_rows):
        ax = axes[i, 0]
        ax.imshow(tests[i], cmap=cmap, interpolation="nearest")
        parts = [f"test #{i}"]
        if test_labels is not None:
            parts.append(f"y={name(test_labels, i)}")
        if test_pred is not None:
            wrong = test_labels is not None and name(test_pred, i) != name(test_labels, i)
            parts.append(f"pred={name(test_pred, i)}" + (" ✗" if wrong else ""))
        ax.set_title("\n".join([parts[0], " ".join(parts[1:])]), fontsize=8, fontweight="bold")
        for spine in ax.spines.values():
            spine.set_edgecolor("tab:orange")
            spine.set_linewidth(2)
        for j in range(k):
            ax = axes[i, j + 1]
            idx = int(indices[i, j])
            ax.imshow(trains[idx], cmap=cmap, interpolation="nearest")
            label = f"y={name(train_labels, idx)}  " if train_labels is not None else ""
            ax.set_title(f"{label}#{idx}\n{score_name} {float(scores[i, j]):.3g}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path, dpi)
    return fig
