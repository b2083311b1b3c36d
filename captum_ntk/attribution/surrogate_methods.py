r"""The surrogate half of the attribution classes: fitting the kGLM (Eq. 1) and Eq. 3 attributions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..engine.inputs import ModelInputs
from ..engine.model import check_mode
from ..surrogate import KernelGLM


class SurrogateMethods:
    """Mixed into :class:`captum_ntk.attribution.base.NTKAttribution`: kGLM fitting and attribution."""

    def model_predictions(self, inputs: ModelInputs | None = None) -> Tensor:
        """The network's predicted classes for ``inputs`` (default: the training inputs)."""
        x = self.train_inputs if inputs is None else inputs
        function = self.feature_map.function
        with check_mode(self.model, self.eval_mode):
            logits = torch.cat(
                [function.batch_logits(b).cpu() for _, b in x.blocks(self.block_size)]
            )
        if logits.shape[1] == 1:
            return (logits[:, 0] > 0).long()
        return logits.argmax(dim=1)

    def fit_surrogate(
        self,
        labels: Tensor | None = None,
        *,
        use_model_predictions: bool = False,
        show_progress: bool = False,
        **glm_options: Any,
    ) -> KernelGLM:
        r"""Fits the kGLM of Eq. 1 on the train x train kernel.

        Args:
            labels (Tensor, optional): (n_train,) class labels. Default: the labels of the
                    training batches.
            use_model_predictions (bool): fit to the network's predicted classes instead of
                    the labels (Appendix I of Engel et al.).
            show_progress (bool): progress bar for the train kernel.
            **glm_options: passed to :class:`KernelGLM` (``backend``, ``alpha``,
                    ``class_weight``, ...).

        Returns:
            KernelGLM: the fitted surrogate, also stored as ``self.surrogate``. A network
            with one logit (C = 1) gets a binary kGLM with one logit.
        """
        if use_model_predictions:
            y = self.model_predictions()
        elif labels is not None:
            y = torch.as_tensor(labels).reshape(-1)
        elif self.train_labels is not None:
            y = self.train_labels
        else:
            raise ValueError(
                "The training batches carry no labels, which the kGLM needs: pass labels=..., "
                "use_model_predictions=True, or batches (inputs..., labels) / dicts with 'labels'."
            )
        if y.shape[0] != self.num_train:
            raise ValueError(f"labels has {y.shape[0]} entries, expected n_train={self.num_train}.")
        kernel = self.compute_train_kernel(show_progress)
        num_outputs = self.feature_map.function.num_outputs(self.train_inputs)
        num_classes = max(2, num_outputs)
        glm_options.setdefault("device", self.feature_map.function.device)
        self.surrogate = KernelGLM(**glm_options).fit(kernel, y, num_classes=num_classes)
        return self.surrogate

    def attribute(
        self,
        inputs: Any,
        target: int | Sequence[int] | Tensor | None = None,
        show_progress: bool = False,
    ) -> Tensor:
        r"""Data attribution (Eq. 3): A(x, x_i)^c = W_{c,i} κ(x, x_i) + b_c / N.

        Summing over training examples gives the kGLM logit exactly. Fits the surrogate
        with default options first if :meth:`fit_surrogate` has not been called.

        Args:
            inputs (Tensor, tuple, Mapping or DataLoader): test batch.
            target (int, sequence of int or Tensor, optional): Captum-style class indices:
                    one int for every example, or one per example. Default: None, every
                    logit of the kGLM. A binary kGLM (one logit s, the log-odds of class 1)
                    accepts classes 0 and 1: class 1 gives the attributions of s, class 0
                    their negation (they sum to -s, the log-odds of class 0).
            show_progress (bool): progress bar.

        Returns:
            Tensor: (n_test, C, n_train) with C the number of kGLM logits (1 for a binary
            kGLM), or (n_test, n_train) with ``target``.
        """
        glm = self.surrogate if self.surrogate is not None else self.fit_surrogate()
        kernel = self.influence(inputs, show_progress=show_progress)
        coef = glm.coef_.to("cpu", kernel.dtype)
        intercept = glm.intercept_.to("cpu", kernel.dtype)
        n_logits = coef.shape[0]
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
