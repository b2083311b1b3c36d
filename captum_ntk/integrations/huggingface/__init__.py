r"""Hugging Face ``transformers`` sequence classifiers under the NTK engine.

``transformers`` is imported lazily, so the core library works without it. Importing this package
registers a :class:`captum_ntk.engine.adapters.ModelAdapter` for transformers models (bare or
wrapped in a user module), which the engine uses to make forward passes vmap-safe (see
:mod:`.vmap`), trim padding per block and validate token inputs (see :mod:`.inputs`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ...engine.adapters import register_adapter
from .common import is_hf_model
from .inputs import attention_mask_format, prepare_inputs, trim_padding, validate_inputs
from .loading import load_sequence_classifier, minilm_path
from .lora import adapter_path, unmerged_tensors
from .vmap import check_vmap_compatibility, computes_in_float32, vmap_safe

__all__ = [
    "HuggingFaceAdapter",
    "attention_mask_format",
    "check_vmap_compatibility",
    "is_hf_model",
    "load_sequence_classifier",
    "minilm_path",
    "prepare_inputs",
    "trim_padding",
    "validate_inputs",
    "vmap_safe",
]


class HuggingFaceAdapter:
    """The engine's view of transformers models (see :mod:`captum_ntk.engine.adapters`)."""

    name = "transformers"

    def find(self, model: nn.Module) -> nn.Module | None:
        return next((m for m in model.modules() if is_hf_model(m)), None)

    def trim_padding(self, kwargs: dict[str, Tensor]) -> dict[str, Tensor]:
        return trim_padding(kwargs)

    def prepare_inputs(
        self, inner: nn.Module, kwargs: dict[str, Tensor], dtype: torch.dtype
    ) -> dict[str, Tensor]:
        return prepare_inputs(inner, kwargs, dtype=dtype)

    def validate_inputs(self, inner: nn.Module, kwargs: dict[str, Tensor]) -> None:
        validate_inputs(inner, kwargs)

    @contextlib.contextmanager
    def context(self, inner: nn.Module) -> Iterator[None]:
        with adapter_path(inner), vmap_safe(inner):  # merged LoRA layers: their adapter path
            yield

    def engine_tensors(self, model: nn.Module, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        return unmerged_tensors(model, tensors)

    def internal_dtype(self, inner: nn.Module) -> torch.dtype | None:
        return torch.float32 if computes_in_float32(inner) else None


register_adapter(HuggingFaceAdapter())
