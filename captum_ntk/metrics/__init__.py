r"""Faithfulness and forensics metrics for kernel surrogate models (Engel et al., Appendix G, L).

Tensor primitives accept torch tensors or numpy arrays (any device) and return Python floats, dicts of
floats or CPU tensors, as documented on each. :func:`faithfulness` is the higher-level evaluator in
the style of ``captum.metrics``: forward function first, then the attribution object and inputs.
"""

from .agreement import (
    correct_class_probability,
    misclassification_coincidence_rate,
    test_accuracy_differential,
)
from .correlation import kendall_tau, pearson, spearman
from .faithfulness import faithfulness
from .forensics import forensic_precision_recall
from .linearization import linearization
from .scores import correct_class_log_probability, correct_class_margin, tied_pairs

__all__ = [
    "correct_class_log_probability",
    "correct_class_margin",
    "correct_class_probability",
    "faithfulness",
    "forensic_precision_recall",
    "kendall_tau",
    "linearization",
    "misclassification_coincidence_rate",
    "pearson",
    "spearman",
    "test_accuracy_differential",
    "tied_pairs",
]
