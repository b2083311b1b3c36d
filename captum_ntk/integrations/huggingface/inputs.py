r"""Token inputs of transformers models: validation, padding trimming, vmap-safe masks."""

from __future__ import annotations

import contextlib
import inspect
import sys
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ...engine.data.tokens import cut_per_token, is_per_token
from .common import _COMMON_KEYS, _DROPPED_KEYS, _TOKEN_ID_KEYS, MaskFormat
from .masks import causal_additive_mask, is_causal_model, layer_types, uses_per_layer_masks


def attention_mask_format(model: nn.Module) -> MaskFormat:
    r"""
    The attention-mask format that ``model`` accepts without data-dependent control flow.

    Args:
        model (nn.Module): A Hugging Face ``PreTrainedModel``.

    Returns:
        mask_format (str): ``"per_layer"`` for models whose layers use different masks (the
            bidirectional sliding-window layers of ModernBERT, see :mod:`.masks`): the 2-D mask
            is kept for the classifier and the base model gets one 4-D mask per layer type;
            ``"additive_4d"`` if the model builds its masks with ``transformers.masking_utils``
            (transformers 5.x and recent models), which returns a 4-D mask untouched;
            ``"binary_2d"`` for legacy models that turn a 2-D 0/1 mask into a bias with plain
            arithmetic (``get_extended_attention_mask`` and the like).
    """
    if uses_per_layer_masks(model):
        return "per_layer"
    base = getattr(model, "base_model", model)
    for candidate in (base, model):
        for cls in type(candidate).__mro__:
            module = sys.modules.get(cls.__module__)
            if module is None or not cls.__module__.startswith("transformers.models."):
                continue
            names = vars(module)
            if "create_bidirectional_mask" in names or "create_causal_mask" in names:
                return "additive_4d"
            break  # only the first transformers class of each MRO says how masks are built
    return "binary_2d"


def _sliding_window(model: nn.Module) -> int | None:
    """The attention window of a decoder with one layer type, if that type slides (Mistral),
    else None. (Decoders mixing sliding and full layers get per-layer masks instead, see
    :func:`.masks.uses_per_layer_masks`.)"""
    config = getattr(model, "config", None)
    window = getattr(config, "sliding_window", None)
    types = tuple(getattr(config, "layer_types", None) or ())
    if not isinstance(window, int) or isinstance(window, bool):
        return None
    if types and "sliding_attention" not in types:
        return None  # declared but unused (Qwen2 without use_sliding_window)
    return window


def _float_dtype(model: nn.Module) -> torch.dtype:
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def _forward_parameters(model: nn.Module) -> tuple[set[str], bool]:
    """Names of the forward's parameters and whether it takes **kwargs."""
    signature = inspect.signature(model.forward)
    names = {
        name
        for name, param in signature.parameters.items()
        if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
    }
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    return names, has_var_kw


