r"""NTK analysis toolkit: kernel regression, eigen-features, kernel attacks and kernel evolution.

After Tsilivis & Kempe, "What Can the Neural Tangent Kernel Tell Us About Adversarial
Robustness?" (NeurIPS 2022), and standard NTK theory:

- :class:`KernelRegressor`: ``f(x) = K(x, X) (K(X, X) + ridge I)^{-1} Y`` with the GP log
  marginal likelihood, the label spectrum and closed-form gradient flow (per eigenmode).
- Kernels (:mod:`.kernels`, :mod:`.analytic`): :func:`relu_mlp_ntk` (infinite-width ReLU MLP
  NNGP / NTK), :class:`ReLUNTK`, :class:`RBFKernel`, :func:`linear_kernel`,
  :class:`EmpiricalNTK` (differentiable in x) and :class:`ModelKernel` (any registry kernel,
  not differentiable in x).
- :class:`EigenFeatures`: per-eigenvector features, their usefulness, robustness and saliency.
- :func:`fgsm`, :func:`pgd`, :func:`transfer_report`: attacks through differentiable predictors
  and their transfer to a network.
- :class:`KernelEvolution`: online tracking of a network's kernel over checkpoints; spectral
  summaries in :mod:`.spectral`; figures in :mod:`.plots`.
"""

from ._validation import one_hot_targets, predicted_labels
from .analytic import ReLUMLP, ReLUNTK, relu_mlp_ntk
from .attacks import TransferReport, accuracy, attack_objective, fgsm, pgd, transfer_report
from .eigen import EigenFeatures
from .evolution import KernelEvolution
from .kernels import EmpiricalNTK, ModelKernel, RBFKernel, linear_kernel
from .plots import plot_eigenmodes, plot_feature_tradeoff, plot_kernel_evolution
from .regression import GradientFlow, KernelRegressor, LabelSpectrum
from .spectral import (
    centered_alignment,
    effective_rank,
    kernel_cosine,
    kernel_distance,
    label_energy,
    spectral_mass,
)

__all__ = [
    "EigenFeatures",
    "EmpiricalNTK",
    "GradientFlow",
    "KernelEvolution",
    "KernelRegressor",
    "LabelSpectrum",
    "ModelKernel",
    "RBFKernel",
    "ReLUMLP",
    "ReLUNTK",
    "TransferReport",
    "accuracy",
    "attack_objective",
    "centered_alignment",
    "effective_rank",
    "fgsm",
    "kernel_cosine",
    "kernel_distance",
    "label_energy",
    "linear_kernel",
    "one_hot_targets",
    "pgd",
    "plot_eigenmodes",
    "plot_feature_tradeoff",
    "plot_kernel_evolution",
    "predicted_labels",
    "relu_mlp_ntk",
    "spectral_mass",
    "transfer_report",
]
