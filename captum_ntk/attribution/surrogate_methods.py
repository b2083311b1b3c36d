r"""The surrogate half of the attribution classes: fitting the kGLM (Eq. 1) and Eq. 3 attributions."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..engine.data.inputs import ModelInputs
from ..engine.modes import check_mode
from ..surrogate import KernelGLM

#: Targets of :meth:`SurrogateMethods.fit_surrogate`.
SURROGATE_TARGETS = ("probabilities", "logits", "labels", "predictions")
#: The default target: the most faithful on the near-separable benchmark
#: (``python benchmarks/surrogate_targets.py``).
DEFAULT_TARGET = "logits"


class SurrogateMethods:
    """Mixed into :class:`captum_ntk.attribution.base.NTKAttribution`: kGLM fitting and attribution."""

    def model_logits(self, inputs: ModelInputs | None = None) -> Tensor:
        """The network's logits, (n, C) on the CPU, for ``inputs`` (default: the training set)."""
        if inputs is None and getattr(self, "_train_logits", None) is not None:
            return self._train_logits
        x = self.train_inputs if inputs is None else inputs
        function = self.feature_map.function
        with check_mode(self.model, self.eval_mode):
            logits = torch.cat(
                [function.batch_logits(b).cpu() for _, b in x.blocks(self.block_size)]
            )
        if inputs is None:
            self._train_logits = logits
        return logits

    def model_predictions(self, inputs: ModelInputs | None = None) -> Tensor:
        """The network's predicted classes for ``inputs`` (default: the training inputs)."""
        logits = self.model_logits(inputs)
        if logits.shape[1] == 1:
            return (logits[:, 0] > 0).long()
        return logits.argmax(dim=1)

    def fit_surrogate(
        self,
        target: str = DEFAULT_TARGET,
        alpha: float | str = "auto",
        labels: Tensor | None = None,
        *,
        use_model_predictions: bool = False,
        show_progress: bool = False,
        **glm_options: Any,
    ) -> KernelGLM:
        r"""Fits a kGLM (Eq. 1) on the train x train kernel.

        Targets:

        - ``"logits"`` (default): the network's logits with the squared loss (ridge
          regression of the network on kernel rows; one kGLM row per network logit). The most
          faithful target of ``python benchmarks/surrogate_targets.py`` (Kendall tau_K with
          the network on held-out test points, for every kernel and model it runs).
        - ``"probabilities"``: the network's softmax (sigmoid for one logit) outputs as soft
          targets of the cross-entropy: a kGLM distilled from the network.
        - ``"labels"``: the true labels, cross-entropy: the paper's kGLM (Eq. 1).
        - ``"predictions"``: the network's predicted classes (Appendix I of Engel et al.).

        Args:
            target (str): one of the above. Default: ``"logits"``.
            alpha (float or str): ``"auto"`` (k-fold held-out Kendall tau with the network
                    on the train kernel) or the L2 strength relative to the kernel's scale
                    (see :class:`~captum_ntk.surrogate.KernelGLM`). Default: ``"auto"``.
            labels (Tensor, optional): (n_train,) class labels. Default: the labels of the
                    training batches. The targets for ``"labels"``; for the other targets the
                    class whose log-probability ``alpha="auto"`` ranks.
            use_model_predictions (bool): deprecated alias of ``target="predictions"``.
            show_progress (bool): progress bars for the train kernel and ``alpha="auto"``.
            **glm_options: passed to :class:`KernelGLM` (``backend``, ``alpha_scale``,
                    ``class_weight``, ``cv``, ``alpha_grid``, ...).

        Returns:
            KernelGLM: the fitted surrogate, also stored as ``self.surrogate``. A network
            with one logit (C = 1) gets a one-logit binary kGLM.
        """
        if use_model_predictions:
            warnings.warn(
                "use_model_predictions=True is deprecated; use target='predictions'",
                DeprecationWarning,
                stacklevel=2,
            )
            target = "predictions"
        if target not in SURROGATE_TARGETS:
            raise ValueError(f"target must be one of {SURROGATE_TARGETS}, got {target!r}")
        if "loss" in glm_options:
            raise ValueError("the loss follows from target= ('logits': squared); do not pass loss")
        truth = self._surrogate_labels(labels, required=target == "labels")
        logits = self.model_logits().to(torch.float64)
        y = _targets(target, logits, truth)
        kernel = self.compute_train_kernel(show_progress)
        glm_options.setdefault("device", self.feature_map.function.device)
        glm_options.setdefault("show_progress", show_progress)
        if target == "logits":
            glm_options["loss"] = "squared"
        glm = KernelGLM(alpha=alpha, **glm_options)
        num_classes = max(2, logits.shape[1]) if target in ("labels", "predictions") else None
        self.surrogate = glm.fit(kernel, y, num_classes, network_logits=logits, labels=truth)
        return self.surrogate

    def _surrogate_labels(self, labels: Tensor | None, required: bool) -> Tensor | None:
        y = torch.as_tensor(labels) if labels is not None else self.train_labels
        if y is not None:
            y = y.reshape(-1)
        if y is None:
            if required:
                raise ValueError(
                    "The training batches carry no labels, which target='labels' needs: pass "
                    "labels=..., another target (e.g. 'probabilities'), or batches "
                    "(inputs..., labels) / dicts with 'labels'."
                )
            return None
        if y.shape[0] != self.num_train:
            raise ValueError(f"labels has {y.shape[0]} entries, expected n_train={self.num_train}.")
        return y

    def attribute(
        self,
        inputs: Any,
        target: int | Sequence[int] | Tensor | None = None,
        show_progress: bool = False,
    ) -> Tensor:
        r"""Data attribution (Eq. 3): A(x, x_i)^c = W_{c,i} κ(x, x_i) + b_c / N.

        Summing over training examples gives the kGLM logit exactly, whatever the target the
        kGLM was fitted to. There is one row per network logit: a binary kGLM (one logit s)
        of a two-logit network gives the rows of the equivalent softmax kGLM, (-s/2, s/2). A class absent from hard-label targets has a zero ``coef_`` row
        and a finite intercept (see :class:`~captum_ntk.surrogate.KernelGLM`): each training
        point contributes ``intercept_c / N`` to it. Fits the surrogate with default options
        first if :meth:`fit_surrogate` has not been called.

        Args:
            inputs (Tensor, tuple, Mapping or DataLoader): test batch.
            target (int, sequence of int or Tensor, optional): Captum-style class indices:
                    one int for every example, or one per example. Default: None, every
                    logit. A binary kGLM of a one-logit network (one logit s, the log-odds of
                    class 1) accepts classes 0 and 1: class 1 gives the attributions of s, class 0
                    their negation (they sum to -s, the log-odds of class 0).
            show_progress (bool): progress bar.

        Returns:
            Tensor: (n_test, C, n_train) with C the number of network logits (1 for a
            one-logit network), or (n_test, n_train) with ``target``.
        """
        glm = self.surrogate if self.surrogate is not None else self.fit_surrogate()
        kernel = self.influence(inputs, show_progress=show_progress)
        coef = glm.coef_.to("cpu", kernel.dtype)
        intercept = glm.intercept_.to("cpu", kernel.dtype)
        n_logits = coef.shape[0]
        if n_logits == 1 and self.model_logits().shape[1] == 2:
            # a binary kGLM (one logit s, the log-odds of class 1) of a two-logit network: one
            # row per network logit, (-s/2, s/2), whose softmax is the kGLM's sigmoid
            coef = torch.cat([-coef, coef]) / 2
            intercept = torch.cat([-intercept, intercept]) / 2
            n_logits = 2
        if target is None:
            return kernel[:, None, :] * coef[None] + (intercept / self.num_train)[None, :, None]
        t = torch.as_tensor(target, dtype=torch.long).reshape(-1)
        if t.numel() == 1:
            t = t.expand(kernel.shape[0])
        if t.numel() != kernel.shape[0]:
            raise ValueError(
                f"target has {t.numel()} entries for {kernel.shape[0]} test examples; pass one int "
                "or one per example."
            )
        n_classes = 2 if n_logits == 1 else n_logits
        if bool((t < 0).any()) or bool((t >= n_classes).any()):
            raise ValueError(
                f"target out of range: the kGLM has {n_logits} logit(s) (valid targets "
                f"0..{n_classes - 1})."
            )
        if n_logits == 1:
            sign = (2 * t - 1).to(kernel.dtype)[:, None]
            return sign * (kernel * coef[0] + intercept[0] / self.num_train)
        return kernel * coef[t] + (intercept[t] / self.num_train)[:, None]


def _targets(target: str, logits: Tensor, labels: Tensor | None) -> Tensor:
    """The fitting targets of ``target`` from the network's (N, C) float64 logits."""
    one_logit = logits.shape[1] == 1
    if target == "labels":
        assert labels is not None
        if labels.is_floating_point() and not bool((labels == labels.round()).all()):
            raise ValueError(
                "target='labels' needs integer class labels; for soft labels (probabilities) "
                "use KernelGLM.fit directly"
            )
        return labels.long()
    if target == "predictions":
        return (logits[:, 0] > 0).long() if one_logit else logits.argmax(dim=1)
    if target == "probabilities":
        return torch.sigmoid(logits[:, 0]) if one_logit else torch.softmax(logits, dim=1)
    return logits[:, 0] if one_logit else logits
