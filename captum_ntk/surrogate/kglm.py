"""Kernel generalized linear model (kGLM): the surrogate model of Engel et al. (Eq. 1).

A kGLM predicts logits from the kernel between an input and the training set,

    kGLM(x) = W κ(x, X) + b,        W ∈ R^{C×N}, b ∈ R^C,

and is trained with cross-entropy on the training set. Its "features" are kernel rows, so
:meth:`KernelGLM.fit` takes the ``(N, N)`` train kernel and :meth:`KernelGLM.predict` a
``(n, N)`` test-by-train kernel.

This module is low-level: it imports nothing else from ``captum_ntk``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from torch import Tensor

__all__ = ["KernelGLM"]

ArrayLike = Tensor | np.ndarray

_BACKENDS = ("torch", "sklearn")
_DEFAULT_TOL = {"torch": 1e-7, "sklearn": 1e-3}


def _as_kernel(kernel: Any, name: str) -> Tensor:
    """Converts ``kernel`` to a floating 2-D tensor without copying when possible."""
    if isinstance(kernel, Tensor):
        tensor = kernel.detach()
    elif isinstance(kernel, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(kernel))
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor or a numpy.ndarray, got {type(kernel).__name__}"
        )
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.float64)
    elif tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.to(torch.float32)
    if tensor.dim() != 2:
        raise ValueError(
            f"{name} must be a 2-D kernel matrix, got a tensor with shape {tuple(tensor.shape)}"
        )
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return tensor


def _as_labels(y: Any) -> Tensor:
    """Converts class labels to a 1-D int64 CPU tensor."""
    if isinstance(y, Tensor):
        labels = y.detach().cpu()
    else:
        labels = torch.as_tensor(np.asarray(y))
    if labels.dim() != 1:
        raise ValueError(f"y must be a 1-D tensor of class labels, got shape {tuple(labels.shape)}")
    if labels.is_floating_point():
        if not bool((labels == labels.round()).all()):
            raise ValueError("y must hold integer class labels; got non-integer values")
    elif labels.dtype == torch.bool:
        labels = labels.to(torch.int64)
    elif labels.is_complex():
        raise ValueError("y must hold integer class labels")
    return labels.to(torch.int64)


def _kernel_scale(kernel: Tensor) -> float:
    """RMS of the kernel's diagonal (its typical self-similarity), or max |K| if that is 0."""
    scale = float(kernel.diagonal().double().pow(2).mean().sqrt())
    if not (scale > 0 and math.isfinite(scale)):
        scale = float(kernel.abs().max())
    return scale if scale > 0 and math.isfinite(scale) else 1.0


