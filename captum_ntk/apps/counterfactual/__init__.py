"""Counterfactual evaluation of attributions on built-in retraining tasks (``captum-ntk evaluate``)."""

from .tasks import TASKS, RetrainingTask, get_task

__all__ = ["TASKS", "RetrainingTask", "get_task"]
