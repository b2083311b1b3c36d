r"""Reproduce rows of Engel et al.'s tables on the user's own copy of the data.

``captum-ntk reproduce ROW --data-root DIR``; see :func:`run_reproduce` and
:data:`~captum_ntk.apps.reproduce.rows.ROWS`.
"""

from .rows import ROWS, RowSpec, get_row
from .runner import ReproduceConfig, run_reproduce

__all__ = ["ROWS", "ReproduceConfig", "RowSpec", "get_row", "run_reproduce"]
