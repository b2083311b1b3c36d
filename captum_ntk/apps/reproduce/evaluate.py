r"""One kernel of one trained network: attribution object, kGLM, faithfulness, linearization."""

from __future__ import annotations

import inspect
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sklearn.exceptions import ConvergenceWarning
from torch import Tensor, nn

from ...attribution import ATTRIBUTION_CLASSES, NTKAttribution
from ...kernels import KERNELS
from ...metrics import faithfulness, linearization
from ...surrogate import KernelGLM
from .data import RowData
from .protocol import paper_tau
from .store import RowStore

__all__ = [
    "SURROGATES",
    "KernelResult",
    "evaluate_kernel",
    "class_one_logits",
    "surrogate_options",
    "test_logits",
]

PROJECTED = ("proj_trntk", "proj_pntk")


@dataclass
class KernelResult:
    r"""What :func:`evaluate_kernel` returns: the row of numbers and the objects for figures."""

    row: dict[str, Any]
    attr: NTKAttribution
    test_kernel: Tensor
    glm: KernelGLM
    p_nn: Tensor
    p_surrogate: Tensor


def surrogate_options(attr: NTKAttribution, alpha: float) -> dict[str, Any]:
    r"""Keyword arguments of ``fit_surrogate``: the paper's alpha and class weights, and
    ``target="labels"`` (fit the kGLM to the labels, as the paper does) where supported."""
    options: dict[str, Any] = {"alpha": alpha, "class_weight": "balanced"}
    if "target" in inspect.signature(attr.fit_surrogate).parameters:
        options["target"] = "labels"
    return options


def _attribution(
    kernel: str,
    model: nn.Module,
    data: RowData,
    *,
    device: str | None,
    batch_size: int,
    projection_dim: int,
    seed: int,
    store: Path | None,
    memory_limit: int | None = None,
) -> NTKAttribution:
    options: dict[str, Any] = {}
    if kernel in PROJECTED:
        options = {"projection_dim": projection_dim, "seed": seed}
    if memory_limit is not None:
        options["memory_limit"] = memory_limit
    cls = ATTRIBUTION_CLASSES[kernel]
    if store is not None and "store" in inspect.signature(cls.__init__).parameters:
        options["store"] = store
    return cls(
        model,
        data.train_dataset(),
        batch_size=batch_size,
        device=device,
        eval_mode=True,
        **options,
    )


#: The surrogates a row reports side by side: the paper's kGLM (fitted to the labels with the
#: authors' alpha and balanced classes) and this library's default (``fit_surrogate()``).
SURROGATES = ("paper", "default")


def test_logits(model: nn.Module, data: RowData, device: str | None) -> Tensor:
    r"""The network's logits on the row's test set, (n, C) or (n, 1), on the CPU."""
    with torch.no_grad():
        if data.is_text:
            out = model(**{k: v.to(device or "cpu") for k, v in data.x_test.items()}).logits
        else:
            out = torch.cat([model(x.to(device or "cpu")) for x in data.x_test.split(256)])
    out = out.cpu()
    return out[:, None] if out.dim() == 1 else out


def class_one_logits(logits: Tensor) -> Tensor | None:
    r"""The (n,) logit of class 1 of a binary row (one output, or the difference of two), in
    float64; None for more classes."""
    out = logits.double()
    if out.shape[1] == 1:
        return out[:, 0]
    return out[:, 1] - out[:, 0] if out.shape[1] == 2 else None


