r"""Model-family adapters: how the engine runs models that need special input handling.

The engine knows plain ``nn.Module`` classifiers. Families whose forward pass is not safe under
``torch.func.vmap`` as written (Hugging Face ``transformers`` models build attention masks with
data-dependent control flow) plug in an adapter here; :class:`captum_ntk.engine.model.ModelFunction`
asks :func:`find_adapter` for one. Adapters are registered by the integration packages
(``captum_ntk.integrations``), so the engine never imports them.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

import torch
from torch import Tensor, nn


class ModelAdapter(Protocol):
    """What an integration provides for one model family."""

    #: family name, for messages
    name: str

    def find(self, model: nn.Module) -> nn.Module | None:
        """The family's model inside ``model`` (``model`` itself, or a wrapped submodule)."""

    def trim_padding(self, kwargs: dict[str, Tensor]) -> dict[str, Tensor]:
        """A block cut to its longest real sequence."""

    def prepare_inputs(
        self, inner: nn.Module, kwargs: dict[str, Tensor], dtype: torch.dtype
    ) -> dict[str, Tensor]:
        """Keyword inputs rewritten so the forward pass is vmap-safe."""

    def validate_inputs(self, inner: nn.Module, kwargs: dict[str, Tensor]) -> None:
        """Raises a clear error for inputs the model cannot take."""

    def context(self, inner: nn.Module) -> contextlib.AbstractContextManager[Any]:
        """Context to run vmapped forward passes in."""

    def engine_tensors(self, model: nn.Module, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """The engine's copies of ``model``'s parameters and buffers (named as in ``model``) as
        the forward passes inside :meth:`context` must see them (e.g. merged adapters
        unmerged); return ``tensors`` unchanged if nothing applies."""

    def internal_dtype(self, inner: nn.Module) -> torch.dtype | None:
        """The narrowest dtype the family computes parts of the forward pass in whatever the
        model's dtype (e.g. a float32 attention softmax), or None: numerical checks of the
        engine compare at that precision."""


_ADAPTERS: list[ModelAdapter] = []


def register_adapter(adapter: ModelAdapter) -> None:
    """Registers ``adapter`` (once; later registrations of the same name replace it)."""
    _ADAPTERS[:] = [a for a in _ADAPTERS if a.name != adapter.name]
    _ADAPTERS.append(adapter)


def find_adapter(model: nn.Module) -> tuple[ModelAdapter | None, nn.Module | None]:
    """The adapter that claims ``model`` (or a submodule of it) and the claimed module."""
    for adapter in _ADAPTERS:
        inner = adapter.find(model)
        if inner is not None:
            return adapter, inner
    return None, None
