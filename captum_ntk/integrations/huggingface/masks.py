r"""Per-layer attention masks (sliding-window encoders such as ModernBERT) built without data-dependent code.

Some encoders mix layer types: ModernBERT's local layers attend only to tokens at most
``config.sliding_window`` (= ``local_attention // 2``) positions away, its global layers (every
``global_attn_every_n_layers``-th) attend to every token. transformers builds one mask per layer type
with ``masking_utils`` from the 2-D ``attention_mask``, using data-dependent checks that fail under
``torch.func.vmap``. A single prepared 4-D padding mask would be used by *every* layer and silently
drop the sliding window, so these models get their masks per layer type instead:

- the classifier's forward keeps the 2-D 0/1 ``attention_mask`` (so pooling that reads it, e.g.
  ModernBERT's ``classifier_pooling="mean"``, sees the padding mask it expects), and
- :func:`per_layer_mask_hook`, active inside :func:`captum_ntk.integrations.huggingface.vmap_safe`,
  replaces the ``attention_mask`` the *base* model receives by the mapping ``{layer type: additive
  4-D mask}`` that these base models accept as already prepared, computed with plain arithmetic:
  ``full_attention`` masks padded keys, ``sliding_attention`` also masks keys farther than the
  window (``|q - k| > sliding_window``, the rule of ``masking_utils``' bidirectional sliding window).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

#: layer types whose masks :func:`layer_masks` knows how to build
KNOWN_LAYER_TYPES = ("full_attention", "sliding_attention")


def uses_per_layer_masks(model: nn.Module) -> bool:
    r"""
    Whether ``model``'s base model builds one mask per layer type (bidirectional sliding window).

    Args:
        model (nn.Module): A Hugging Face ``PreTrainedModel``.

    Returns:
        per_layer (bool): True when the model's transformers module builds bidirectional
            sliding-window masks (ModernBERT and its relatives in transformers 5.x).
    """
    base = getattr(model, "base_model", model)
    for candidate in (base, model):
        module = sys.modules.get(type(candidate).__module__)
        if module is not None and "create_bidirectional_sliding_window_mask" in vars(module):
            return True
    # decoders whose layers mix sliding-window and full attention (Qwen2 with
    # use_sliding_window, Gemma 2 / 3): one mask per layer type, causal
    types = set(getattr(getattr(model, "config", None), "layer_types", None) or ())
    return len(types) > 1 and is_causal_model(model)


def is_causal_model(model: nn.Module) -> bool:
    """Whether ``model`` attends causally (a decoder: GPT-2, Llama, Qwen2, Mistral, ...)."""
    if getattr(getattr(model, "config", None), "is_decoder", False):
        return True
    return any(getattr(m, "is_causal", None) is True for m in model.modules())


def causal_additive_mask(
    padding_mask: Tensor, dtype: torch.dtype, sliding_window: int | None = None
) -> Tensor:
    r"""
    The (B, 1, T, T) additive mask of a causal decoder, built with vmap-safe arithmetic.

    Query ``q`` attends to key ``k`` when ``k <= q``, the key is a real token and (with a window)
    ``q - k < sliding_window`` (the rule of ``masking_utils``' causal sliding window). A padded
    query (right padding: after every real token) attends to all real tokens, so its row stays
    finite; its output is never pooled.

    Args:
        padding_mask (Tensor): 0/1 (or bool) mask of real tokens, shape (B, T).
        dtype (torch.dtype): Floating-point dtype of the attention scores.
        sliding_window (int, optional): attention window of sliding layers.
    """
    keep = (padding_mask != 0)[:, None, None, :]
    positions = torch.arange(padding_mask.shape[-1], device=padding_mask.device)
    allowed = positions[None, :] <= positions[:, None]
    if sliding_window is not None:
        allowed = allowed & (positions[:, None] - positions[None, :] < int(sliding_window))
    padded_query = (padding_mask == 0)[:, None, :, None]
    allowed = keep & (allowed | padded_query)
    return (1.0 - allowed.to(dtype)) * torch.finfo(dtype).min


def layer_types(model: nn.Module) -> tuple[str, ...]:
    r"""
    The attention layer types of a per-layer-mask model, checked against the ones supported.

    Args:
        model (nn.Module): A model for which :func:`uses_per_layer_masks` is True.

    Returns:
        types (tuple[str, ...]): ``config.layer_types`` (one entry per layer).

    Raises:
        ValueError: If the config has no ``layer_types``, no ``sliding_window`` while a layer
            slides, or a layer type other than ``full_attention`` / ``sliding_attention``.
    """
    config = model.config
    types = tuple(getattr(config, "layer_types", None) or ())
    name = type(model).__name__
    if not types:
        raise ValueError(f"{name}: config.layer_types is missing; cannot build per-layer masks")
    unknown = sorted(set(types) - set(KNOWN_LAYER_TYPES))
    if unknown:
        raise ValueError(
            f"{name} has attention layers of type {unknown}; only {list(KNOWN_LAYER_TYPES)} "
            "are supported under vmap"
        )
    if "sliding_attention" in types and not isinstance(
        getattr(config, "sliding_window", None), int
    ):
        raise ValueError(f"{name} has sliding-window layers but no integer config.sliding_window")
    return types


def layer_masks(
    padding_mask: Tensor,
    types: tuple[str, ...],
    sliding_window: int | None,
    dtype: torch.dtype,
    causal: bool = False,
) -> dict[str, Tensor]:
    r"""
    Additive attention masks per layer type, built with vmap-safe arithmetic.

    Args:
        padding_mask (Tensor): 0/1 (or bool) mask of real tokens, shape (B, T).
        types (tuple[str, ...]): Layer types present (``full_attention``, ``sliding_attention``).
        sliding_window (int, optional): Largest distance ``|q - k|`` a sliding layer attends to
            (for ``causal``: keys with ``q - k < sliding_window``, masking_utils' causal rule).
        dtype (torch.dtype): Floating-point dtype of the attention scores.
        causal (bool): a decoder's masks (:func:`causal_additive_mask`, (B, 1, T, T) each).

    Returns:
        masks (dict[str, Tensor]): ``full_attention``: (B, 1, 1, T); ``sliding_attention``:
            (B, 1, T, T); 0 where attended, ``torch.finfo(dtype).min`` elsewhere. Padded query
            positions attend to every real token in sliding layers (their rows are never read).
    """
    if causal:  # a decoder: causal masks, windowed for sliding layers (q - k < window)
        masks = {}
        if "full_attention" in types:
            masks["full_attention"] = causal_additive_mask(padding_mask, dtype)
        if "sliding_attention" in types:
            masks["sliding_attention"] = causal_additive_mask(
                padding_mask, dtype, int(sliding_window)
            )
        return masks
    keep = (padding_mask != 0)[:, None, None, :]
    lowest = torch.finfo(dtype).min
    masks = {}
    if "full_attention" in types:
        masks["full_attention"] = (1.0 - keep.to(dtype)) * lowest
    if "sliding_attention" in types:
        positions = torch.arange(padding_mask.shape[-1], device=padding_mask.device)
        near = (positions[:, None] - positions[None, :]).abs() <= int(sliding_window)
        # a padded query may lie farther than the window from every real token; it attends to
        # all real tokens instead of none, so its row stays finite (a softmax over keys that are
        # all masked gives NaN once scores are cast to float32, and NaN values leak through the
        # zero weights of later layers). Real queries never attend to padded keys either way.
        padded_query = (padding_mask == 0)[:, None, :, None]
        allowed = keep & (near | padded_query)
        masks["sliding_attention"] = (1.0 - allowed.to(dtype)) * lowest
    return masks


def _mask_dtype(base: nn.Module, kwargs: dict[str, Any]) -> torch.dtype:
    embeds = kwargs.get("inputs_embeds")
    if isinstance(embeds, Tensor) and embeds.is_floating_point():
        return embeds.dtype
    # attribute access sees the tensors substituted by torch.func.functional_call
    return base.get_input_embeddings().weight.dtype


@contextlib.contextmanager
def per_layer_mask_hook(model: nn.Module) -> Iterator[None]:
    r"""
    Makes the base model of ``model`` receive per-layer additive masks instead of a 2-D mask.

    A forward pre-hook on ``model.base_model`` turns the keyword ``attention_mask`` (B, T) (or
    its absence: every token real) into :func:`layer_masks`; masks that are already a mapping are
    left alone. The hook is removed on exit.

    Args:
        model (nn.Module): A model for which :func:`uses_per_layer_masks` is True.

    Yields:
        None
    """
    types = layer_types(model)
    window = getattr(model.config, "sliding_window", None)
    causal = is_causal_model(model)
    base = getattr(model, "base_model", model)

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
        mask = kwargs.get("attention_mask")
        if isinstance(mask, dict) or (isinstance(mask, Tensor) and mask.dim() != 2):
            return None
        if mask is None:
            tokens = kwargs.get("input_ids")
            tokens = tokens if tokens is not None else kwargs.get("inputs_embeds")
            if tokens is None:
                return None
            mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        masks = layer_masks(mask, types, window, _mask_dtype(module, kwargs), causal)
        return args, {**kwargs, "attention_mask": masks}

    handle = base.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
