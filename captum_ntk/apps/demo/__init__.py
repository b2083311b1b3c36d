r"""End-to-end demo on scikit-learn's 8x8 digits (offline): kernels, kGLMs, faithfulness, figures.

:func:`run_demo` (the ``captum-ntk demo`` command) trains three small networks,

* ``mlp``: :class:`~captum_ntk.apps.models.DigitsMLP`, 10 classes,
* ``cnn``: :class:`~captum_ntk.apps.models.DigitsCNN` (conv + BatchNorm), 10 classes,
* ``mlp-binary``: a single-logit ``DigitsMLP`` on a two-class subset (digits 3 vs 8),

then, for every model and kernel, computes the train and test kernels with the attribution
classes of :mod:`captum_ntk.attribution`, fits the kGLM surrogate on the train kernel
(``fit_surrogate(target=..., alpha=...)``; the library's default target unless
``target="labels"``, the paper's Eq. 1, is asked for) and measures its faithfulness to the
network (Kendall tau_K of the correct-class probabilities, test accuracy differential TAD,
misclassification coincidence R_miss; Appendix G of Engel et al.). On the trNTK it also fits
the other of {label-fitted, distilled} kGLM for a comparison. It prints a table like the
paper's Table 2 and writes to the output folder:

* ``report.md``: the tables, the warnings raised while fitting, links to the figures,
* ``results.json``: the settings, per-model information and every row of the tables,
* ``<model>_class_attribution.png``: Fig.-2-style class-level attributions (trNTK kGLM),
* ``<model>_proponents.png`` / ``<model>_opponents.png``: the training examples with the
  largest / most negative attributions to the predicted class of a few test digits,
* ``<model>_similar.png``: the training examples most similar under the trNTK,
* ``<model>_alpha_selection.png``: cross-validated faithfulness against alpha (``alpha="auto"``).

Modules: :mod:`.config` (models, settings), :mod:`.evaluate` (one kernel: fit and score),
:mod:`.figures`, :mod:`.table`, :mod:`.report`, :mod:`.run`.
"""

from .config import (
    ALL_KERNELS,
    BINARY_CLASSES,
    DEMO_MODELS,
    FIGURE_KERNEL,
    PAPER_TARGET,
    PROJECTED_KERNELS,
    DemoConfig,
    DemoModel,
    choose_projection_dim,
    make_config,
)
from .evaluate import collect_warnings, kernel_attributions
from .figures import plot_alpha_selection
from .report import QUICK_NOTE
from .run import run_demo
from .table import format_table

__all__ = [
    "ALL_KERNELS",
    "BINARY_CLASSES",
    "DEMO_MODELS",
    "FIGURE_KERNEL",
    "PAPER_TARGET",
    "PROJECTED_KERNELS",
    "QUICK_NOTE",
    "DemoConfig",
    "DemoModel",
    "choose_projection_dim",
    "collect_warnings",
    "format_table",
    "kernel_attributions",
    "make_config",
    "plot_alpha_selection",
    "run_demo",
]
