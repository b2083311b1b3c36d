r"""Surrogate models fitted to kernels: the kernel GLM (kGLM, Eq. 1).

- :mod:`.kglm`: :class:`KernelGLM`, the estimator;
- :mod:`.objectives`: its losses (cross-entropy with hard or soft targets, squared) and solvers;
- :mod:`.selection`: ``alpha="auto"``, k-fold held-out faithfulness on the train kernel.
"""

from .kglm import ABSENT_CLASS_MARGIN, KernelGLM
from .scores import correct_class_log_proba
from .selection import DEFAULT_ALPHA_GRID

__all__ = ["ABSENT_CLASS_MARGIN", "DEFAULT_ALPHA_GRID", "KernelGLM", "correct_class_log_proba"]
