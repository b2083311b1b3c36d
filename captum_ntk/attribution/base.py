r"""Captum face: NTK data attribution behind ``captum.influence.DataInfluence``.

Each class binds a model, its training set and one kernel::

    attr = TrNTKAttribution(model, train_dataset, batch_size=64)
    scores = attr.influence(test_batch)             # (n_test, n_train) kernel values
    top = attr.influence(test_batch, k=5)           # KMostInfluentialResults, streaming top-k
    top = attr.influence(test_batch, k=5, rank_by="attribution")  # by kGLM attribution
    attr.self_influence()                           # (n_train,) diagonal of the train kernel
    attr.self_influence(score="surrogate")          # A(x_i, x_i)^{y_i}: flags mislabelled data
    glm = attr.fit_surrogate()                      # KernelGLM (Eq. 1)
    A = attr.attribute(test_batch)                  # (n_test, C, n_train), Eq. 3

Batches follow Captum: a tuple whose last element is the label (``model(*batch[:-1])``),
a Mapping with a ``labels`` key (Hugging Face, ``model(**rest)``), or a bare Tensor of
inputs. A training Dataset or DataLoader is never held whole: its inputs are read block by
block (text padded per block) whenever they are needed, only the N labels are kept. Training
features are kept across calls when they fit in a quarter of ``memory_limit`` (projected,
conjugate and embedding kernels normally do), otherwise they are recomputed block by block.

Every result belongs to one state of the model: if its parameters or buffers change
between calls (an optimizer step, ``load_state_dict``, ``model.double()``, a write through
``p.data``), the next call rebuilds the feature map from the current parameters, drops the
cached training features, train kernel and kGLM, and warns once
(:class:`~captum_ntk.attribution.state.ModelChangedWarning`).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from captum.influence import DataInfluence
from captum.influence._utils.common import KMostInfluentialResults
from torch import Tensor, nn

from ..engine.data.batches import collect
from ..engine.data.inputs import ModelInputs
from ..engine.fingerprint import model_fingerprint
from ..engine.modes import check_mode
from ..kernels.assembly import FeatureCache, assemble_kernel, iter_kernel_blocks
from ..kernels.matrix import build_feature_map
from ..kernels.registry import kernel_spec
from ..surrogate import KernelGLM
from .arguments import check_choice, check_constructor_arguments, check_flag, check_k, check_labels
from .ranking import (
    StreamingTopK,
    class_attributions,
    dense_attributions,
    leave_self_out_margin,
    num_classes,
    predicted_classes,
    surrogate_self_attributions,
)
from .state import ModelChangedWarning, changed_message, current_model_state
from .stored import StoreMismatchError, model_changed_error, open_training_store
from .surrogate_methods import SurrogateMethods
from .training_data import bind_training_data

#: Orders of :meth:`NTKAttribution.influence`.
RANK_BY = ("kernel", "attribution")
#: Scores of :meth:`NTKAttribution.self_influence`.
SELF_INFLUENCE_SCORES = ("kernel", "norm", "surrogate", "self_attribution")


def _guard_inherited_methods(cls: type) -> type:
    """Wraps the public methods ``cls`` inherits from :class:`SurrogateMethods` (kGLM
    fitting, attribution, network predictions) with :func:`current_model_state`."""
    for name, member in vars(SurrogateMethods).items():
        if not name.startswith("_") and callable(member) and name not in vars(cls):
            setattr(cls, name, current_model_state(member))
    return cls


@_guard_inherited_methods
class NTKAttribution(SurrogateMethods, DataInfluence):
    r"""Data attribution with an NTK-style kernel (base class; pick a subclass).

    Args:
        model (nn.Module): the classifier (logits (B, C), (B,) or ``.logits``), in eval
                mode if it has BatchNorm or dropout (or pass ``eval_mode=True``). The kernel
                is taken at the model's current parameters; if they change later, the next
                call recomputes every cache for the new ones (with a warning).
        train_dataset (Dataset or DataLoader): training data. A DataLoader must not
                shuffle. Batches as described in the module docstring. Read block by block
                whenever needed, never collected (a batch of tensors is held as given); it
                must return the same examples in the same order on every pass (checked).
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
        store (str or os.PathLike, optional): a directory holding the training features and
                squared norms on disk (:class:`~captum_ntk.store.FeatureStore`). Written at
                construction block by block (a construction that stopped resumes; under an
                initialised ``torch.distributed`` process group the blocks are shared out over
                the ranks) and read afterwards, so another object on the same model, training
                data and options computes no training features. Results equal those without
                a store exactly. The store records the model's content fingerprint, the
                kernel options, the dtype, N and the block size; a store written for anything
                else raises :class:`~captum_ntk.store.StoreMismatchError` naming the fields.
                In particular, if the model's parameters change after construction, the next
                call raises instead of recomputing: a store belongs to one checkpoint, so
                build a new object with a new directory for the new parameters. Fixed-size
                features only (projected kernels; ``ck`` / ``embedding`` without per-token
                activations), else a ValueError at construction. Default: None (in memory).
        **kernel_options: for projected kernels only: ``projection_dim`` (K; default None,
                which means ``min(10240, 2 ** floor(log2(P / 4)))`` for the P selected
                parameters, see :func:`captum_ntk.engine.projection.dense.default_projection_dim`),
                ``projection`` (``"rademacher"`` (default), ``"gaussian"``, ``"sjlt"`` or
                ``"kronecker"``), ``seed`` (default 0) and ``precision`` (``"fp32"``
                (default), ``"tf32"`` or ``"bf16"``). For every kernel: the other options of
                :func:`captum_ntk.kernel_matrix`'s feature map (``engine``: ``"auto"``,
                ``"jacobian"`` or ``"gram"`` for the exact gradient kernels).

    Raises:
        TypeError: for arguments of ``captum.influence.TracInCP`` that have no meaning for a
                kernel of the current parameters (``checkpoints``, ``checkpoints_load_func``,
                ``loss_fn``, ``test_loss_fn``, ``sample_wise_grads_per_batch``, ...; the
                message says why and what to do: load the checkpoint into the model and use
                one attribution object per checkpoint), projection options of an exact
                kernel, and unknown arguments (listing the valid ones).
    """

    kernel: ClassVar[str] = "trntk"

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Any,
        *args: Any,
        batch_size: int = 64,
        layers: Sequence[str] | str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        memory_limit: int | None = None,
        eval_mode: bool = False,
        store: str | os.PathLike | None = None,
        **kernel_options: Any,
    ) -> None:
        spec = kernel_spec(self.kernel)
        name = type(self).__name__
        self.kernel_options = check_constructor_arguments(
            name, spec.projected, args, kernel_options
        )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        self.model = model
        self.train_dataset = train_dataset
        self.batch_size = batch_size
        self.layers = layers
        self.eval_mode = eval_mode
        self.store = store
        self.normalize = spec.normalized
        self._requested = {"device": device, "dtype": dtype, "memory_limit": memory_limit}
        self._state_depth = 0
        self._surrogate_call: tuple[tuple, dict] | None = None  # last fit_surrogate arguments
        self._refit_pending = False
        self._probe: ModelInputs | None = None  # stands for the training inputs in estimates
        self._build()

    # ------------------------------------------------------------------ model state
    def _build(self) -> None:
        """Feature map of the model's current parameters, with empty caches."""
        fingerprint = model_fingerprint(self.model, checksum=True)
        with check_mode(self.model, self.eval_mode):
            self.feature_map = build_feature_map(
                self.model,
                self.kernel,
                layers=self.layers,
                **self._requested,
                **self.kernel_options,
            )
            bind_training_data(self)  # train_inputs / labels, checks, memory_limit, block_size
            self._train = self._training_cache()
        self._train_kernel: Tensor | None = None
        self._surrogate: KernelGLM | None = None
        self._train_logits: Tensor | None = None  # the network's logits (surrogate mixin)
        self._fingerprint = fingerprint

    def _training_cache(self) -> FeatureCache:
        """The training features: in memory, or read from (written to) ``store``."""
        if self.store is None:
            return FeatureCache(self.feature_map, self.train_inputs, self.block_size, "training")
        return open_training_store(self, self.store)

    def _refresh_if_stale(self) -> None:
        """Rebuilds the feature map and drops every cache if the model changed."""
        if model_fingerprint(self.model, checksum=True) == self._fingerprint:
            return
        dropped = []
        if self._train.kept or self._train.sq_norms is not None:
            dropped.append("training features")
        if self._train_kernel is not None:
            dropped.append("train kernel")
        if getattr(self, "_train_logits", None) is not None:
            dropped.append("network logits")
        if self._surrogate is not None:
            dropped.append("fitted surrogate")
        try:
            self._build()
        except StoreMismatchError as err:
            raise model_changed_error(type(self).__name__, err) from None
        self._refit_pending = "fitted surrogate" in dropped
        if dropped:
            message = changed_message(type(self).__name__, dropped)
            warnings.warn(message, ModelChangedWarning, stacklevel=3)

    @property
    def train_kernel(self) -> Tensor | None:
        """The cached (n_train, n_train) training kernel of the current model, or None."""
        if self._state_depth == 0:
            self._refresh_if_stale()
        return self._train_kernel

    @train_kernel.setter
    def train_kernel(self, value: Tensor | None) -> None:
        self._train_kernel = value

    @property
    def surrogate(self) -> KernelGLM | None:
        """The kGLM fitted on the current model's train kernel, or None.

        After the model changed, a dropped kGLM is refit lazily here, with the arguments of
        the last :meth:`fit_surrogate` call.
        """
        if self._state_depth == 0:
            self._refresh_if_stale()
        if self._surrogate is None and self._refit_pending and self._surrogate_call:
            self._refit_pending = False
            args, kwargs = self._surrogate_call
            self.fit_surrogate(*args, **kwargs)
        return self._surrogate

    @surrogate.setter
    def surrogate(self, value: KernelGLM | None) -> None:
        self._surrogate = value

    # ------------------------------------------------------------------ helpers
    @property
    def num_train(self) -> int:
        """N, the number of training examples."""
        return len(self.train_inputs)

    def _test_batch(self, inputs: Any) -> tuple[ModelInputs, Tensor | None]:
        x, labels = collect(inputs, self.batch_size, "inputs")
        self.train_inputs.check_compatible(x, ("training inputs", "inputs"))
        self.feature_map.function.validate(x)
        return x, labels

    def _test_inputs(self, inputs: Any) -> ModelInputs:
        return self._test_batch(inputs)[0]

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

    def _fitted_surrogate(self, show_progress: bool = False) -> KernelGLM:
        """The fitted kGLM (refit after a model change), fitted with default options if none."""
        glm = self.surrogate
        return glm if glm is not None else self.fit_surrogate(show_progress=show_progress)

    @current_model_state
    @functools.wraps(SurrogateMethods.fit_surrogate)
    def fit_surrogate(self, *args: Any, **kwargs: Any) -> KernelGLM:
        glm = super().fit_surrogate(*args, **kwargs)
        self._surrogate_call = (args, dict(kwargs))
        return glm

    # ------------------------------------------------------------------ Captum API
    @current_model_state
    def influence(  # type: ignore[override]
        self,
        inputs: Any,
        k: int | None = None,
        proponents: bool = True,
        show_progress: bool = False,
        *,
        rank_by: str = "kernel",
    ) -> Tensor | KMostInfluentialResults:
        r"""Scores of every training example for each test example, or the top ``k``.

        Two orders:

        - ``rank_by="kernel"`` (default, as Captum's similarity-based influence): the kernel
          value κ(x, x_i). It measures similarity only and ignores labels.
        - ``rank_by="attribution"``: the kGLM's data attribution (Eq. 3 of Engel et al.)
          A(x, x_i)^c = W_{c,i} κ(x, x_i) + b_c / N to the class c of the test example: its
          label if ``inputs`` carries labels, else the kGLM's predicted class (the argmax
          of Σ_i A(x, x_i)^c). Proponents (largest, most positive) are the training
          examples that push the kGLM towards c, opponents (most negative) those that push
          it away: the paper's proponents and opponents. Fits the surrogate with default
          options first if :meth:`fit_surrogate` has not been called.

        Args:
            inputs (Tensor, tuple, Mapping or DataLoader): test batch in the training
                    batches' convention (labels are used by ``rank_by="attribution"`` only).
            k (int, optional): if given, return the ``k`` (1 <= k <= n_train) highest
                    (``proponents=True``) or lowest (``proponents=False``) scoring training
                    examples per test example, by a streaming top-k over kernel blocks
                    (memory: the blocks plus n_test x k, times the number of classes for
                    ``rank_by="attribution"`` without labels). Ties go to the lower
                    training index, whatever the block sizes.
            proponents (bool): proponents (largest scores, descending) or opponents
                    (smallest, ascending). Default: True.
            show_progress (bool): progress bar over kernel blocks.
            rank_by (str): ``"kernel"`` or ``"attribution"`` (see above). Default: "kernel".

        Returns:
            Tensor (n_test, n_train) of scores if ``k`` is None, else
            ``KMostInfluentialResults(indices (n_test, k), influence_scores (n_test, k))``.

        Raises:
            ValueError: k out of range, unknown ``rank_by``, or (``rank_by="attribution"``)
                    labels that are not (n_test,) class indices of the kGLM.
        """
        k = check_k(k, self.num_train)
        check_flag("proponents", proponents)
        check_choice("rank_by", rank_by, RANK_BY)
        x, labels = self._test_batch(inputs)
        if rank_by == "attribution":
            return self._rank_by_attribution(x, labels, k, proponents, show_progress)
        with check_mode(self.model, self.eval_mode):
            if k is None:
                return assemble_kernel(
                    FeatureCache(self.feature_map, x, self.block_size),
                    self._train,
                    normalize=self.normalize,
                    memory_limit=self.memory_limit,
                    show_progress=show_progress,
                )
            top = StreamingTopK(k, largest=proponents)
            for rstart, cstart, block in self._blocks(x, show_progress, "top-k blocks"):
                top.update(rstart, cstart, block)
        scores, indices = top.result()
        return KMostInfluentialResults(indices, scores)

    def _rank_by_attribution(
        self,
        x: ModelInputs,
        labels: Tensor | None,
        k: int | None,
        proponents: bool,
        show_progress: bool,
    ) -> Tensor | KMostInfluentialResults:
        """``influence(..., rank_by="attribution")``: dense scores or streaming top-k."""
        glm = self._fitted_surrogate(show_progress)
        coef, intercept = glm.coef_.detach().cpu(), glm.intercept_.detach().cpu()
        if labels is not None:
            labels = check_labels(labels, len(x), num_classes(coef), "the labels of inputs")
        with check_mode(self.model, self.eval_mode):
            if k is None:
                kernel = assemble_kernel(
                    FeatureCache(self.feature_map, x, self.block_size),
                    self._train,
                    normalize=self.normalize,
                    memory_limit=self.memory_limit,
                    show_progress=show_progress,
                )
                return dense_attributions(kernel, coef, intercept, labels)
            top = StreamingTopK(k, largest=proponents)
            logits: dict[int, Tensor] = {}
            for rstart, cstart, block in self._blocks(x, show_progress, "attribution top-k"):
                scores = class_attributions(block.cpu(), coef, intercept, cstart, self.num_train)
                if labels is not None:  # only the label's class: (b, 1, m)
                    rows = labels[rstart : rstart + scores.shape[0]]
                    scores = scores.gather(1, rows[:, None, None].expand(-1, 1, scores.shape[2]))
                else:
                    logits[rstart] = logits.get(rstart, 0) + scores.sum(dim=2)
                top.update(rstart, cstart, scores)
        best, indices = top.result()  # (n, L or 1, k)
        if labels is None:
            classes = predicted_classes(torch.cat([logits[s] for s in sorted(logits)]))
            pick = classes[:, None, None].expand(-1, 1, best.shape[2])
            best, indices = best.gather(1, pick), indices.gather(1, pick)
        return KMostInfluentialResults(indices[:, 0], best[:, 0])

    @current_model_state
    def self_influence(
        self,
        inputs: Any = None,
        show_progress: bool = False,
        *,
        score: str = "kernel",
        labels: Tensor | Sequence[int] | None = None,
    ) -> Tensor:
        r"""A per-example score of the training set (or of ``inputs``).

        - ``score="kernel"`` (default, as Captum): the kernel diagonal κ(x_i, x_i). For the
          cosine-normalised kernels (trNTK, pNTK, proj-*, ck, embedding) it is 1 for every
          example (0 for a zero feature vector) and carries no information.
        - ``score="norm"``: the unnormalised diagonal, the squared feature norm: trNTK0
          (Σ_c ||g^c_i||²) for trNTK, pNTK0 for pNTK, the projected squared norms for
          proj-*, the squared embedding norm for ck / embedding. Large values flag
          unusual examples (as TracIn's self-influence, without a loss).
        - ``score="surrogate"``: how strongly the *other* training examples make the kGLM
          reject the example's label y_i. With R_i^c = Σ_{j≠i} A(x_i, x_j)^c (Eq. 3 over
          every training example but i), the score is max_{c≠y_i} R_i^c - R_i^{y_i}:
          positive when the rest of the training set votes for another class. Mislabelled
          examples score high whatever the kGLM's regularisation.
        - ``score="self_attribution"``: the kGLM's attribution of the example to its own
          label, A(x_i, x_i)^{y_i} = W_{y_i,i} κ(x_i, x_i) + b_{y_i} / N. Its meaning
          depends on the regularisation: a weakly regularised kGLM memorises mislabelled
          examples by leaning on themselves (high scores), a strongly regularised one
          attributes them against their label (low scores); prefer ``"surrogate"``.

        The last two are for the training set only and need the fitted kGLM (fitted with
        default options first if :meth:`fit_surrogate` has not been called; its train kernel
        is reused). TracIn users looking for mislabelled training data should use
        ``"surrogate"`` (or ``"norm"`` for unusual inputs); the default keeps Captum's
        meaning of self-influence.

        Args:
            inputs (optional): a batch (or DataLoader) in the training convention; default
                    the training set. Not with ``score="surrogate"``.
            show_progress (bool): progress bar (train kernel for ``"surrogate"``).
            score (str): ``"kernel"``, ``"norm"``, ``"surrogate"`` or
                    ``"self_attribution"``. Default: "kernel".
            labels (Tensor or sequence of int, optional): (n_train,) classes y_i for the
                    kGLM scores. Default: the training batches' labels.

        Returns:
            Tensor: (n,) on the CPU.
        """
        check_choice("score", score, SELF_INFLUENCE_SCORES)
        if score in ("surrogate", "self_attribution"):
            return self._surrogate_self_influence(inputs, labels, score, show_progress)
        if labels is not None:
            raise ValueError("labels is used by score='surrogate' / 'self_attribution' only.")
        with check_mode(self.model, self.eval_mode):
            cache = (
                self._train
                if inputs is None
                else FeatureCache(self.feature_map, self._test_inputs(inputs), self.block_size)
            )
            sq = cache.all_sq_norms().cpu()
        if score == "kernel" and self.normalize:
            return (sq > 0).to(sq.dtype)
        return sq

    def _surrogate_self_influence(
        self, inputs: Any, labels: Any, score: str, show_progress: bool
    ) -> Tensor:
        if inputs is not None:
            raise ValueError(
                f"score={score!r} is defined for training examples only (a test example has "
                "no kGLM weight): call self_influence(score=...) without inputs, or "
                "attribute(inputs) for the attributions of test examples."
            )
        y = labels if labels is not None else self.train_labels
        if y is None:
            raise ValueError(
                f"score={score!r} needs the training labels, which the training batches do "
                "not carry: pass labels=..."
            )
        glm = self._fitted_surrogate(show_progress)
        coef, intercept = glm.coef_.detach().cpu(), glm.intercept_.detach().cpu()
        y = check_labels(y, self.num_train, num_classes(coef), "labels")
        kernel = self.compute_train_kernel(show_progress).cpu()
        if score == "surrogate":
            return leave_self_out_margin(kernel, coef, intercept, y)
        return surrogate_self_attributions(kernel.diagonal(), coef, intercept, y)

    # ------------------------------------------------------------------ surrogate
    @current_model_state
    def compute_train_kernel(self, show_progress: bool = False) -> Tensor:
        r"""The (n_train, n_train) training kernel (computed once per model state, then cached)."""
        if self._train_kernel is None:
            with check_mode(self.model, self.eval_mode):
                self._train_kernel = assemble_kernel(
                    self._train,
                    None,
                    normalize=self.normalize,
                    memory_limit=self.memory_limit,
                    show_progress=show_progress,
                )
        return self._train_kernel