def _max_sequence_length(model: nn.Module) -> int | None:
    """Longest sequence the position embeddings can index (None when there is no such limit)."""
    config = getattr(model, "config", None)
    for name, module in model.named_modules():
        if name.endswith("position_embeddings") and isinstance(module, nn.Embedding):
            # RoBERTa-style embeddings number positions from padding_idx + 1.
            offset = 0 if module.padding_idx is None else module.padding_idx + 1
            return module.num_embeddings - offset
    limit = getattr(config, "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) else None


def _vocab_size(model: nn.Module) -> int | None:
    get_embeddings = getattr(model, "get_input_embeddings", None)
    if callable(get_embeddings):
        with contextlib.suppress(Exception):
            embeddings = get_embeddings()
            if isinstance(embeddings, nn.Embedding):
                return embeddings.num_embeddings
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if isinstance(size, int) else None


def validate_inputs(model: nn.Module, inputs: Mapping[str, Any]) -> None:
    r"""
    Checks a batch of keyword inputs for a Hugging Face model and raises clear errors.

    Checks that the batch has ``input_ids`` (or ``inputs_embeds``), that every key is a forward
    argument of the model (a misspelt ``attention_mask`` would otherwise be swallowed by
    ``**kwargs`` and the padding silently attended), that token ids are integers in
    ``[0, vocab_size)``, that ``token_type_ids`` fit ``config.type_vocab_size``, that tensors share
    the batch and sequence dimensions, that a 2-D ``attention_mask`` holds only 0 and 1, and that no
    sequence is longer than the position embeddings allow (``config.max_position_embeddings``,
    less the padding offset for RoBERTa-style models). ``labels`` is allowed and ignored.

    Args:
        model (nn.Module): The Hugging Face model the batch is meant for.
        inputs (Mapping[str, Tensor]): Batch of keyword tensors with a leading batch dimension,
            e.g. a tokenizer's output (B, T) with ``return_tensors="pt"``.

    Raises:
        TypeError: If ``inputs`` is not a mapping of tensors or token ids are not integers.
        ValueError: For a missing or unexpected argument, mismatched shapes, out-of-range token
            ids, a non-binary mask or sequences that are too long.
    """
    if not isinstance(inputs, Mapping):
        raise TypeError(f"Hugging Face inputs must be a Mapping of tensors, got {type(inputs)}")
    model_name = type(model).__name__
    features = {k: v for k, v in inputs.items() if k not in _DROPPED_KEYS}
    for key, value in features.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"inputs[{key!r}] must be a torch.Tensor, got {type(value).__name__}")

    accepted, _ = _forward_parameters(model)
    if "input_ids" not in features and "inputs_embeds" not in features:
        raise ValueError(
            f"{model_name} needs `input_ids` (or `inputs_embeds`) but the batch has only "
            f"{sorted(features)}; pass the tokenizer's output, e.g. tokenizer(texts, "
            "padding=True, return_tensors='pt')"
        )
    unexpected = sorted(set(features) - accepted)
    if unexpected:
        raise ValueError(
            f"{model_name}.forward does not take {unexpected}; it accepts "
            f"{sorted(accepted & set(_COMMON_KEYS))} (remove the extra keys, e.g. "
            "`token_type_ids` for DistilBERT)"
        )

    reference_key = "input_ids" if "input_ids" in features else "inputs_embeds"
    reference = features[reference_key]
    if reference.dim() < 2:
        raise ValueError(
            f"inputs[{reference_key!r}] has shape {tuple(reference.shape)}; expected a batch "
            "(B, T): add a batch dimension with unsqueeze(0)"
        )
    batch_size, seq_len = reference.shape[:2]
    _check_token_ids(model, features, batch_size, seq_len)
    lengths = _check_attention_mask(model, features, batch_size, seq_len)
    _check_lengths(model, lengths, seq_len)


def _check_token_ids(
    model: nn.Module, features: Mapping[str, Tensor], batch_size: int, seq_len: int
) -> None:
    """Token-id tensors: integer dtype, (B, T) shape, ids within the model's vocabularies."""
    model_name = type(model).__name__
    for key in _TOKEN_ID_KEYS:
        if key not in features:
            continue
        ids = features[key]
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(
                f"inputs[{key!r}] must hold integer token ids (torch.long), got {ids.dtype}"
            )
        if tuple(ids.shape) != (batch_size, seq_len):
            raise ValueError(
                f"inputs[{key!r}] has shape {tuple(ids.shape)}, expected {(batch_size, seq_len)}"
            )
        if ids.numel() and int(ids.min()) < 0:
            raise ValueError(f"inputs[{key!r}] holds negative ids ({int(ids.min())})")

    config = getattr(model, "config", None)
    if "input_ids" in features and features["input_ids"].numel():
        vocab = _vocab_size(model)
        largest = int(features["input_ids"].max())
        if vocab is not None and largest >= vocab:
            raise ValueError(
                f"inputs['input_ids'] holds token id {largest} but {model_name} has a vocabulary "
                f"of {vocab}: the tokenizer does not match the model"
            )
    type_vocab = getattr(config, "type_vocab_size", None)
    if "token_type_ids" in features and features["token_type_ids"].numel() and type_vocab:
        largest = int(features["token_type_ids"].max())
        if largest >= type_vocab:
            raise ValueError(
                f"inputs['token_type_ids'] holds {largest} but config.type_vocab_size is {type_vocab}"
            )


