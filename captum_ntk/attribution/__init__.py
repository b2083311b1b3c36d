r"""Captum face: NTK data attribution behind ``captum.influence.DataInfluence``.

Each class binds a model, its training set and one kernel::

    attr = TrNTKAttribution(model, train_dataset, batch_size=64)
    scores = attr.influence(test_batch)             # (n_test, n_train) kernel values
    top = attr.influence(test_batch, k=5)           # KMostInfluentialResults, streaming top-k
    glm = attr.fit_surrogate()                      # KernelGLM (Eq. 1)
    A = attr.attribute(test_batch)                  # (n_test, C, n_train), Eq. 3

Counterfactual scores (TRAK's estimator with the margin's eNTK, ensembles of networks)::

    attr = MarginNTKAttribution([model_1, ..., model_10], train_dataset)
    scores = attr.influence((x_test, y_test))       # (n_test, n_train)
"""

from .base import NTKAttribution
from .classes import (
    ATTRIBUTION_CLASSES,
    ConjugateKernelAttribution,
    EmbeddingKernelAttribution,
    PNTK0Attribution,
    PNTKAttribution,
    ProjPNTKAttribution,
    ProjTrNTKAttribution,
    TrNTK0Attribution,
    TrNTKAttribution,
)
from .margin import MarginNTKAttribution

__all__ = [
    "ATTRIBUTION_CLASSES",
    "ConjugateKernelAttribution",
    "EmbeddingKernelAttribution",
    "MarginNTKAttribution",
    "NTKAttribution",
    "PNTK0Attribution",
    "PNTKAttribution",
    "ProjPNTKAttribution",
    "ProjTrNTKAttribution",
    "TrNTK0Attribution",
    "TrNTKAttribution",
]
