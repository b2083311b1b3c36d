r"""Keeping an attribution object's caches tied to one state of its model.

An attribution object caches training features, the train kernel and the fitted kGLM, all
functions of the model's parameters at the time they were computed. Every public method is
wrapped with :func:`current_model_state`: on entry (outermost call only) it compares the
model's fingerprint (:func:`captum_ntk.engine.fingerprint.model_fingerprint` with
checksums) with the one recorded when the caches were built and, if the model changed,
rebuilds the feature map from the current parameters and drops every cache, with one
:class:`ModelChangedWarning`. A result therefore always belongs to one checkpoint.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from ..engine.projection.precision import exact_float32

F = TypeVar("F", bound=Callable[..., Any])


class ModelChangedWarning(UserWarning):
    """The model's parameters or buffers changed since an attribution object cached results
    from them; the caches were recomputed for the new state."""


def current_model_state(method: F) -> F:
    """Decorator: refresh the object's caches if the model changed, once per outermost call.

    The object provides ``_state_depth`` (int) and ``_refresh_if_stale()``.
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self._state_depth == 0:
            self._refresh_if_stale()
        self._state_depth += 1
        try:
            with exact_float32():  # precision="fp32" holds under a script's TF32 settings
                return method(self, *args, **kwargs)
        finally:
            self._state_depth -= 1

    return wrapper  # type: ignore[return-value]


def changed_message(cls_name: str, dropped: list[str]) -> str:
    """The warning text for a model whose state changed."""
    text = (
        f"{cls_name}: the model's parameters or buffers changed since its caches were built "
        "(an optimizer step, load_state_dict, a dtype/device cast or an in-place write); the "
        "feature map was rebuilt from the current parameters and the caches recomputed for them"
    )
    if dropped:
        text += f" (dropped: {', '.join(dropped)})"
    if "fitted surrogate" in dropped:
        text += (
            ". The kGLM surrogate will be refit on the new kernel, with the arguments of the "
            "last fit_surrogate call, when next needed"
        )
    return text + ". Results never mix the two states."