def _check_attention_mask(
    model: nn.Module, features: Mapping[str, Tensor], batch_size: int, seq_len: int
) -> Tensor | None:
    """A 2-D 0/1 (B, T) or prepared 4-D mask; returns the (B,) real lengths of a 2-D mask."""
    config = getattr(model, "config", None)
    mask = features.get("attention_mask")
    lengths = None
    if mask is not None:
        if mask.dim() == 2:
            if tuple(mask.shape) != (batch_size, seq_len):
                raise ValueError(
                    f"inputs['attention_mask'] has shape {tuple(mask.shape)}, expected "
                    f"{(batch_size, seq_len)}"
                )
            if mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError("a 2-D attention_mask must hold only 0 (padding) and 1 (token)")
            lengths = mask.to(torch.long).sum(dim=1)
        elif mask.dim() != 4 or mask.shape[0] != batch_size or mask.shape[-1] != seq_len:
            raise ValueError(
                f"inputs['attention_mask'] has shape {tuple(mask.shape)}; expected (B, T) = "
                f"{(batch_size, seq_len)} (or an already prepared (B, 1, 1, T) mask)"
            )
    elif "input_ids" in features and features["input_ids"].numel():
        pad_id = getattr(config, "pad_token_id", None)
        if isinstance(pad_id, int) and bool((features["input_ids"][:, -1] == pad_id).any()):
            warnings.warn(
                "input_ids end with pad_token_id but no attention_mask was given: padded "
                "positions will be attended and change the kernel. Pass the tokenizer's "
                "attention_mask.",
                stacklevel=2,
            )
    return lengths


def _check_lengths(model: nn.Module, lengths: Tensor | None, seq_len: int) -> None:
    """No sequence (nor the padded batch) longer than the position embeddings allow."""
    model_name = type(model).__name__
    limit = _max_sequence_length(model)
    if limit is not None:
        longest = int(lengths.max()) if lengths is not None and lengths.numel() else seq_len
        if longest > limit:
            raise ValueError(
                f"a sequence has {longest} tokens but {model_name} supports at most {limit} "
                f"(config.max_position_embeddings); tokenize with truncation=True, "
                f"max_length={limit}"
            )
        if seq_len > limit:
            raise ValueError(
                f"the batch is padded to {seq_len} tokens but {model_name} supports at most "
                f"{limit}; call trim_padding(inputs) or pad to at most {limit}"
            )


def trim_padding(inputs: Mapping[str, Any]) -> dict[str, Any]:
    r"""
    Trims a padded batch to its longest real sequence, moving left padding to the right.

    Every tensor whose first two dimensions are the (B, T) of ``attention_mask`` (``input_ids``,
    ``token_type_ids``, ``inputs_embeds``, ...) is cut to (B, L) with L the largest number of
    real tokens in the batch, so each block is padded to its own longest sequence rather than to a
    global maximum. Left-padded rows are rotated so their tokens start at position 0 (BERT-like
    models number positions from the first slot, so left padding changes the function). Other
    entries (``labels``, ...) are returned as they are. Without ``attention_mask`` nothing is padded
    and the batch is returned unchanged (as a new dict).

    Args:
        inputs (Mapping[str, Tensor]): Batch with a 2-D 0/1 ``attention_mask`` (B, T). Apply this
            before :func:`prepare_inputs`.

    Returns:
        trimmed (dict[str, Tensor]): A new dict with the trimmed tensors.

    Raises:
        ValueError: If the mask is not 2-D, a row has no token, or a row's tokens are not
            contiguous (padding in the middle).
    """
    out = dict(inputs)
    mask = out.get("attention_mask")
    if mask is None:
        return out
    if not isinstance(mask, Tensor) or mask.dim() != 2:
        raise ValueError(
            "trim_padding needs the 2-D (B, T) attention_mask: call it before prepare_inputs"
        )
    batch_size, seq_len = mask.shape
    if batch_size == 0 or seq_len == 0:
        return out
    real = mask != 0
    lengths = real.sum(dim=1)
    if bool((lengths == 0).any()):
        empty = torch.nonzero(lengths == 0).flatten().tolist()
        raise ValueError(f"rows {empty} of the batch have no token (attention_mask all 0)")
    positions = torch.arange(seq_len, device=mask.device)
    # First real token of each row; tokens must then fill [start, start + length).
    start = torch.where(real, positions, seq_len).min(dim=1).values
    expected = (positions >= start[:, None]) & (positions < (start + lengths)[:, None])
    if not bool((expected == real).all()):
        bad = torch.nonzero((expected != real).any(dim=1)).flatten().tolist()
        raise ValueError(
            f"rows {bad} have padding between tokens; only right or left padding is supported"
        )

    if bool((start > 0).any()):
        index = (positions[None, :] + start[:, None]) % seq_len  # rotate each row left by start
        for key, value in out.items():
            if is_per_token(value, mask):
                row_index = index.to(value.device).view(
                    batch_size, seq_len, *([1] * (value.dim() - 2))
                )
                out[key] = torch.gather(value, 1, row_index.expand_as(value))
    return cut_per_token(out, mask, int(lengths.max()))


