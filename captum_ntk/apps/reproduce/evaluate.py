r"""One kernel of one trained network: attribution object, kGLM, faithfulness, linearization."""

from __future__ import annotations

import inspect
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sklearn.exceptions import ConvergenceWarning
from torch import Tensor, nn

from ...attribution import ATTRIBUTION_CLASSES, NTKAttribution
from ...kernels import KERNELS, kernel_matrix
from ...metrics import faithfulness, linearization
from ...surrogate import KernelGLM
from .data import RowData

__all__ = ["KernelResult", "evaluate_kernel", "store_supported", "surrogate_options"]

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


def store_supported() -> bool:
    """Whether this version's ``kernel_matrix`` has a ``store=`` argument."""
    return "store" in inspect.signature(kernel_matrix).parameters


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
) -> NTKAttribution:
    options: dict[str, Any] = {}
    if kernel in PROJECTED:
        options = {"projection_dim": projection_dim, "seed": seed}
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
    store: Path | None = None,
    show_progress: bool = True,
) -> KernelResult:
    r"""Train and test kernels, kGLM, tau_K / TAD / R_miss and the linearization R^2.

    Args:
        kernel (str): a kernel name (``trntk``, ``proj_pntk``, ...).
        model (nn.Module): the trained network (eval mode).
        data (RowData): the row's data.
        alpha (float): kGLM L2 strength (scaled by mean(diag K)^2 for unnormalised kernels).
        seed (int): seed of the projection.
        device (str, optional): where the kernels are computed.
        batch_size (int): examples per kernel block.
        projection_dim (int): K of the projected kernels.
        store (Path, optional): kernel store folder, where supported.
        show_progress (bool): progress bars over kernel blocks.

    Returns:
        KernelResult: the numbers (``row``) and the objects behind them.
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
        store=store,
    )
    train_kernel = attr.compute_train_kernel(show_progress=show_progress)
    if not KERNELS[kernel].normalized:
        scale = float(train_kernel.diagonal().double().mean())
        alpha = alpha * scale**2 if scale > 0 else alpha
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        glm = attr.fit_surrogate(**surrogate_options(attr, alpha))
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    test_kernel = attr.influence(_test_batch(data), show_progress=show_progress)
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
        warnings.warn(f"linearization skipped for {kernel}: {error}", stacklevel=2)
    row = {
        "kernel": kernel,
        "tau": scores["tau"],
        "tad": scores["tad"],
        "r_miss": scores["r_miss"],
        "acc_nn": scores["acc_nn"],
        "acc_kglm": scores["acc_surrogate"],
        "r2_linear": r2["linear"],
        "r2_logistic4": r2["logistic4"],
        "alpha": alpha,
        "converged": converged,
        "seconds": time.perf_counter() - start,
    }
    return KernelResult(row, attr, test_kernel, glm, scores["p_nn"], scores["p_surrogate"])


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
