"""Kernel generalized linear model (kGLM): the surrogate model of Engel et al. (Eq. 1).

A kGLM predicts logits from the kernel between an input and the training set,

    kGLM(x) = W κ(x, X) + b,        W ∈ R^{C×N}, b ∈ R^C.

Its "features" are kernel rows, so :meth:`KernelGLM.fit` takes the ``(N, N)`` train kernel and
:meth:`KernelGLM.predict` a ``(n, N)`` test-by-train kernel. It can be fitted to labels (the
paper), to the network's probabilities (cross-entropy with soft targets: a kGLM distilled from the
network) or to the network's logits (squared loss: ridge regression of the network). It imports
only its own subpackage (``captum_ntk.surrogate``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from torch import Tensor
from tqdm import tqdm

from ._validation import ArrayLike, Targets, as_kernel, as_labels, parse_targets
from .consistency import CONSISTENCY_SUBSETS, counterfactual_consistency, select_alpha
from .objectives import SquaredSystem, fit_log_loss, fit_squared, kernel_scale, sample_weight
from .selection import (
    DEFAULT_ALPHA_GRID,
    cross_validate_alpha,
    network_reference,
    stratified_folds,
)

__all__ = ["ABSENT_CLASS_MARGIN", "KernelGLM"]

_BACKENDS = ("torch", "sklearn")
_LOSSES = ("log_loss", "squared")
_DEFAULT_TOL = {"torch": 1e-7, "sklearn": 1e-3}

#: An absent class's logit lies this far below the smallest logit of any present class on the
#: training set (its probability there is below exp(-1000), 0 in float64).
ABSENT_CLASS_MARGIN = 1000.0


class KernelGLM(BaseEstimator):
    r"""Kernel generalized linear model trained on a precomputed kernel.

    The model is :math:`\mathrm{kGLM}(x) = W \kappa(x, X) + b` (Eq. 1 of Engel et al.). Layout
    follows scikit-learn: with two classes and the cross-entropy, ONE logit (``coef_`` ``(1, N)``,
    :meth:`decision_function` ``(n,)`` logits of ``classes_[1]``, :meth:`predict_proba`
    ``[sigmoid(-s), sigmoid(s)]``); otherwise ``coef_`` ``(C, N)`` and ``(n, C)`` logits with a
    softmax.

    What it is fitted to (``y`` of :meth:`fit`) and the loss:

    - ``loss="log_loss"`` (cross-entropy) with ``(N,)`` integer labels (the paper's kGLM, or the
      network's predicted classes, Appendix I), or with soft targets: ``(N, C)`` class
      probabilities or ``(N,)`` probabilities of class 1 for the one-logit binary kGLM (the
      network's softmax / sigmoid outputs: a kGLM distilled from the network);
    - ``loss="squared"`` with real targets ``(N,)`` or ``(N, m)`` (the network's logits: ridge
      regression of the network on kernel rows; ``m`` logits, softmax for ``m >= 2``).

    Objectives (intercept not penalised, :math:`s_i` the class weight of example ``i``):

    .. math::
        \frac{1}{N}\sum_i s_i\,\ell(t_i, f(x_i)) + \frac{\lambda}{2}\|W\|_F^2,
        \qquad \lambda = \alpha\,\sigma^2,

    with :math:`\ell` the cross-entropy :math:`-\sum_c t_{ic}\log\mathrm{softmax}(f)_c` (binary
    logistic loss for one logit) or :math:`\tfrac12\|f - z\|^2`, and :math:`\sigma` the kernel's
    scale (``alpha_scale``). In scikit-learn's terms, :math:`\lambda` is
    ``SGDClassifier(alpha=lambda)``, ``LogisticRegression(C=1 / (lambda * N))`` and, for the
    squared loss, ``Ridge(alpha=lambda * N)`` on the kernel rows (all with
    ``sample_weight=s``).

    ``alpha_scale="auto"`` (default) sets :math:`\sigma` to the RMS of the train kernel's
    diagonal, :math:`\sigma = \sqrt{\mathrm{mean}_i\,\kappa(x_i, x_i)^2}`: multiplying a kernel
    by ``c`` multiplies :math:`\sigma` by ``c`` and gives the same model (``W`` divided by
    ``c``), so one ``alpha`` means the same regularisation for cosine-normalised kernels
    (:math:`\sigma = 1`: trntk, pntk, proj-*, ck) and unnormalised ones (trntk0, pntk0, whose
    entries can be 1e3 or more). ``alpha_scale=None`` uses :math:`\sigma = 1` (``alpha`` in the
    kernel's units, the behaviour of scikit-learn); a float sets :math:`\sigma`.

    ``alpha="auto"`` (default) chooses ``alpha`` on the grid ``alpha_grid`` (descending) by
    ``cv``-fold held-out faithfulness on the training set (see
    :mod:`captum_ntk.surrogate.selection`): the Kendall tau between the network's and the kGLM's
    float64 log-probability of the correct class of held-out training points, using sub-blocks
    of the train kernel only. It needs the network: ``network_logits`` at :meth:`fit`, or soft /
    real targets, which are the network's outputs. ``alpha_`` and ``cv_results_`` report it.
    Faithfulness alone rewards near-interpolating kGLMs whose attributions are a cancellation
    of huge opposite terms (no counterfactual information), so the criterion adds
    ``consistency_weight`` (default 0.5) times the kGLM's counterfactual self-consistency
    (:func:`~captum_ntk.surrogate.consistency.counterfactual_consistency`: the LDS of its
    attributions of held-out points against its own refits on random halves of the rest), an
    alpha whose consistency is under half the grid's best is not eligible, and the largest
    alpha within one standard error of the best wins; ``consistency_weight=0`` selects by tau
    alone (docs/counterfactual.md has the trade-off).

    Classes absent from hard labels (with ``num_classes``) get a zero ``coef_`` row and a finite
    intercept :data:`ABSENT_CLASS_MARGIN` (1000) below the smallest logit of any present class
    on the training set: their probability there is below ``exp(-1000)`` and they are never
    predicted on it, and each training point contributes ``intercept / N`` to their Eq. 3
    attributions (finite, so attributions can be summed and sorted).

    Backends: ``"torch"`` (default) solves the cross-entropy by deterministic full-batch L-BFGS
    from zeros in the kernel's dtype (float16/bfloat16 upcast to float32, integers to float64),
    and the squared loss exactly in float64. ``"sklearn"``:
    ``SGDClassifier(loss="log_loss", penalty="l2", alpha=lambda)`` as in the paper, for hard
    labels only (one-vs-rest for ``C > 2``: ``predict_proba`` is then scikit-learn's
    ``sigmoid(s_c) / sum_k sigmoid(s_k)``).

    Args:
        backend (str, optional): ``"torch"`` or ``"sklearn"``. Default: ``"torch"``
        alpha (float or str, optional): ``"auto"`` or the L2 strength relative to the kernel's
                    scale (>= 0). Default: ``"auto"``
        alpha_scale (str or float or None, optional): ``"auto"``, a positive float or None
                    (see above). Default: ``"auto"``
        loss (str, optional): ``"log_loss"`` or ``"squared"``. Default: ``"log_loss"``
        class_weight (str or None, optional): ``"balanced"`` weights example ``i`` by
                    ``N / (n_classes_present * N_c)`` with ``c`` its label (for soft / real
                    targets: its argmax class, or the sign of a single target); None: 1.
                    Default: ``"balanced"``
        max_iter (int, optional): L-BFGS iterations (torch) or SGD epochs. Default: 1000
        tol (float, optional): torch: largest gradient entry of the rescaled problem at which
                    L-BFGS stops (default 1e-7); sklearn: ``SGDClassifier(tol=)`` (default 1e-3).
        cv (int, optional): folds of ``alpha="auto"``. Default: 5
        alpha_grid (sequence of float, optional): grid of ``alpha="auto"``. Default:
                    ``1e-1, 1e-2, ..., 1e-6`` (cross-entropy) or ``..., 1e-8`` (squared loss).
        device (torch.device or str, optional): device of the torch backend; None: the
                    kernel's.
        random_state (int, optional): seed of the folds and of ``SGDClassifier``. Default: 0
        show_progress (bool, optional): tqdm bar over the fits of ``alpha="auto"``.
        consistency_weight (float, optional): weight of the counterfactual self-consistency
                    in ``alpha="auto"`` (0: held-out tau only). Default: 0.5

    Attributes:
        coef_ (Tensor): ``(n_logits, N)``. intercept_ (Tensor): ``(n_logits,)``.
        classes_ (Tensor): ``(C,)`` int64 class labels, sorted.
        alpha_ (float): the alpha used (chosen by cross-validation for ``"auto"``).
        penalty_ (float): :math:`\lambda = \alpha\,\sigma^2`, in the kernel's units.
        kernel_scale_ (float): :math:`\sigma`.
        cv_results_ (dict or None): ``"alphas"``, ``"mean_tau"``, ``"std_tau"`` ``(G,)``,
                    ``"fold_tau"`` ``(G, cv)`` and (``consistency_weight > 0``)
                    ``"consistency"`` ``(G,)`` numpy arrays; None for a fixed alpha.
        target_kind_ (str): ``"labels"``, ``"soft"`` or ``"real"``.
        n_train_ (int), n_iter_ (int), backend_ (str).

    Examples::

        >>> glm = KernelGLM().fit(train_kernel, softmax_probs)            # distilled, alpha auto
        >>> glm = KernelGLM(alpha=1e-4).fit(train_kernel, train_labels)   # the paper's kGLM
        >>> probs = glm.predict_proba(test_kernel)                        # (n, C)
    """

    def __init__(
        self,
        backend: str = "torch",
        alpha: float | str = "auto",
        alpha_scale: float | str | None = "auto",
        loss: str = "log_loss",
        class_weight: str | None = "balanced",
        max_iter: int = 1000,
        tol: float | None = None,
        cv: int = 5,
        alpha_grid: tuple[float, ...] | None = None,
        device: torch.device | str | None = None,
        random_state: int | None = 0,
        show_progress: bool = False,
        consistency_weight: float = 0.5,
    ) -> None:
        self.backend = backend
        self.alpha = alpha
        self.alpha_scale = alpha_scale
        self.loss = loss
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.tol = tol
        self.cv = cv
        self.alpha_grid = alpha_grid
        self.device = device
        self.random_state = random_state
        self.show_progress = show_progress
        self.consistency_weight = consistency_weight

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        train_kernel: ArrayLike,
        y: ArrayLike,
        num_classes: int | None = None,
        *,
        network_logits: ArrayLike | None = None,
        labels: ArrayLike | None = None,
    ) -> KernelGLM:
        r"""Fits the kGLM on the kernel between the training points.

        Args:
            train_kernel (Tensor or ndarray): ``(N, N)`` kernel, ``[i, j] = κ(x_i, x_j)``.
            y (Tensor or ndarray): ``(N,)`` integer labels, or soft targets ``(N, C)`` /
                        ``(N,)`` probabilities, or (``loss="squared"``) real targets
                        ``(N,)`` / ``(N, m)``.
            num_classes (int, optional): total number of classes ``C`` for hard labels:
                        ``classes_ = arange(C)`` and ``y`` may miss some. Checked against the
                        targets' width otherwise.
            network_logits (Tensor or ndarray, optional): ``(N, C)`` (or ``(N,)`` / ``(N, 1)``
                        for one logit) network logits on the training points; the reference of
                        ``alpha="auto"`` (default for soft / real targets: the targets).
            labels (Tensor or ndarray, optional): ``(N,)`` true labels, whose log-probability
                        ``alpha="auto"`` ranks. Default: ``y`` for hard labels, else the argmax
                        class of the targets.

        Returns:
            self (KernelGLM): the fitted model.
        """
        self._check_params()
        kernel = as_kernel(train_kernel, "train_kernel")
        n_train = kernel.shape[0]
        if kernel.shape[0] != kernel.shape[1]:
            raise ValueError(
                "train_kernel must be square (N, N) between the training points, got shape "
                f"{tuple(kernel.shape)}"
            )
        targets = parse_targets(y, n_train, num_classes, self.loss)
        if self.backend == "sklearn" and targets.kind != "labels":
            raise ValueError(
                "the sklearn backend (SGDClassifier) fits hard labels only; use "
                "backend='torch' for soft targets or loss='squared'"
            )
        scale = self._scale(kernel)
        weight = sample_weight(targets.group, int(targets.classes.numel()), self.class_weight)
        self.cv_results_: dict[str, np.ndarray] | None = None
        if self.alpha == "auto":
            alpha = self._select_alpha(kernel, targets, weight, scale, network_logits, labels)
        else:
            alpha = float(self.alpha)
        coef, intercept, n_iter = self._solve(kernel, targets, weight, alpha * scale**2)
        if targets.present.numel() < targets.classes.numel():
            coef, intercept = self._expand_classes(kernel, coef, intercept, targets)
        self.coef_ = coef.to(kernel.device)
        self.intercept_ = intercept.to(kernel.device)
        self.classes_ = targets.classes
        self.alpha_ = alpha
        self.kernel_scale_ = scale
        self.penalty_ = alpha * scale**2
        self.target_kind_ = targets.kind
        self.n_train_ = n_train
        self.n_iter_ = n_iter
        self.backend_ = self.backend
        return self

    def _check_params(self) -> None:
        if self.backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {self.backend!r}")
        if self.loss not in _LOSSES:
            raise ValueError(f"loss must be one of {_LOSSES}, got {self.loss!r}")
        if self.alpha != "auto" and not (
            isinstance(self.alpha, numbers.Real) and self.alpha >= 0 and math.isfinite(self.alpha)
        ):
            raise ValueError(f"alpha must be 'auto' or a finite number >= 0, got {self.alpha!r}")
        if self.backend == "sklearn" and self.alpha == 0:
            raise ValueError("the sklearn backend (SGDClassifier) needs alpha > 0")
        scale = self.alpha_scale
        if not (scale is None or scale == "auto" or _positive(scale)):
            raise ValueError(f"alpha_scale must be 'auto', None or > 0, got {scale!r}")
        if self.class_weight not in ("balanced", None):
            raise ValueError(f"class_weight must be 'balanced' or None, got {self.class_weight!r}")
        if int(self.max_iter) != self.max_iter or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if self.tol is not None and not self.tol > 0:
            raise ValueError(f"tol must be > 0 or None, got {self.tol!r}")
        weight = self.consistency_weight
        if not (isinstance(weight, numbers.Real) and math.isfinite(weight) and weight >= 0):
            raise ValueError(f"consistency_weight must be a finite number >= 0, got {weight!r}")
        if int(self.cv) != self.cv or self.cv < 2:
            raise ValueError(f"cv must be an integer >= 2, got {self.cv!r}")
        grid = self._grid()
        if not grid or not all(_positive(a) for a in grid):
            raise ValueError(f"alpha_grid must hold positive numbers, got {self.alpha_grid!r}")

    def _grid(self) -> tuple[float, ...]:
        grid = DEFAULT_ALPHA_GRID.get(self.loss, ()) if self.alpha_grid is None else self.alpha_grid
        return tuple(sorted((float(a) for a in grid), reverse=True))

    def _scale(self, kernel: Tensor) -> float:
        if self.alpha_scale == "auto":
            return kernel_scale(kernel)
        return 1.0 if self.alpha_scale is None else float(self.alpha_scale)

    def _solve(
        self, kernel: Tensor, targets: Targets, weight: Tensor, penalty: float
    ) -> tuple[Tensor, Tensor, int]:
        """Fits the present classes' rows at L2 strength ``penalty`` (kernel units)."""
        device = torch.device(self.device) if self.device is not None else kernel.device
        if targets.kind == "real":
            return fit_squared(kernel, targets, weight, penalty, device=device)
        if self.backend == "sklearn":
            return self._fit_sklearn(kernel, targets, penalty)
        tol = float(self.tol) if self.tol is not None else _DEFAULT_TOL[self.backend]
        return fit_log_loss(
            kernel, targets, weight, penalty, tol=tol, max_iter=int(self.max_iter), device=device
        )

    def _fit_sklearn(
        self, kernel: Tensor, targets: Targets, penalty: float
    ) -> tuple[Tensor, Tensor, int]:
        from sklearn.linear_model import SGDClassifier

        classifier = SGDClassifier(
            loss="log_loss",
            penalty="l2",
            alpha=penalty,
            class_weight=self.class_weight,
            max_iter=int(self.max_iter),
            tol=float(self.tol) if self.tol is not None else _DEFAULT_TOL["sklearn"],
            random_state=self.random_state,
        )
        classifier.fit(kernel.detach().cpu().to(torch.float64).numpy(), targets.values.numpy())
        coef = torch.as_tensor(classifier.coef_, dtype=kernel.dtype)
        intercept = torch.as_tensor(classifier.intercept_, dtype=kernel.dtype)
        return coef, intercept, int(classifier.n_iter_)

    def _select_alpha(
        self,
        kernel: Tensor,
        targets: Targets,
        weight: Tensor,
        scale: float,
        network_logits: ArrayLike | None,
        labels: ArrayLike | None,
    ) -> float:
        reference, correct = network_reference(targets, network_logits, labels)
        folds = stratified_folds(targets.group, int(self.cv), int(self.random_state or 0))
        grid = self._grid()

        cached: list[tuple[Tensor, SquaredSystem]] = []  # the current fold's normal equations

        def fit_fold(train: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
            sub = kernel[train.to(kernel.device)][:, train.to(kernel.device)]
            penalty = alpha * scale**2
            if targets.kind == "real":  # squared loss: build once per fold, solve per alpha
                if not cached or not torch.equal(cached[0][0], train):
                    device = torch.device(self.device) if self.device is not None else sub.device
                    system = SquaredSystem(sub, targets.subset(train), weight[train], device=device)
                    cached[:] = [(train, system)]
                coef, intercept, _ = cached[0][1].solve(penalty)
                return coef, intercept
            coef, intercept, _ = self._solve(sub, targets.subset(train), weight[train], penalty)
            return coef, intercept

        total = len(folds) * len(grid)
        if self.consistency_weight > 0:
            total += (1 + CONSISTENCY_SUBSETS) * len(grid)
        with tqdm(total=total, desc="alpha='auto'", disable=not self.show_progress) as bar:
            alpha, results = cross_validate_alpha(
                kernel,
                fit_fold,
                reference,
                correct,
                folds,
                grid,
                bar.update,
                ovr=self.backend == "sklearn",
            )
            if self.consistency_weight > 0:
                lds, lds_se = counterfactual_consistency(
                    kernel,
                    fit_fold,
                    correct,
                    folds[0],
                    grid,
                    num_subsets=CONSISTENCY_SUBSETS,
                    seed=int(self.random_state or 0),
                    progress=bar.update,
                )
                results["consistency"], results["consistency_se"] = lds, lds_se
                alpha = select_alpha(grid, results, self.consistency_weight)
        self.cv_results_ = results
        return alpha

    def _expand_classes(
        self, kernel: Tensor, coef: Tensor, intercept: Tensor, targets: Targets
    ) -> tuple[Tensor, Tensor]:
        """Scatters the present classes' rows into (C, N); absent rows get a finite intercept."""
        if coef.shape[0] == 1:
            # One logit s over two present classes becomes two rows with the binary model's
            # probabilities: [-s/2, s/2] for a softmax (torch), [-s, s] for sklearn's OvR.
            half = 0.5 if self.backend == "torch" else 1.0
            coef = torch.cat([-half * coef, half * coef])
            intercept = torch.cat([-half * intercept, half * intercept])
        with torch.no_grad():
            train_logits = kernel.to(coef.device, coef.dtype) @ coef.T + intercept
        floor = float(train_logits.min()) - ABSENT_CLASS_MARGIN
        classes, present = targets.classes, targets.present
        index = torch.searchsorted(classes, present)
        full_coef = coef.new_zeros(classes.numel(), coef.shape[1])
        full_intercept = intercept.new_full((classes.numel(),), floor)
        full_coef[index] = coef
        full_intercept[index] = intercept
        return full_coef, full_intercept

    # --------------------------------------------------------------- prediction
    def _test_kernel(self, kernel: ArrayLike, method: str) -> Tensor:
        if not hasattr(self, "coef_"):
            raise NotFittedError(
                f"This KernelGLM instance is not fitted yet. Call 'fit' with the (N, N) train "
                f"kernel and labels before calling '{method}'."
            )
        tensor = as_kernel(kernel, "kernel")
        if tensor.shape[1] != self.n_train_:
            raise ValueError(
                f"kernel has {tensor.shape[1]} columns but the model was fitted on "
                f"N = {self.n_train_} training points; expected shape (n, {self.n_train_}) "
                "(kernel between the inputs and the training set)"
            )
        return tensor

    def decision_function(self, kernel: ArrayLike) -> Tensor:
        r"""Logits of the kGLM, ``kernel @ coef_.T + intercept_``.

        Args:
            kernel (Tensor or ndarray): ``(n, N)`` kernel between inputs and training points.

        Returns:
            logits (Tensor): ``(n,)`` for a one-logit model, ``(n, C)`` otherwise, on the
                        kernel's device, dtype ``promote_types(coef_.dtype, kernel.dtype)``.
        """
        tensor = self._test_kernel(kernel, "decision_function")
        out_device = tensor.device
        device = torch.device(self.device) if self.device is not None else out_device
        dtype = torch.promote_types(self.coef_.dtype, tensor.dtype)
        with torch.no_grad():
            coef = self.coef_.to(device, dtype)
            logits = tensor.to(device, dtype) @ coef.T + self.intercept_.to(device, dtype)
        logits = logits.to(out_device)
        return logits[:, 0] if self.coef_.shape[0] == 1 else logits

    def predict_log_proba(self, kernel: ArrayLike) -> Tensor:
        r"""Log class probabilities, computed stably from the logits (no rounding to 1.0).

        Args:
            kernel (Tensor or ndarray): ``(n, N)`` kernel between inputs and training points.

        Returns:
            log_probabilities (Tensor): ``(n, C)`` (``C = 2`` for one-logit models).
        """
        logits = self.decision_function(kernel)
        if logits.dim() == 1:
            return torch.stack([F.logsigmoid(-logits), F.logsigmoid(logits)], dim=1)
        if self.backend_ == "sklearn":
            ovr = F.logsigmoid(logits)
            return ovr - torch.logsumexp(ovr, dim=1, keepdim=True)
        return torch.log_softmax(logits, dim=1)

    def predict_proba(self, kernel: ArrayLike) -> Tensor:
        r"""Class probabilities: sigmoid (one logit), softmax, or scikit-learn's OvR (sklearn).

        Args:
            kernel (Tensor or ndarray): ``(n, N)`` kernel between inputs and training points.

        Returns:
            probabilities (Tensor): ``(n, C)`` (``C = 2`` for one-logit models); rows sum to 1.
        """
        logits = self.decision_function(kernel)
        if logits.dim() == 1:
            return torch.stack([torch.sigmoid(-logits), torch.sigmoid(logits)], dim=1)
        if self.backend_ == "sklearn":
            ovr = torch.sigmoid(logits)
            return ovr / ovr.sum(dim=1, keepdim=True)
        return torch.softmax(logits, dim=1)

    def predict(self, kernel: ArrayLike) -> Tensor:
        r"""Predicted class labels (``classes_[1]`` where a single logit is > 0).

        Args:
            kernel (Tensor or ndarray): ``(n, N)`` kernel between inputs and training points.

        Returns:
            labels (Tensor): ``(n,)`` int64 labels taken from ``classes_``.
        """
        logits = self.decision_function(kernel)
        index = (logits > 0).long() if logits.dim() == 1 else logits.argmax(dim=1)
        return self.classes_.to(index.device)[index]

    def score(self, kernel: ArrayLike, y: ArrayLike) -> float:
        r"""Accuracy of :meth:`predict` against ``(n,)`` labels ``y`` (a float in [0, 1])."""
        predicted = self.predict(kernel).cpu()
        truth = as_labels(y)
        if truth.shape[0] != predicted.shape[0]:
            raise ValueError(
                f"y has {truth.shape[0]} labels but kernel has {predicted.shape[0]} rows"
            )
        return float((predicted == truth).to(torch.float64).mean())


def _positive(value: Any) -> bool:
    return isinstance(value, numbers.Real) and math.isfinite(value) and value > 0
