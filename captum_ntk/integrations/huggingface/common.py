r"""Shared pieces of the Hugging Face integration: key names, the lazy import, model detection."""

from __future__ import annotations

import sys
from typing import Any, Literal

MaskFormat = Literal["additive_4d", "per_layer", "binary_2d"]

_TOKEN_ID_KEYS = ("input_ids", "token_type_ids", "position_ids")
_DROPPED_KEYS = ("labels",)
_COMMON_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds")


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - exercised only without transformers
        raise ImportError(
            "Hugging Face support needs `transformers`: pip install 'captum-ntk[hf]'"
        ) from err
    return transformers


def is_hf_model(model: object) -> bool:
    r"""
    Tells whether ``model`` is a ``transformers.PreTrainedModel``, without importing transformers.

    Args:
        model (object): Any object, usually an ``nn.Module``.

    Returns:
        is_hf (bool): True if transformers is already imported and ``model`` is one of its
            ``PreTrainedModel`` instances. A model can only be one if transformers' modeling code
            has been imported, so a missing module means False.
    """
    modeling_utils = sys.modules.get("transformers.modeling_utils")
    if modeling_utils is None:
        return False
    pretrained = getattr(modeling_utils, "PreTrainedModel", None)
    return pretrained is not None and isinstance(model, pretrained)
