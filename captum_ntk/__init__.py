r"""captum_ntk: neural-tangent-kernel surrogate models and data attribution for PyTorch.

Data flows one way through the subpackages::

    engine -> kernels -> surrogate -> attribution -> metrics, analysis
                                                     integrations (model families), apps (CLI, demo)

``engine`` turns a model and inputs into per-example features (Jacobians, projections,
activations); ``kernels`` holds the kernel registry and :func:`kernel_matrix`; ``surrogate`` the
kernel GLM; ``attribution`` the Captum-style classes; ``metrics`` the faithfulness metrics
(``cn.metrics.kendall_tau``, as ``captum.metrics`` after ``import captum``). ``integrations``
registers Hugging Face support with the engine; ``apps`` (CLI, demo, example models, plots) is not
imported here.
"""

from . import (
    analysis,
    integrations,  # noqa: F401  (registers model-family adapters with the engine)
    metrics,
)
from .attribution import (
    ATTRIBUTION_CLASSES,
    ConjugateKernelAttribution,
    EmbeddingKernelAttribution,
    MarginNTKAttribution,
    NTKAttribution,
    PNTK0Attribution,
    PNTKAttribution,
    ProjPNTKAttribution,
    ProjTrNTKAttribution,
    TrNTK0Attribution,
    TrNTKAttribution,
)
from .engine import num_parameters, projection_matrix, select_parameters
from .engine.gradient_computers import register_gradient_computer
from .engine.projection import register_projection
from .integrations import huggingface  # noqa: F401
from .kernels import KERNELS, KernelSpec, kernel_matrix
from .surrogate import KernelGLM

__version__ = "0.1.0"

__all__ = [
    "ATTRIBUTION_CLASSES",
    "ConjugateKernelAttribution",
    "EmbeddingKernelAttribution",
    "KERNELS",
    "KernelGLM",
    "KernelSpec",
    "MarginNTKAttribution",
    "NTKAttribution",
    "PNTK0Attribution",
    "PNTKAttribution",
    "ProjPNTKAttribution",
    "ProjTrNTKAttribution",
    "TrNTK0Attribution",
    "TrNTKAttribution",
    "analysis",
    "kernel_matrix",
    "metrics",
    "num_parameters",
    "projection_matrix",
    "register_gradient_computer",
    "register_projection",
    "select_parameters",
]