class KernelGLM(BaseEstimator):
    r"""Kernel generalized linear model trained on a precomputed kernel.

    The model is :math:`\mathrm{kGLM}(x) = W \kappa(x, X) + b` (Eq. 1 of Engel et al.), a logistic
    regression whose features are the kernel values between an input and the ``N`` training points.
    Layout follows scikit-learn:

    - two classes: ONE logit, like scikit-learn's binary ``LogisticRegression``. ``coef_`` has
      shape ``(1, N)``, ``intercept_`` ``(1,)``, :meth:`decision_function` returns ``(n,)``
      logits of ``classes_[1]`` and :meth:`predict_proba` returns ``(n, 2)`` =
      ``[sigmoid(-s), sigmoid(s)]``.
    - ``C > 2`` classes: ``coef_`` ``(C, N)``, ``intercept_`` ``(C,)``,
      :meth:`decision_function` ``(n, C)``.

    Two backends fit ``W`` and ``b``:

    - ``"torch"`` (default): deterministic full-batch logistic regression (multinomial for
      ``C > 2``, binary logistic for two classes) solved with L-BFGS and a strong-Wolfe line
      search, on ``device``. It minimises

      .. math::
          \frac{1}{N}\sum_{i=1}^N s_i\,\ell(y_i, W\kappa(x_i, X) + b) + \frac{\alpha}{2}\|W\|_F^2,

      with :math:`\ell` the cross-entropy (the logistic loss for two classes) and :math:`s_i` the
      class weight of example ``i`` (1 without ``class_weight``). The intercept is not penalised.
      This is the objective of ``SGDClassifier(loss="log_loss", penalty="l2", alpha=alpha)``
      (scikit-learn's L2 term is :math:`\frac{1}{2}\|w\|^2`) solved exactly instead of by SGD, and
      of ``LogisticRegression(C=1 / (alpha * N))``: multiply it by :math:`1/(\alpha N)` to get
      scikit-learn's :math:`C\sum_i s_i\ell_i + \frac12\|W\|^2`. The optimisation runs in the
      kernel's dtype (float64 kernels are fitted in float64; float16/bfloat16 are upcast to
      float32; integer kernels to float64).
    - ``"sklearn"``: ``SGDClassifier(loss="log_loss", penalty="l2", alpha=alpha, ...)`` as in the
      paper. Note that scikit-learn's SGD trains ``C > 2`` classes one-vs-rest, so ``coef_`` rows
      are ``C`` independent binary classifiers and :meth:`predict_proba` returns scikit-learn's
      OvR-normalised probabilities ``sigmoid(s_c) / sum_k sigmoid(s_k)``, not a softmax. For two
      classes both backends give the same one-logit sigmoid model. ``device`` is ignored.

    Classes: by default ``classes_`` are the sorted distinct values of ``y``. With
    ``num_classes=C`` given at :meth:`fit`, ``classes_ = [0, ..., C-1]`` and ``y`` may miss some of
    them (e.g. when ``y`` holds the network's own predictions, Appendix I of Engel et al.). Absent
    classes get a zero ``coef_`` row and an intercept of ``-inf``: the kGLM never predicts them
    and gives them probability 0. At least two classes must be present in ``y``.

    Tensors in, tensors out: ``coef_``, ``intercept_`` and ``classes_`` are torch tensors;
    :meth:`decision_function`, :meth:`predict_proba` and :meth:`predict` return torch tensors on
    the device of the kernel passed to them (the CPU for numpy arrays). ``coef_`` and
    ``intercept_`` are stored on the device of the train kernel (the CPU for numpy arrays) in
    the fitting dtype; outputs have dtype ``torch.promote_types(coef_.dtype, kernel.dtype)``,
    so a float64 kernel gives float64 outputs.

    Default ``alpha = 1e-4``: scikit-learn's ``SGDClassifier`` default and the low end of the
    range the paper tuned over (1e-2 .. 1e-4). Networks usually fit their training set almost
    perfectly, and a kGLM faithful to them must too: on trNTK kernels of small MLPs (digits,
    10 classes and binary) the test Kendall tau with the network rose monotonically as alpha fell
    from 1e-1 to 1e-4 (0.69 -> 0.75 from 1e-3 to 1e-4 with 10 classes) and gained little below.
    L-BFGS still converges in ~50-100 iterations at 1e-4 (0.1 s for N = 500 on one CPU thread).
    Tune it on held-out faithfulness (Kendall tau) for a new model. ``alpha`` is not scale
    invariant: multiplying the kernel by ``s`` is the same as dividing ``alpha`` by ``s**2``. The
    default suits cosine-normalised kernels (``|κ| <= 1``: trntk, pntk, proj-*, ck); for
    unnormalised ones (trntk0, pntk0, whose entries can be 1e3 or more) multiply ``alpha`` by the
    squared typical diagonal value to get the same regularisation, or the kGLM is nearly
    unregularised. (The optimiser itself is insensitive to the kernel's units, see ``tol``.)

    Args:
        backend (str, optional): ``"torch"`` (default) or ``"sklearn"``.
        alpha (float, optional): L2 strength, in ``SGDClassifier`` units (see above).
                    Must be >= 0; ``alpha = 0`` (torch only) is unregularised and may not converge
                    on separable data.
                    Default: 1e-4
        class_weight (str or None, optional): ``"balanced"`` weights each class by
                    ``N / (n_present_classes * N_c)`` (scikit-learn's formula, over the classes
                    present in ``y``), ``None`` weights every example by 1.
                    Default: ``"balanced"``
        max_iter (int, optional): Maximum number of L-BFGS iterations (torch) or SGD epochs
                    (sklearn). Default: 1000
        tol (float or None, optional): Stopping tolerance. torch: L-BFGS stops when the largest
                    absolute gradient entry of the objective is below ``tol`` (or the objective
                    stops changing at the dtype's precision); default 1e-7, which gives
                    probabilities within ~1e-5 of the exact optimum in float64. The gradient is
                    taken in an equivalent rescaled problem (kernel divided by the RMS of its
                    diagonal), so the criterion does not depend on the kernel's units. sklearn: passed to
                    ``SGDClassifier(tol=...)``; default 1e-3 (scikit-learn's default).
        device (torch.device or str or None, optional): Device on which the torch backend fits
                    and predicts. ``None`` uses the device of the kernel it is given.
        random_state (int or None, optional): Seed of ``SGDClassifier`` (the torch backend is
                    deterministic and starts from zeros; it ignores this). Default: 0

    Attributes:
        coef_ (Tensor): ``(1, N)`` for two classes, ``(C, N)`` otherwise.
        intercept_ (Tensor): ``(1,)`` for two classes, ``(C,)`` otherwise.
        classes_ (Tensor): ``(C,)`` int64 class labels, sorted.
        n_train_ (int): number of training points ``N``.
        n_iter_ (int): L-BFGS iterations (torch) or SGD epochs (sklearn, the maximum over
                    one-vs-rest problems).
        backend_ (str): the backend used by the last :meth:`fit`.

    Examples::

        >>> glm = KernelGLM(alpha=1e-4).fit(train_kernel, train_labels)  # (N, N), (N,)
        >>> probs = glm.predict_proba(test_kernel)                         # (n, C)
    """

    def __init__(
        self,
        backend: str = "torch",
        alpha: float = 1e-4,
        class_weight: str | None = "balanced",
        max_iter: int = 1000,
        tol: float | None = None,
        device: torch.device | str | None = None,
        random_state: int | None = 0,
    ) -> None:
        self.backend = backend
        self.alpha = alpha
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.tol = tol
        self.device = device
        self.random_state = random_state

    # ------------------------------------------------------------------ fitting
    def fit(
        self, train_kernel: ArrayLike, y: ArrayLike, num_classes: int | None = None
    ) -> KernelGLM:
        r"""Fits the kGLM on the kernel between the training points.

        Args:
            train_kernel (Tensor or ndarray): ``(N, N)`` kernel between the training points,
                        ``train_kernel[i, j] = κ(x_i, x_j)``.
            y (Tensor or ndarray): ``(N,)`` integer class labels. These may be the true labels
                        or the network's predicted classes (to fit the kGLM to the network).
            num_classes (int, optional): Total number of classes ``C``. When given,
                        ``classes_ = arange(C)``, labels must lie in ``[0, C)`` and need not cover
                        every class. When ``None``, the classes are the distinct values of ``y``.

        Returns:
            self (KernelGLM): the fitted model.
        """
        self._check_params()
        kernel = _as_kernel(train_kernel, "train_kernel")
        n_train = kernel.shape[0]
        if kernel.shape[0] != kernel.shape[1]:
            raise ValueError(
                "train_kernel must be square (N, N) between the training points, got shape "
                f"{tuple(kernel.shape)}"
            )
        labels = _as_labels(y)
        if labels.shape[0] != n_train:
            raise ValueError(
                f"y has {labels.shape[0]} labels but train_kernel has N = {n_train} rows; "
                "they must match"
            )

        if num_classes is None:
            classes = torch.unique(labels)
        else:
            if int(num_classes) != num_classes or num_classes < 2:
                raise ValueError(f"num_classes must be an integer >= 2, got {num_classes}")
            num_classes = int(num_classes)
            if n_train and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
                raise ValueError(
                    f"with num_classes={num_classes}, labels must lie in [0, {num_classes}); "
                    f"got values in [{int(labels.min())}, {int(labels.max())}]"
                )
            classes = torch.arange(num_classes, dtype=torch.int64)
        present = torch.unique(labels)
        if present.numel() < 2:
            raise ValueError(
                "y must contain at least 2 distinct classes to fit a classifier, got "
                f"{present.tolist()}"
            )
        # Index of each label in `present` (the classes that are actually fitted).
        y_index = torch.searchsorted(present, labels)

        if self.backend == "torch":
            coef, intercept, n_iter = self._fit_torch(kernel, y_index, present.numel())
        else:
            coef, intercept, n_iter = self._fit_sklearn(kernel, y_index, present.numel())

        # Expand from the present classes to all classes (coef rows of absent classes are 0,
        # their intercept -inf). Two-class models keep their single logit.
        n_classes = classes.numel()
        if n_classes > 2 and present.numel() < n_classes:
            coef, intercept = self._expand_classes(coef, intercept, present, classes)

        self.coef_ = coef.to(kernel.device)
        self.intercept_ = intercept.to(kernel.device)
        self.classes_ = classes
        self.n_train_ = n_train
        self.n_iter_ = n_iter
        self.backend_ = self.backend  # predict_proba follows the fitted backend
        return self

    def _check_params(self) -> None:
        if self.backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {self.backend!r}")
        if not (
            isinstance(self.alpha, numbers.Real) and self.alpha >= 0 and math.isfinite(self.alpha)
        ):
            raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha!r}")
        if self.backend == "sklearn" and self.alpha == 0:
            raise ValueError("the sklearn backend (SGDClassifier) needs alpha > 0")
        if self.class_weight not in ("balanced", None):
            raise ValueError(f"class_weight must be 'balanced' or None, got {self.class_weight!r}")
        if int(self.max_iter) != self.max_iter or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if self.tol is not None and not self.tol > 0:
            raise ValueError(f"tol must be > 0 or None, got {self.tol!r}")

    def _tol(self) -> float:
        return float(self.tol) if self.tol is not None else _DEFAULT_TOL[self.backend]

    def _sample_weight(self, y_index: Tensor, n_present: int) -> Tensor:
        """Per-example weights (N,): scikit-learn's "balanced" formula or ones."""
        if self.class_weight is None:
            return torch.ones(y_index.shape[0], dtype=torch.float64)
        counts = torch.bincount(y_index, minlength=n_present).to(torch.float64)
        class_weight = y_index.shape[0] / (n_present * counts)
        return class_weight[y_index]

    def _fit_torch(
        self, kernel: Tensor, y_index: Tensor, n_present: int
    ) -> tuple[Tensor, Tensor, int]:
        # Autograd must work even when fit is called under no_grad / inference_mode, or on a
        # kernel created under inference_mode (such tensors cannot be saved for backward).
        with torch.inference_mode(False), torch.enable_grad():
            if kernel.is_inference():
                kernel = kernel.clone()
            if y_index.is_inference():
                y_index = y_index.clone()
            return self._lbfgs(kernel, y_index, n_present)

    def _lbfgs(self, kernel: Tensor, y_index: Tensor, n_present: int) -> tuple[Tensor, Tensor, int]:
        device = torch.device(self.device) if self.device is not None else kernel.device
        dtype = kernel.dtype
        kernel = kernel.to(device=device, dtype=dtype)
        n_train = kernel.shape[0]
        binary = n_present == 2
        n_out = 1 if binary else n_present
        weight = self._sample_weight(y_index, n_present).to(device=device, dtype=dtype)
        weight = weight / n_train
        y_index = y_index.to(device)
        target = y_index.to(dtype)

        # Two exact reparametrisations that leave the model and the objective unchanged but make
        # L-BFGS converge much faster (neither materialises a modified (N, N) kernel):
        # - scale: with s the RMS of the kernel's diagonal, fit scaled = s * W on K / s with
        #   penalty alpha / s^2, so the iterations do not depend on the kernel's units
        #   (s = 1 for cosine-normalised kernels);
        # - centring: logits = (K - 1 mu^T) W^T + b' with b' = b + W mu (mu = column means), which
        #   removes the kernel's dominant near-constant direction (~10x fewer iterations).
        scale = _kernel_scale(kernel)
        alpha = float(self.alpha) / scale**2
        column_mean = kernel.mean(dim=0) / scale
        coef = torch.zeros(n_out, n_train, dtype=dtype, device=device, requires_grad=True)
        shifted_intercept = torch.zeros(n_out, dtype=dtype, device=device, requires_grad=True)
        tol = self._tol()
        # Stop on a stalled objective (no change in loss or step) only near the dtype's
        # precision, so `tol` (the gradient criterion) is what normally ends a float64 fit.
        change_tol = min(tol * 1e-3, 10 * torch.finfo(dtype).eps)
        optimizer = torch.optim.LBFGS(
            [coef, shifted_intercept],
            lr=1.0,
            max_iter=int(self.max_iter),
            max_eval=int(self.max_iter) * 2,
            tolerance_grad=tol,
            tolerance_change=change_tol,
            history_size=50,
            line_search_fn="strong_wolfe",
        )

        def objective() -> Tensor:
            offset = shifted_intercept - coef @ column_mean
            logits = torch.addmm(offset, kernel, coef.T, alpha=1.0 / scale)
            if binary:
                losses = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")
            else:
                losses = F.cross_entropy(logits, y_index, reduction="none")
            return (losses * weight).sum() + 0.5 * alpha * (coef * coef).sum()

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = objective()
            loss.backward()
            return loss

        optimizer.step(closure)
        n_iter = int(optimizer.state[coef].get("n_iter", 0))
        if n_iter >= int(self.max_iter):
            warnings.warn(
                f"KernelGLM (torch backend) reached max_iter={self.max_iter} L-BFGS iterations "
                f"before the gradient fell below tol={tol}; increase max_iter or alpha.",
                ConvergenceWarning,
                stacklevel=5,
            )
        with torch.no_grad():
            intercept = shifted_intercept - coef @ column_mean
        return coef.detach() / scale, intercept.detach(), n_iter

    def _fit_sklearn(
        self, kernel: Tensor, y_index: Tensor, n_present: int
    ) -> tuple[Tensor, Tensor, int]:
        from sklearn.linear_model import SGDClassifier

        classifier = SGDClassifier(
            loss="log_loss",
            penalty="l2",
            alpha=float(self.alpha),
            class_weight=self.class_weight,
            max_iter=int(self.max_iter),
            tol=self._tol(),
            random_state=self.random_state,
        )
        features = kernel.detach().cpu().to(torch.float64).numpy()
        classifier.fit(features, y_index.numpy())
        coef = torch.as_tensor(classifier.coef_, dtype=kernel.dtype)
        intercept = torch.as_tensor(classifier.intercept_, dtype=kernel.dtype)
        return coef, intercept, int(classifier.n_iter_)

    def _expand_classes(
        self, coef: Tensor, intercept: Tensor, present: Tensor, classes: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Scatters the fitted rows of the present classes into a (C, N) layout."""
        if coef.shape[0] == 1:
            # A one-logit model over two present classes becomes two rows whose probabilities
            # equal the binary model's: [s/2, -s/2]-style rows for softmax (torch), [-s, s]
            # rows for sklearn's one-vs-rest normalisation (sigmoid(-s) + sigmoid(s) = 1).
            scale = 0.5 if self.backend == "torch" else 1.0
            coef = torch.cat([-scale * coef, scale * coef])
            intercept = torch.cat([-scale * intercept, scale * intercept])
        full_coef = coef.new_zeros(classes.numel(), coef.shape[1])
        full_intercept = intercept.new_full((classes.numel(),), -math.inf)
        full_coef[present] = coef
        full_intercept[present] = intercept
        return full_coef, full_intercept

    # --------------------------------------------------------------- prediction
    def _check_fitted(self, method: str) -> None:
        if not hasattr(self, "coef_"):
            raise NotFittedError(
                f"This KernelGLM instance is not fitted yet. Call 'fit' with the (N, N) train "
                f"kernel and labels before calling '{method}'."
            )

    def _test_kernel(self, kernel: ArrayLike, method: str) -> Tensor:
        self._check_fitted(method)
        tensor = _as_kernel(kernel, "kernel")
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
            kernel (Tensor or ndarray): ``(n, N)`` kernel between ``n`` inputs and the ``N``
                        training points.

        Returns:
            logits (Tensor): ``(n,)`` logits of ``classes_[1]`` for two classes, ``(n, C)``
                        otherwise. On the device of ``kernel``.
        """
        tensor = self._test_kernel(kernel, "decision_function")
        out_device = tensor.device
        compute_device = torch.device(self.device) if self.device is not None else out_device
        dtype = torch.promote_types(self.coef_.dtype, tensor.dtype)
        with torch.no_grad():
            coef = self.coef_.to(compute_device, dtype)
            intercept = self.intercept_.to(compute_device, dtype)
            logits = tensor.to(compute_device, dtype) @ coef.T + intercept
        logits = logits.to(out_device)
        return logits[:, 0] if self.coef_.shape[0] == 1 else logits

    def predict_proba(self, kernel: ArrayLike) -> Tensor:
        r"""Class probabilities of the kGLM.

        Two classes: ``[sigmoid(-s), sigmoid(s)]``. ``C > 2``: softmax of the logits (torch
        backend) or scikit-learn's one-vs-rest normalisation
        ``sigmoid(s_c) / sum_k sigmoid(s_k)`` (sklearn backend).

        Args:
            kernel (Tensor or ndarray): ``(n, N)`` kernel between inputs and training points.

        Returns:
            probabilities (Tensor): ``(n, C)`` (``C = 2`` for binary models); rows sum to 1.
        """
        logits = self.decision_function(kernel)
        if logits.dim() == 1:
            return torch.stack([torch.sigmoid(-logits), torch.sigmoid(logits)], dim=1)
        if self.backend_ == "sklearn":
            ovr = torch.sigmoid(logits)
            return ovr / ovr.sum(dim=1, keepdim=True)
        return torch.softmax(logits, dim=1)

    def predict(self, kernel: ArrayLike) -> Tensor:
        r"""Predicted class labels.

        Args:
            kernel (Tensor or ndarray): ``(n, N)`` kernel between inputs and training points.

        Returns:
            labels (Tensor): ``(n,)`` int64 labels taken from ``classes_`` (for two classes,
                        ``classes_[1]`` where the logit is > 0, like scikit-learn).
        """
        logits = self.decision_function(kernel)
        index = (logits > 0).long() if logits.dim() == 1 else logits.argmax(dim=1)
        return self.classes_.to(index.device)[index]

    def score(self, kernel: ArrayLike, y: ArrayLike) -> float:
        r"""Accuracy of :meth:`predict` against ``y``.

        Args:
            kernel (Tensor or ndarray): ``(n, N)`` kernel between inputs and training points.
            y (Tensor or ndarray): ``(n,)`` true labels.

        Returns:
            accuracy (float): fraction of correct predictions.
        """
        predicted = self.predict(kernel).cpu()
        labels = _as_labels(y)
        if labels.shape[0] != predicted.shape[0]:
            raise ValueError(
                f"y has {labels.shape[0]} labels but kernel has {predicted.shape[0]} rows"
            )
        return float((predicted == labels).to(torch.float64).mean())
