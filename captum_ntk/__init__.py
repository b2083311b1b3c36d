"""captum_ntk: neural-tangent-kernel surrogate models and data attribution for PyTorch.

The kernel engine (:func:`kernel_matrix`), seeded projections, the kGLM surrogate, the
Captum-style attribution classes and faithfulness metrics.
"""

from .attribution import (
    ATTRIBUTION_CLASSES,
    ConjugateKernelAttribution,
    EmbeddingKernelAttribution,
    NTKAttribution,
    PNTK0Attribution,
    PNTKAttribution,
    ProjPNTKAttribution,
    ProjTrNTKAttribution,
    TrNTK0Attribution,
    TrNTKAttribution,
)
from .features import KERNELS
from .kernels import kernel_matrix
from .parameters import num_parameters, select_parameters
from .projection import projection_matrix
from .surrogate import KernelGLM

__version__ = "0.1.0"

__all__ = [
    "ATTRIBUTION_CLASSES",
    "ConjugateKernelAttribution",
    "EmbeddingKernelAttribution",
    "KERNELS",
    "KernelGLM",
    "NTKAttribution",
    "PNTK0Attribution",
    "PNTKAttribution",
    "ProjPNTKAttribution",
    "ProjTrNTKAttribution",
    "TrNTK0Attribution",
    "TrNTKAttribution",
    "kernel_matrix",
    "num_parameters",
    "projection_matrix",
    "select_parameters",
]