def prepare_inputs(
    model: nn.Module, inputs: Mapping[str, Any], dtype: torch.dtype | None = None
) -> dict[str, Any]:
    r"""
    Turns a tokenized batch into keyword arguments that are safe to ``vmap`` over examples.

    Apply it to the whole batch *before* ``vmap`` (after :func:`trim_padding`, after any dtype or
    device change of the model). Each per-example slice ``{k: v[i]}`` then runs as
    ``model(**{k: v.unsqueeze(0)})``. It validates the batch (:func:`validate_inputs`), drops
    ``labels`` (the kernel is of the logits) and, for models using ``transformers.masking_utils``,
    replaces the 2-D 0/1 ``attention_mask`` (B, T) by the additive float mask (B, 1, 1, T) in the
    model's dtype: 0 where attended, ``torch.finfo(dtype).min`` on padding. Legacy models keep the
    2-D mask, and so do models with a mask per layer type (ModernBERT's sliding-window layers):
    :func:`vmap_safe` builds their per-layer masks inside the base model (see
    :func:`attention_mask_format` and :mod:`.masks`).

    Args:
        model (nn.Module): The Hugging Face model.
        inputs (Mapping[str, Tensor]): Batch such as a tokenizer's output (``input_ids``,
            ``attention_mask``, ``token_type_ids``; ``labels`` allowed).
        dtype (torch.dtype, optional): Dtype the forward pass will run in, when it differs from
            the model's parameters (e.g. float64 parameters substituted with
            ``functional_call``). The additive mask must have this dtype: eager attention adds it
            to the scores, and a wider mask would promote the whole computation.
            Default: the dtype of the model's first floating-point parameter.

    Returns:
        prepared (dict[str, Tensor]): A new dict, every value with the batch as dimension 0.
    """
    validate_inputs(model, inputs)
    out = {k: v for k, v in inputs.items() if k not in _DROPPED_KEYS}
    mask = out.get("attention_mask")
    if mask is None:
        return out
    mask_format = attention_mask_format(model)
    if mask_format == "per_layer":
        layer_types(model)  # refuses layer types whose masks are unknown
        if mask.dim() != 2:
            raise ValueError(
                f"{type(model).__name__} uses a different mask per layer type (sliding window); "
                "pass the 2-D (B, T) attention_mask instead of a prepared one"
            )
        return out
    if mask.dim() == 4:
        if mask_format != "additive_4d":
            raise ValueError(
                f"{type(model).__name__} builds its masks with the legacy 2-D path; pass the 2-D "
                "(B, T) attention_mask instead of a 4-D one"
            )
        return out
    if mask_format == "additive_4d":
        dtype = dtype if dtype is not None else _float_dtype(model)
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        if is_causal_model(model):  # a decoder: causal and padding in one (B, 1, T, T) mask
            out["attention_mask"] = causal_additive_mask(mask, dtype, _sliding_window(model))
            return out
        keep = mask[:, None, None, :].to(dtype=dtype)
        out["attention_mask"] = (1.0 - keep) * torch.finfo(dtype).min
    return out