def evaluate_kernel(
    kernel: str,
    model: nn.Module,
    data: RowData,
    *,
    alpha: float,
    seed: int,
    device: str | None = None,
    batch_size: int = 64,
    projection_dim: int = 10240,
    row_store: RowStore | None = None,
    show_progress: bool = True,
    surrogates: tuple[str, ...] = SURROGATES,
    class_one: Tensor | None = None,
    memory_limit: int | None = None,
) -> list[KernelResult]:
    r"""Train and test kernels, then per surrogate: kGLM, tau_K (both protocols), TAD, R_miss and
    the linearization R^2.

    Args:
        kernel (str): a kernel name (``trntk``, ``proj_pntk``, ...).
        model (nn.Module): the trained network (eval mode).
        data (RowData): the row's data.
        alpha (float): the paper surrogate's L2 strength (scaled by mean(diag K)^2 for
                unnormalised kernels).
        seed (int): seed of the projection.
        device (str, optional): where the kernels are computed.
        batch_size (int): examples per kernel block.
        projection_dim (int): K of the projected kernels.
        row_store (RowStore, optional): ``--store``: the kernels (and the projected kernels'
                features) are read from it when stored, else computed and stored.
        show_progress (bool): progress bars over kernel blocks.
        surrogates (tuple of str): ``"paper"`` and / or ``"default"`` (see :data:`SURROGATES`).
        class_one (Tensor, optional): the network's (n,) class-1 logits on the test set
                (:func:`class_one_logits`); default: computed here.
        memory_limit (int, optional): bytes of the kernels' blocks (``--memory-gb``); default:
                the device's default budget.

    Returns:
        list of KernelResult: one per surrogate, in the order asked.
    """
    start = time.perf_counter()
    attr = _attribution(
        kernel,
        model,
        data,
        device=device,
        batch_size=batch_size,
        projection_dim=projection_dim,
        seed=seed,
        store=row_store.features(seed, kernel) if row_store and kernel in PROJECTED else None,
        memory_limit=memory_limit,
    )

    def compute() -> tuple[Tensor, Tensor]:
        train = attr.compute_train_kernel(show_progress=show_progress)
        return train, attr.influence(_test_batch(data), show_progress=show_progress)

    if row_store is None:
        train_kernel, test_kernel = compute()
    else:
        options = {"projection_dim": projection_dim, "seed": seed} if kernel in PROJECTED else {}
        train_kernel, test_kernel = row_store.kernels(seed, kernel, options, model, compute)
        attr.train_kernel = train_kernel
    paper_alpha = alpha
    if not KERNELS[kernel].normalized:
        scale = float(train_kernel.diagonal().double().mean())
        paper_alpha = alpha * scale**2 if scale > 0 else alpha
    kernel_seconds = time.perf_counter() - start
    if class_one is None:
        class_one = class_one_logits(test_logits(model, data, device))
    results = []
    for surrogate in surrogates:
        start = time.perf_counter()
        options = surrogate_options(attr, paper_alpha) if surrogate == "paper" else {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            glm = attr.fit_surrogate(**options)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        row, scores = _faithfulness_row(
            model, attr, data, glm, test_kernel, class_one, device, seed
        )
        row.update(
            kernel=kernel,
            surrogate=surrogate,
            alpha=float(getattr(glm, "alpha_", None) or options.get("alpha", float("nan"))),
            converged=converged,
            seconds=kernel_seconds + time.perf_counter() - start,
        )
        results.append(
            KernelResult(row, attr, test_kernel, glm, scores["p_nn"], scores["p_surrogate"])
        )
    return results


def _faithfulness_row(model, attr, data, glm, test_kernel, class_one, device, seed):
    scores = faithfulness(
        model.to(device or "cpu"),
        attr,
        _to(data.x_test, device),
        data.y_test,
        surrogate=glm,
        test_kernel=test_kernel,
        return_per_example=True,
    )
    try:
        r2 = linearization(scores["p_surrogate"], scores["p_nn"], seed=seed)
    except ValueError as error:  # too few unsaturated probabilities
        r2 = {"linear": float("nan"), "logistic4": float("nan"), "arctan4": float("nan")}
        warnings.warn(f"linearization skipped: {error}", stacklevel=2)
    tau_paper = float("nan")
    if class_one is not None:
        surrogate_scores = glm.decision_function(test_kernel.double())
        if surrogate_scores.dim() == 2:  # a two-column kGLM: the log-odds of class 1
            surrogate_scores = surrogate_scores[:, 1] - surrogate_scores[:, 0]
        tau_paper = paper_tau(class_one, surrogate_scores.cpu())
    row = {
        "tau_paper": tau_paper,
        "tau": scores["tau"],
        "tad": scores["tad"],
        "r_miss": scores["r_miss"],
        "acc_nn": scores["acc_nn"],
        "acc_kglm": scores["acc_surrogate"],
        "r2_linear": r2["linear"],
        "r2_logistic4": r2["logistic4"],
    }
    return row, scores


def _test_batch(data: RowData) -> Any:
    if data.is_text:
        return {**data.x_test, "labels": data.y_test}
    return (data.x_test, data.y_test)


def _to(inputs: Any, device: str | None) -> Any:
    if device is None:
        return inputs
    if isinstance(inputs, dict):
        return {k: v.to(device) for k, v in inputs.items()}
    return inputs.to(device)
