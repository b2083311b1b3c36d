r"""Captum face: NTK data attribution behind ``captum.influence.DataInfluence``.

Each class binds a model, its training set and one kernel::

    attr = TrNTKAttribution(model, train_dataset, batch_size=64)
    scores = attr.influence(test_batch)             # (n_test, n_train) kernel values
    top = attr.influence(test_batch, k=5)           # KMostInfluentialResults, streaming top-k
    attr.self_influence()                           # (n_train,) diagonal of the train kernel
    glm = attr.fit_surrogate()                      # KernelGLM (Eq. 1)
    A = attr.attribute(test_batch)                  # (n_test, C, n_train), Eq. 3

Batches follow Captum: a tuple whose last element is the label (``model(*batch[:-1])``),
a Mapping with a ``labels`` key (Hugging Face, ``model(**rest)``), or a bare Tensor of
inputs. Training inputs (not gradients) are read into memory once; training features are
kept across calls when they fit in half of ``memory_limit`` (projected, conjugate and
embedding kernels normally do), otherwise they are recomputed block by block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from captum.influence import DataInfluence
from captum.influence._utils.common import KMostInfluentialResults
from torch import Tensor, nn

from ..engine.batches import collect
from ..engine.inputs import ModelInputs
from ..engine.model import check_mode
from ..kernels.assembly import FeatureCache, assemble_kernel, iter_kernel_blocks
from ..kernels.matrix import auto_batch_size, build_feature_map
from ..kernels.registry import kernel_spec
from ..surrogate import KernelGLM
from .surrogate_methods import SurrogateMethods


class NTKAttribution(SurrogateMethods, DataInfluence):
    r"""Data attribution with an NTK-style kernel (base class; pick a subclass).

    Args:
        model (nn.Module): the classifier (logits (B, C), (B,) or ``.logits``), in eval
                mode if it has BatchNorm or dropout (or pass ``eval_mode=True``).
        train_dataset (Dataset or DataLoader): training data. A DataLoader must not
                shuffle. Batches as described in the module docstring.
        batch_size (int): DataLoader batch size for a Dataset, and the examples per kernel
                block. Default: 64.
        layers (str or sequence of str, optional): module names (see
                :func:`captum_ntk.kernel_matrix`).
        device (torch.device or str, optional): compute device. Default: the model's.
        dtype (torch.dtype, optional): compute dtype. Default: the model's.
        memory_limit (int, optional): bytes of features held at once (see
                :func:`captum_ntk.kernel_matrix`).
        eval_mode (bool): compute the kernel of the eval-mode function if the model has
                BatchNorm/dropout in train mode (flags restored afterwards).
        kernel (str): kernel name (fixed by subclasses).
        **kernel_options: ``projection_dim``, ``projection``, ``seed`` for projected kernels.
    """

    kernel: ClassVar[str] = "trntk"

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Any,
        *,
        batch_size: int = 64,
        layers: Sequence[str] | str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        memory_limit: int | None = None,
        eval_mode: bool = False,
        **kernel_options: Any,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        self.model = model
        self.train_dataset = train_dataset
        self.batch_size = batch_size
        self.layers = layers
        self.eval_mode = eval_mode
        self.train_inputs, self.train_labels = collect(train_dataset, batch_size)
        with check_mode(model, eval_mode):
            self.feature_map = build_feature_map(
                model,
                self.kernel,
                layers=layers,
                device=device,
                dtype=dtype,
                memory_limit=memory_limit,
                **kernel_options,
            )
            self.feature_map.function.validate(self.train_inputs)
            self.feature_map.function.num_outputs(self.train_inputs)  # fails early on bad batches
        self.memory_limit = self.feature_map.memory_limit
        self.block_size = min(
            batch_size, auto_batch_size(self.feature_map, self.train_inputs, self.memory_limit)
        )
        self._train = FeatureCache(self.feature_map, self.train_inputs, self.block_size, "training")
        self.normalize = kernel_spec(self.kernel).normalized
        self.train_kernel: Tensor | None = None
        self.surrogate: KernelGLM | None = None

    # ------------------------------------------------------------------ helpers
    @property
    def num_train(self) -> int:
        """N, the number of training examples."""
        return len(self.train_inputs)

    def _test_inputs(self, inputs: Any) -> ModelInputs:
        inputs = collect(inputs, self.batch_size, "inputs")[0]
        self.train_inputs.check_compatible(inputs, ("training inputs", "inputs"))
        self.feature_map.function.validate(inputs)
        return inputs

    def _blocks(self, inputs: ModelInputs | None, show_progress: bool, desc: str):
        rows = (
            self._train
            if inputs is None
            else FeatureCache(self.feature_map, inputs, self.block_size)
        )
        cols = None if inputs is None else self._train
        return iter_kernel_blocks(
            rows,
            cols,
            normalize=self.normalize,
            memory_limit=self.memory_limit,
            show_progress=show_progress,
            desc=desc,
        )

    # ------------------------------------------------------------------ Captum API
    def influence(  # type: ignore[override]
        self,
        inputs: Any,
        k: int | None = None,
        proponents: bool = True,
        show_progress: bool = False,
    ) -> Tensor | KMostInfluentialResults:
        r"""Kernel values between test inputs and every training example.

        Args:
            inputs (Tensor, tuple, Mapping or DataLoader): test batch in the training
                    batches' convention (labels, if present, are ignored).
            k (int, optional): if given, return the ``k`` most (``proponents=True``) or least
                    (``proponents=False``) similar training examples per test example,
                    computed by a streaming top-k over training blocks.
            proponents (bool): proponents (largest kernel values, descending) or opponents
                    (smallest, ascending). Default: True.
            show_progress (bool): progress bar over kernel blocks.

        Returns:
            Tensor (n_test, n_train) if ``k`` is None, else
            ``KMostInfluentialResults(indices (n_test, k), influence_scores (n_test, k))``.
        """
        x = self._test_inputs(inputs)
        with check_mode(self.model, self.eval_mode):
            if k is None:
                return assemble_kernel(
                    FeatureCache(self.feature_map, x, self.block_size),
                    self._train,
                    normalize=self.normalize,
                    memory_limit=self.memory_limit,
                    show_progress=show_progress,
                )
            return self._top_k(x, k, proponents, show_progress)

    def _top_k(
        self, x: ModelInputs, k: int, proponents: bool, show_progress: bool
    ) -> KMostInfluentialResults:
        if not 1 <= k <= self.num_train:
            raise ValueError(
                f"k must lie in [1, {self.num_train}] (the training set size), got {k}."
            )
        n = len(x)
        best_scores: Tensor | None = None
        best_idx: Tensor | None = None
        rows_done: dict[int, tuple[Tensor, Tensor]] = {}
        for rstart, cstart, block in self._blocks(x, show_progress, "top-k blocks"):
            block = block.cpu()
            idx = torch.arange(cstart, cstart + block.shape[1]).expand(block.shape[0], -1)
            if rstart in rows_done:
                scores, indices = rows_done[rstart]
                block = torch.cat([scores, block], dim=1)
                idx = torch.cat([indices, idx], dim=1)
            # ties go to the lower training index, whatever the block sizes: order the
            # candidates by index, then sort stably by score
            by_index = idx.argsort(dim=1, stable=True)
            block, idx = torch.gather(block, 1, by_index), torch.gather(idx, 1, by_index)
            top, pos = torch.sort(block, dim=1, descending=proponents, stable=True)
            kk = min(k, block.shape[1])
            rows_done[rstart] = (top[:, :kk], torch.gather(idx, 1, pos[:, :kk]))
        best_scores = torch.cat([rows_done[s][0] for s in sorted(rows_done)])
        best_idx = torch.cat([rows_done[s][1] for s in sorted(rows_done)])
        assert best_scores.shape[0] == n
        return KMostInfluentialResults(best_idx, best_scores)

    def self_influence(self, inputs: Any = None, show_progress: bool = False) -> Tensor:
        r"""Diagonal of the kernel: κ(x_i, x_i) for the training set (or for ``inputs``).

        Normalised kernels give 1 (0 for a zero-norm example); use an unnormalised class
        (``TrNTK0Attribution``, ``PNTK0Attribution``) for squared gradient norms, which are
        what flags unusual examples.

        Returns:
            Tensor: (n,) on the CPU.
        """
        with check_mode(self.model, self.eval_mode):
            cache = (
                self._train
                if inputs is None
                else FeatureCache(self.feature_map, self._test_inputs(inputs), self.block_size)
            )
            sq = cache.all_sq_norms().cpu()
        if self.normalize:
            return (sq > 0).to(sq.dtype)
        return sq

    # ------------------------------------------------------------------ surrogate
    def compute_train_kernel(self, show_progress: bool = False) -> Tensor:
        r"""The (n_train, n_train) training kernel (computed once, then cached)."""
        if self.train_kernel is None:
            with check_mode(self.model, self.eval_mode):
                self.train_kernel = assemble_kernel(
                    self._train,
                    None,
                    normalize=self.normalize,
                    memory_limit=self.memory_limit,
                    show_progress=show_progress,
                )
        return self.train_kernel
