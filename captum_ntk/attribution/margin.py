r"""Counterfactual data attribution with the NTK of the margin (TRAK's estimator, exact kernel).

The correct-class margin of the network, :math:`m(x, y) = F^y(x) - \log\sum_{c \neq y}
e^{F^c(x)}` (``+-F`` for one logit), has the per-example gradient
:math:`\phi(x, y) = \sum_c q_c\, g^c(x)` with :math:`q_y = 1` and :math:`q_c = -\mathrm{softmax}_
{c \neq y}(F(x))_c`: a contraction of the per-logit gradients the trNTK is built from. Its kernel
:math:`\kappa_m((z, y_z), (x_i, y_i)) = \langle \phi(z, y_z), \phi(x_i, y_i) \rangle` is the
eNTK of the margin (label dependent). The scores are the kernel-ridge weights of each training
example in the prediction of a test example's margin, weighted by TRAK's
:math:`1 - p_i` term (the training example's loss-gradient scale):

.. math::
    \tau(z, i) = \big[\kappa_m(z, X)\,(K_m + \lambda \bar k I)^{-1}\big]_i\,(1 - p_{y_i}(x_i)),

with :math:`\bar k` the mean of :math:`K_m`'s diagonal and ``ridge`` :math:`\lambda`. This is
TRAK's formula (Park et al. 2023) with the exact (or a seeded JL-projected) eNTK of the margin in
place of TRAK's random projection, and a ridge instead of the projection's implicit one. Given
several independently trained networks (an ensemble), the kernel-ridge weights are averaged over
the networks and multiplied by the mean :math:`1 - p` term, as TRAK averages its models.

The features are held as one ``(N, D)`` matrix per network (``D`` = P exact, or ``projection_dim``)
and solved in float64 in the primal (``D <= N``) or the dual (``D > N``), which are equal.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from captum.influence import DataInfluence
from captum.influence._utils.common import KMostInfluentialResults
from torch import Tensor, nn
from tqdm import tqdm

from ..engine.data.batches import split_batch
from ..engine.data.inputs import ModelInputs
from ..engine.feature_blocks import ParamBlocks
from ..engine.fingerprint import model_fingerprint
from ..engine.modes import check_mode
from ..engine.projection.precision import exact_float32
from ..engine.widen import widen_features
from ..kernels.matrix import build_feature_map
from ..surrogate.scores import margin_gradient_weights
from .arguments import check_k
from .state import ModelChangedWarning, changed_message
from .training_data import read_training_data

__all__ = ["MarginNTKAttribution"]


class _Member:
    """One network of the ensemble: its feature map and whitened training features."""

    def __init__(self, model: nn.Module, owner: MarginNTKAttribution) -> None:
        self.model = model
        kernel = "proj_trntk" if owner.projection_dim is not None else "trntk0"
        options: dict[str, Any] = {}
        if owner.projection_dim is not None:
            options = {
                "projection_dim": owner.projection_dim,
                "projection": owner.projection,
                "seed": owner.seed,
            }
        self.feature_map = build_feature_map(
            model,
            kernel,
            layers=owner.layers,
            device=owner.device,
            dtype=owner.dtype,
            memory_limit=owner.memory_limit,
            engine="jacobian",
            **options,
        )

    def features(
        self, inputs: ModelInputs, labels: Tensor, eval_mode: bool
    ) -> tuple[Tensor, Tensor]:
        """``(B, D)`` margin gradients (float64) and ``(B,)`` ``1 - p``."""
        function = self.feature_map.function
        with check_mode(self.model, eval_mode), exact_float32():
            logits = function.batch_logits(inputs)
            features = widen_features(self.feature_map(inputs))  # half precision: float32
        q, residual = margin_gradient_weights(logits, labels)
        if isinstance(features, ParamBlocks):
            parts = [torch.einsum("bc,bcp->bp", q.to(p), p) for p in features.parts]
            flat = torch.cat(parts, dim=1)
        elif isinstance(features, Tensor) and features.dim() == 3:
            flat = torch.einsum("bc,bck->bk", q.to(features), features)
        else:
            raise ValueError(
                "MarginNTKAttribution needs per-logit gradient features; the 'kronecker' "
                "projection is not supported: use 'rademacher', 'gaussian' or 'sjlt'."
            )
        return flat.to(torch.float64), residual.cpu()


class MarginNTKAttribution(DataInfluence):
    r"""Counterfactual data attribution: kernel-ridge weights of the margin's NTK (module doc).

    Measured on the digits MLP of ``benchmarks/attribution_quality.py`` it has the highest LDS of
    every method there, for one network and for ensembles (docs/counterfactual.md).

    Args:
        model (nn.Module or sequence of nn.Module): the classifier, or several independently
                    trained networks of the same task (an ensemble; scores are averaged as
                    TRAK averages its models).
        train_dataset (Dataset, DataLoader or batch): training data with labels, batches as in
                    :class:`~captum_ntk.attribution.base.NTKAttribution`.
        batch_size (int): examples per block. Default: 64.
        layers (str or sequence of str, optional): parameters to differentiate (module names).
        projection_dim (int, optional): D of a seeded JL projection of the gradients; None
                    (default) uses the exact gradients (``N x P`` numbers per network, which
                    must fit in half of ``memory_limit``).
        projection (str): ``"rademacher"`` (default), ``"gaussian"`` or ``"sjlt"``.
        seed (int): projection seed (the same for every network). Default: 0.
        ridge (float): :math:`\lambda`, relative to the mean squared gradient norm. Default: 1.0
                    (the best of 0.1 ... 10 on the digits MLP and CNN).
        residual_weighting (bool): multiply by TRAK's ``1 - p_i`` term. Default: True.
        device, dtype, memory_limit, eval_mode: as for :func:`captum_ntk.kernel_matrix`.
        show_progress (bool): progress bar over the training blocks. Default: False.
    """

    def __init__(
        self,
        model: nn.Module | Sequence[nn.Module],
        train_dataset: Any,
        *,
        batch_size: int = 64,
        layers: Sequence[str] | str | None = None,
        projection_dim: int | None = None,
        projection: str = "rademacher",
        seed: int = 0,
        ridge: float = 1.0,
        residual_weighting: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        memory_limit: int | None = None,
        eval_mode: bool = False,
        show_progress: bool = False,
    ) -> None:
        models = list(model) if isinstance(model, (list, tuple)) else [model]
        if not models or not all(isinstance(m, nn.Module) for m in models):
            raise TypeError("model must be an nn.Module or a non-empty sequence of nn.Module")
        if not (isinstance(ridge, (int, float)) and ridge > 0):
            raise ValueError(f"ridge must be a number > 0, got {ridge!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        self.models, self.train_dataset, self.batch_size = models, train_dataset, batch_size
        self.layers, self.projection_dim, self.projection, self.seed = (
            layers,
            projection_dim,
            projection,
            seed,
        )
        self.ridge, self.residual_weighting = float(ridge), residual_weighting
        self.device, self.dtype, self.memory_limit = device, dtype, memory_limit
        self.eval_mode = eval_mode
        self.members = [_Member(m, self) for m in models]
        self.train_inputs, labels, _ = read_training_data(
            train_dataset, batch_size, self.members[0].feature_map.function.validate
        )
        if labels is None:
            raise ValueError(
                "MarginNTKAttribution explains the margin of each example's class: the training "
                "batches must carry labels ((inputs..., labels) tuples or dicts with 'labels')."
            )
        self.train_labels = labels.reshape(-1).long()
        self.num_train = int(self.train_labels.numel())
        self._fit(show_progress)

    def _fit(self, show_progress: bool = False) -> None:
        """Whitened training features and ``1 - p`` of every network's current parameters."""
        self._fingerprints = [model_fingerprint(m, checksum=True) for m in self.models]
        self._whitened: list[Tensor] = []
        residuals = []
        for member in tqdm(
            self.members, desc="networks", disable=not show_progress or len(self.members) == 1
        ):
            whitened, residual = self._fit_member(member, show_progress)
            self._whitened.append(whitened)
            residuals.append(residual)
        self.train_residual = torch.stack(residuals).mean(dim=0)

    def _refresh_if_stale(self) -> None:
        """Refits on the current parameters if any network changed since the fit (a warning)."""
        current = [model_fingerprint(m, checksum=True) for m in self.models]
        if current != self._fingerprints:
            warnings.warn(
                changed_message(type(self).__name__, ["whitened training features"]),
                ModelChangedWarning,
                stacklevel=3,
            )
            self.members = [_Member(m, self) for m in self.models]
            self._fit()

    def _fit_member(self, member: _Member, show_progress: bool) -> tuple[Tensor, Tensor]:
        blocks, residuals = [], []
        limit = member.feature_map.memory_limit
        for start, block in tqdm(
            self.train_inputs.blocks(self.batch_size),
            desc="training features",
            disable=not show_progress,
            leave=False,
        ):
            labels = self.train_labels[start : start + block.num_examples]
            features, residual = member.features(block, labels, self.eval_mode)
            if features.shape[1] * self.num_train * 8 > limit // 2:
                raise ValueError(
                    f"the training margin gradients need {features.shape[1] * self.num_train * 8} "
                    f"bytes (N = {self.num_train} x D = {features.shape[1]} in float64), over half "
                    f"of memory_limit = {limit}: pass projection_dim= (e.g. 4096), layers=, or a "
                    "larger memory_limit."
                )
            blocks.append(features.cpu())
            residuals.append(residual)
        phi = torch.cat(blocks)
        n, d = phi.shape
        damping = self.ridge * float(phi.pow(2).sum(dim=1).mean())
        if d <= n:  # primal: (Phi^T Phi + lambda I)^{-1} Phi^T
            gram = phi.T @ phi
            gram.diagonal().add_(damping)
            whitened = torch.linalg.solve(gram, phi.T)
        else:  # dual: Phi^T (Phi Phi^T + lambda I)^{-1}, the same matrix
            gram = phi @ phi.T
            gram.diagonal().add_(damping)
            whitened = torch.linalg.solve(gram, phi).T
        return whitened, torch.cat(residuals)

    def influence(  # type: ignore[override]
        self,
        inputs: Any,
        k: int | None = None,
        proponents: bool = True,
        target: int | Sequence[int] | Tensor | None = None,
        show_progress: bool = False,
    ) -> Tensor | KMostInfluentialResults:
        r"""Scores of every training example for each test example's margin.

        Args:
            inputs (Tensor, tuple or Mapping): a test batch; its labels (last tuple element or
                        ``labels``) give the class whose margin is explained, unless ``target``.
            k (int, optional): return the top-k (proponents) or bottom-k (opponents) only.
            proponents (bool): with ``k``, the largest scores. Default: True.
            target (int, sequence or Tensor, optional): the class per test example (or one
                        for all); overrides the batch's labels.
            show_progress (bool): progress bar over the test blocks.

        Returns:
            Tensor: ``(n_test, n_train)`` float64 scores (higher: removing the training example
            lowers the test margin more), or ``KMostInfluentialResults(indices, scores)``.
        """
        x, labels = split_batch(inputs, "inputs")
        if target is not None:
            labels = torch.as_tensor(target, dtype=torch.long).reshape(-1)
            if labels.numel() == 1:
                labels = labels.expand(x.num_examples)
        if labels is None or labels.numel() != x.num_examples:
            raise ValueError(
                "influence needs the class of each test example: pass (inputs..., labels), a dict "
                "with 'labels', or target= (one class, or one per example)."
            )
        labels = labels.reshape(-1).long()
        self._refresh_if_stale()
        rows = []
        for start, block in tqdm(
            x.blocks(self.batch_size), desc="test blocks", disable=not show_progress, leave=False
        ):
            y = labels[start : start + block.num_examples]
            total = torch.zeros(block.num_examples, self.num_train, dtype=torch.float64)
            for member, whitened in zip(self.members, self._whitened):
                features, _ = member.features(block, y, self.eval_mode)
                total += features.cpu() @ whitened
            rows.append(total / len(self.members))
        scores = torch.cat(rows)
        if self.residual_weighting:
            scores = scores * self.train_residual[None, :]
        if k is None:
            return scores
        check_k(k, self.num_train)
        values, indices = torch.topk(scores, int(k), dim=1, largest=proponents)
        return KMostInfluentialResults(indices, values)
