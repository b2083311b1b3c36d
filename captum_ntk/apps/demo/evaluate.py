r"""One kernel of one demo model: the attribution object, the kGLM and its faithfulness."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sklearn.exceptions import ConvergenceWarning
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from ...attribution import ATTRIBUTION_CLASSES, NTKAttribution
from ...kernels import kernel_matrix
from ...metrics import faithfulness
from ...surrogate import KernelGLM
from .config import PAPER_TARGET, PROJECTED_KERNELS, DemoConfig

__all__ = [
    "collect_warnings",
    "comparison_targets",
    "entk_timing",
    "evaluate_kernel",
    "fit_and_score",
    "kernel_attributions",
]

Data = tuple[Tensor, Tensor, Tensor, Tensor]


def kernel_attributions(test_kernel: Tensor, glm: KernelGLM) -> Tensor:
    r"""Data attributions (Eq. 3) from a precomputed test kernel.

    ``A(x, x_i)^c = W_{c,i} κ(x, x_i) + b_c / N``: the same as
    ``NTKAttribution.attribute(inputs)``, without recomputing the kernel.

    Args:
        test_kernel (Tensor): (n_test, n_train) kernel between test and training examples.
        glm (KernelGLM): the fitted kGLM.

    Returns:
        Tensor: (n_test, C, n_train), C the number of kGLM logits (1 for a binary kGLM).
    """
    coef = glm.coef_.to("cpu", test_kernel.dtype)
    intercept = glm.intercept_.to("cpu", test_kernel.dtype)
    n_train = test_kernel.shape[1]
    return test_kernel[:, None, :] * coef[None] + (intercept / n_train)[None, :, None]


@contextmanager
def collect_warnings(sink: list[str]) -> Iterator[None]:
    r"""Records every warning raised inside the block as ``"Category: message"`` in ``sink``.

    Repeated warnings are all recorded (``simplefilter("always")``), so the caller can show
    them; nothing is silently dropped.

    Args:
        sink (list of str): receives the warnings, in order.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    sink.extend(f"{w.category.__name__}: {w.message}" for w in caught)


def fit_and_score(
    attr: NTKAttribution,
    model: nn.Module,
    data: Data,
    test_kernel: Tensor,
    target: str,
    config: DemoConfig,
) -> tuple[dict[str, Any], KernelGLM]:
    r"""Fits the kGLM to ``target`` on the train kernel and measures its faithfulness.

    Args:
        attr (NTKAttribution): the attribution object (its train kernel is cached).
        model (nn.Module): the network.
        data (tuple of Tensor): x_train, y_train, x_test, y_test.
        test_kernel (Tensor): (n_test, n_train) kernel of the test digits.
        target (str): ``fit_surrogate(target=)``.
        config (DemoConfig): alpha and class weights.

    Returns:
        tuple: the scores (tau, tau_margin, ties, tad, r_miss, acc_nn, acc_kglm, alpha,
        alpha_grid (the ``cv_results_`` of ``alpha="auto"`` or None), n_iter, converged,
        warnings) and the fitted kGLM.
    """
    _, _, x_test, y_test = data
    caught: list[str] = []
    with collect_warnings(caught):
        glm = attr.fit_surrogate(
            target=target, alpha=config.alpha, class_weight=config.class_weight
        )
        scores = faithfulness(model, attr, x_test, y_test, surrogate=glm, test_kernel=test_kernel)
    cv = glm.cv_results_
    result = {
        "target": target,
        "tau": scores["tau"],
        "tau_margin": scores.get("tau_margin"),
        "ties": scores.get("ties"),
        "tad": scores["tad"],
        "r_miss": scores["r_miss"],
        "acc_nn": scores["acc_nn"],
        "acc_kglm": scores["acc_surrogate"],
        "alpha": float(glm.alpha_),
        "alpha_grid": None if cv is None else {k: cv[k] for k in ("alphas", "mean_tau", "std_tau")},
        "n_iter": int(glm.n_iter_),
        "converged": not any(w.startswith(ConvergenceWarning.__name__) for w in caught),
        "warnings": caught,
    }
    return result, glm


def evaluate_kernel(
    model_name: str,
    kernel: str,
    model: nn.Module,
    data: Data,
    projection_dim: int,
    config: DemoConfig,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], NTKAttribution, Tensor, KernelGLM]:
    r"""The faithfulness row of one model and kernel, with the kGLM of ``config``'s target.

    Args:
        model_name (str): the row's model label.
        kernel (str): a kernel of :data:`~captum_ntk.apps.demo.ALL_KERNELS`.
        model (nn.Module): the trained network.
        data (tuple of Tensor): x_train, y_train, x_test, y_test.
        projection_dim (int): K for the projected kernels.
        config (DemoConfig): the settings.
        log (Callable[[str], None]): where warnings raised while fitting are shown.

    Returns:
        tuple: the row (model, kernel, the scores of :func:`fit_and_score`, seconds,
        projection_dim), the attribution object, the (n_test, n_train) test kernel and the kGLM.
    """
    x_train, y_train, x_test, _ = data
    options: dict[str, Any] = {}
    if kernel in PROJECTED_KERNELS:
        options = {"projection_dim": projection_dim, "seed": config.seed}
    start = time.perf_counter()
    caught: list[str] = []
    with collect_warnings(caught):
        attr = ATTRIBUTION_CLASSES[kernel](
            model, TensorDataset(x_train, y_train), batch_size=config.batch_size, **options
        )
        test_kernel = attr.influence(x_test)
    scores, glm = fit_and_score(attr, model, data, test_kernel, config.resolved_target(), config)
    scores["warnings"] = caught + scores["warnings"]
    for message in scores["warnings"]:
        log(f"[{model_name}] {kernel}: warning: {message}")
    row = {
        "model": model_name,
        "kernel": kernel,
        **scores,
        "seconds": time.perf_counter() - start,
        "projection_dim": projection_dim if kernel in PROJECTED_KERNELS else None,
    }
    return row, attr, test_kernel, glm


def comparison_targets(config: DemoConfig) -> tuple[str, ...]:
    """The targets of the label-fitted vs distilled comparison: the run's target first."""
    from ...attribution.surrogate_methods import DEFAULT_TARGET

    target = config.resolved_target()
    other = DEFAULT_TARGET if target == PAPER_TARGET else PAPER_TARGET
    if other == target:  # the library's default is the paper's: compare with distillation
        other = "probabilities"
    return target, other


def entk_timing(model: nn.Module, data: Data) -> dict[str, Any]:
    """Shape and seconds of the eNTK between 8 test digits and the training digits."""
    x_train, _, x_test, _ = data
    start = time.perf_counter()
    entk = kernel_matrix(model, x_test[:8], x_train, kernel="entk")
    return {"shape": list(entk.shape), "seconds": time.perf_counter() - start}
