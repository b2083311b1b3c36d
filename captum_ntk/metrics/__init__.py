r"""Faithfulness and forensics metrics for kernel surrogate models (Engel et al., Appendix G, L).

Tensor primitives accept torch tensors or numpy arrays (any device) and return Python floats, dicts of
floats or CPU tensors, as documented on each. :func:`faithfulness` is the higher-level evaluator in
the style of ``captum.metrics``: forward function first, then the attribution object and inputs.

Counterfactual validity: :func:`linear_datamodeling_score` (LDS) and :func:`removal_test` on a
retrained ground truth from :class:`RetrainingHarness`; :func:`select_by_lds` chooses among
attribution methods or surrogate settings on validation test examples and reports the LDS on
held-out ones.
"""

from .agreement import (
    correct_class_probability,
    misclassification_coincidence_rate,
    test_accuracy_differential,
)
from .correlation import kendall_tau, pearson, spearman
from .datamodels import datamodel_predictions, draw_subsets, linear_datamodeling_score
from .faithfulness import faithfulness
from .forensics import forensic_precision_recall
from .lds_selection import LdsSelectionResult, select_by_lds
from .linearization import linearization
from .removal import RemovalTestResult, removal_test
from .retraining import RetrainingHarness, SubsetGroundTruth, margin_output
from .scores import correct_class_log_probability, correct_class_margin, tied_pairs

__all__ = [
    "LdsSelectionResult",
    "RemovalTestResult",
    "RetrainingHarness",
    "SubsetGroundTruth",
    "correct_class_log_probability",
    "correct_class_margin",
    "correct_class_probability",
    "datamodel_predictions",
    "draw_subsets",
    "faithfulness",
    "forensic_precision_recall",
    "kendall_tau",
    "linear_datamodeling_score",
    "linearization",
    "margin_output",
    "misclassification_coincidence_rate",
    "pearson",
    "removal_test",
    "select_by_lds",
    "spearman",
    "test_accuracy_differential",
    "tied_pairs",
]
