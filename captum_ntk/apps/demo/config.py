r"""Settings of the digits demo: its networks (:data:`DEMO_MODELS`) and :class:`DemoConfig`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from ...kernels import KERNELS, kernel_names
from ..models import DigitsCNN, DigitsMLP

__all__ = [
    "ALL_KERNELS",
    "BINARY_CLASSES",
    "DEMO_MODELS",
    "FIGURE_KERNEL",
    "PAPER_TARGET",
    "PROJECTED_KERNELS",
    "DemoConfig",
    "DemoModel",
    "choose_projection_dim",
    "make_config",
]

#: Kernels with a kGLM, in table order (``entk`` is (N, N, C, C) and has none).
ALL_KERNELS: tuple[str, ...] = kernel_names(attributable=True)
PROJECTED_KERNELS = tuple(k for k in ALL_KERNELS if KERNELS[k].projected)
#: Kernel of the figures and of the label-fitted vs distilled comparison (the paper's reference).
FIGURE_KERNEL = "trntk"
#: The kGLM target of Engel et al. (Eq. 1): cross-entropy on the true labels.
PAPER_TARGET = "labels"
#: Digits of the binary (single-logit) task.
BINARY_CLASSES = (3, 8)
#: Fraction of the two-class subset held out for testing (it has only ~360 digits).
BINARY_TEST_FRACTION = 0.4


@dataclass(frozen=True)
class DemoModel:
    r"""One network of the demo and how it is trained.

    Args:
        name (str): row label in the table and file-name prefix.
        description (str): one line for the report.
        build (Callable[[int], nn.Module]): seed -> untrained model.
        image (bool): the model takes (B, 1, 8, 8) images rather than (B, 64) vectors.
        classes (tuple of int, optional): digit subset (relabelled 0..k-1); None for all ten.
        lr (float): Adam learning rate.
        epochs (int): training epochs.
    """

    name: str
    description: str
    build: Callable[[int], nn.Module]
    image: bool
    classes: tuple[int, ...] | None
    lr: float
    epochs: int


def _mlp(seed: int) -> nn.Module:
    return DigitsMLP(hidden=64, num_outputs=10, seed=seed)


def _cnn(seed: int) -> nn.Module:
    return DigitsCNN(num_outputs=10, seed=seed)


def _binary_mlp(seed: int) -> nn.Module:
    return DigitsMLP(hidden=64, num_outputs=1, seed=seed)


#: The demo's networks: small learning rates, so the networks stay close to their tangent
#: kernel (``--lr-scale`` is not offered; change these to experiment).
DEMO_MODELS: tuple[DemoModel, ...] = (
    DemoModel("mlp", "DigitsMLP 64-64-64-10 (ReLU), 10 classes", _mlp, False, None, 1e-3, 30),
    DemoModel(
        "cnn",
        "DigitsCNN conv16-BN-conv32-BN-maxpool-linear, 10 classes",
        _cnn,
        True,
        None,
        3e-4,
        30,
    ),
    DemoModel(
        "mlp-binary",
        "DigitsMLP 64-64-64-1, one logit",
        _binary_mlp,
        False,
        BINARY_CLASSES,
        3e-4,
        60,
    ),
)


@dataclass
class DemoConfig:
    r"""Settings of :func:`~captum_ntk.apps.demo.run_demo`.

    Args:
        output (Path): output folder. Default: ``captum_ntk_demo_output``.
        n_train (int): training digits for the 10-class models (the binary task uses at most
                this many). Default: 1000.
        n_test (int): test digits (binary task: at most this many). Default: 500.
        projection_dim (int): K of the projected kernels; lowered automatically, per model,
                to a power of two <= P / 2 when it is not below P. Default: 1024.
        seed (int): seed of the split, the initialisation, the training and the projections.
        kernels (tuple of str): kernels to evaluate (``entk`` adds an eNTK timing on a few
                test points; it has no kGLM). Default: :data:`ALL_KERNELS`.
        quick (bool): the reduced sizes of :meth:`quick_defaults` were applied; the numbers
                are then a smoke test, not representative.
        plots (bool): write the figures. Default: True.
        target (str, optional): what the kGLM is fitted to (``fit_surrogate(target=)``):
                ``"logits"``, ``"probabilities"``, ``"predictions"`` or ``"labels"`` (the
                paper's kGLM, :data:`PAPER_TARGET`). Default: None, the library's default.
        alpha (float or str): L2 strength of the kGLM relative to the kernel's scale, or
                ``"auto"`` (chosen per kernel by held-out faithfulness plus counterfactual
                self-consistency on the training set). Default: ``"auto"``.
        compare (bool): also fit the other of {labels, the default target} on the
                :data:`FIGURE_KERNEL` of each model, for the label-fitted vs distilled table
                and the alpha-selection plot. Default: True.
        class_weight (str, optional): kGLM class weights, "balanced" or None.
        binary_classes (tuple of int): the two digits of the single-logit task.
                Default: (3, 8).
        threads (int, optional): torch CPU threads during the demo (restored afterwards);
                None keeps torch's default (all cores). Default: None.
        show_progress (bool): tqdm progress bars. Default: True.
        n_exemplars (int): test digits shown in the exemplar grids. Default: 4.
        top_k (int): exemplars per test digit. Default: 5.
        batch_size (int): examples per kernel block. Default: 128.
        models (tuple of str, optional): names of :data:`DEMO_MODELS` to run. Default: all.
    """

    output: Path = Path("captum_ntk_demo_output")
    n_train: int = 1000
    n_test: int = 500
    projection_dim: int = 1024
    seed: int = 0
    kernels: tuple[str, ...] = ALL_KERNELS
    quick: bool = False
    plots: bool = True
    target: str | None = None
    alpha: float | str = "auto"
    compare: bool = True
    class_weight: str | None = "balanced"
    binary_classes: tuple[int, int] = BINARY_CLASSES
    threads: int | None = None
    show_progress: bool = True
    n_exemplars: int = 4
    top_k: int = 5
    batch_size: int = 128
    models: tuple[str, ...] | None = None

    @staticmethod
    def quick_defaults() -> dict[str, Any]:
        """Sizes of ``--quick`` (a smoke test; its numbers are not representative)."""
        return {"n_train": 200, "n_test": 100, "projection_dim": 256, "n_exemplars": 3}

    def resolved_target(self) -> str:
        """The kGLM target: :attr:`target`, or the library's default when it is None."""
        from ...attribution.surrogate_methods import DEFAULT_TARGET

        return self.target if self.target is not None else DEFAULT_TARGET


def choose_projection_dim(requested: int, num_params: int) -> int:
    r"""A projection dimension below P: ``requested`` if it is, else a power of two <= P / 2.

    Args:
        requested (int): the user's K.
        num_params (int): P, the number of parameters.

    Returns:
        int: K < P.
    """
    if requested < num_params:
        return requested
    return max(1, 2 ** int(math.floor(math.log2(max(num_params // 2, 1)))))


def make_config(**overrides: Any) -> DemoConfig:
    r"""A :class:`DemoConfig` with ``quick`` sizes applied first when ``quick=True``.

    Args:
        **overrides: DemoConfig fields; None values are ignored (keep the defaults).

    Returns:
        DemoConfig: the settings.
    """
    values = {k: v for k, v in overrides.items() if v is not None}
    config = DemoConfig()
    if values.get("quick"):
        config = replace(config, **DemoConfig.quick_defaults())
    return replace(config, **values)
