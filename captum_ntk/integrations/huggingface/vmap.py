r"""
Hugging Face ``transformers`` support: make sequence classifiers safe for ``torch.func``.

The engine computes per-example Jacobians with ``vmap(jacrev(f))`` where ``f`` runs the model on one
example (the batch dimension removed by ``vmap`` and re-added with ``unsqueeze(0)``). Two things in
``transformers`` break under ``vmap``:

- **Mask construction.** transformers 5.x (and every model moved to ``transformers.masking_utils``)
  turns a 2-D ``attention_mask`` into an attention bias with data-dependent Python control flow
  (``mask.all()`` to skip the mask, ``bool(tensor)`` checks), which ``vmap`` refuses. The legacy path
  of transformers 4.x for SDPA (``_prepare_4d_attention_mask_for_sdpa``) does the same.
- **Attention kernels.** SDPA picks kernels with data-dependent checks and has no batching rules for
  its fused kernels, so ``vmap`` falls back to slow loops or fails.

Approach chosen: *eager attention plus a mask in the format the model passes through untouched.*

1. :func:`vmap_safe` (a context manager) switches the model to ``attn_implementation="eager"`` for the
   duration of the ``vmap`` call and restores the previous implementation afterwards. Models whose
   attention classes are fixed at construction (transformers 4.x) cannot be switched: they must be
   loaded with ``attn_implementation="eager"`` (:func:`load_sequence_classifier` does) and get a
   clear error otherwise.
2. :func:`prepare_inputs` is applied to the whole batch *before* ``vmap``. For models built on
   ``masking_utils`` it replaces the 2-D 0/1 ``attention_mask`` (B, T) by a 4-D additive float
   mask (B, 1, 1, T) in the model's dtype (0 for real tokens, ``finfo(dtype).min`` for padding). A
   4-D mask is returned as-is by ``masking_utils`` ("already prepared"), so no data-dependent code
   runs; ``vmap`` slices it to (1, 1, T) and ``unsqueeze(0)`` makes it (1, 1, 1, T) again. For
   legacy models (transformers 4.x BERT, RoBERTa, DistilBERT, ...) the 2-D mask is kept: with eager
   attention their ``get_extended_attention_mask`` is plain arithmetic and ``vmap``-safe, whereas a
   4-D mask is rejected (BERT) or silently misread (DistilBERT 4.x treats it as a 0/1 mask).
   The format is picked by :func:`attention_mask_format`, which looks at whether the model's
   ``transformers`` module uses ``masking_utils``. Models with a mask per layer type (ModernBERT's
   sliding-window layers) keep the 2-D mask and get per-layer masks from a pre-hook on their base
   model while :func:`vmap_safe` is active (see :mod:`.masks`).
3. :func:`check_vmap_compatibility` (run once per model, dtype and device by :func:`vmap_safe`)
   verifies the whole chain numerically: logits of synthetic examples (one longer than any
   attention window the config declares) computed under ``vmap``
   with padding must equal plain unpadded forward passes. Models whose masking we do not understand
   (custom mask code) fail loudly here instead of giving a wrong kernel. Causal decoders get a
   causal (B, 1, T, T) mask from :func:`prepare_inputs` (see :mod:`.masks`).

Rejected alternatives: patching ``masking_utils``/``_prepare_4d_attention_mask*`` inside a context
manager (private functions whose names and call sites change between releases, and modules bind
them at import time); forward pre-hooks that inject masks into attention layers (masks are passed
positionally in 4.x); keeping SDPA with a float mask (works on CPU in 5.x but ``vmap`` loops over its
fused kernels and the 4.x SDPA path has data-dependent mask code).

Padding: with the additive mask, a padded key gets probability exactly 0 after the softmax and padded
query rows never reach the classifier (which reads token 0 / the pooled first token), so logits and
Jacobians match the unpadded example up to floating-point reassociation (about 1e-15 relative in
float64). Right padding is assumed; :func:`trim_padding` moves left-padded rows to the right (position
ids of BERT-like models count from the first token, so left padding changes the function) and trims a
batch to its longest real sequence.

Tested with torch 2.13 (CPU) and transformers 4.40.2, 4.46.3, 4.57.1 (legacy 2-D path, eager) and
5.24.0 (4-D path), on all-MiniLM-L6-v2 (BERT), random BERT, DistilBERT and RoBERTa configurations:
``vmap(jacrev)`` Jacobians equal a per-example autograd loop on the unpadded examples to ~1e-14
relative in float64. Also on CUDA (H100, torch 2.11, transformers 5.17) for a MiniLM-shaped BERT;
there eager attention ran full-parameter Jacobians about 1.45x faster than SDPA under ``vmap``
(which falls back to per-example loops for its fused kernels).

This module imports ``transformers`` lazily and no other ``captum_ntk`` module, so the core library
works without it.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .common import is_hf_model
from .inputs import (
    _float_dtype,
    _max_sequence_length,
    _vocab_size,
    attention_mask_format,
    prepare_inputs,
)
from .masks import per_layer_mask_hook

# (model, dtype, device, mask format, attention implementation) combinations that passed the probe.
_VERIFIED: weakref.WeakKeyDictionary[nn.Module, set[tuple[Any, ...]]] = weakref.WeakKeyDictionary()


def _attn_configs(model: nn.Module) -> list[Any]:
    """Every config (and sub-config) of ``model`` and its sub-models, each once."""
    found: dict[int, Any] = {}
    stack = [m.config for m in model.modules() if hasattr(m, "config") and is_hf_model(m)]
    while stack:
        config = stack.pop()
        if config is None or id(config) in found:
            continue
        found[id(config)] = config
        for key in getattr(config, "sub_configs", None) or {}:
            stack.append(getattr(config, key, None))
    return list(found.values())


_MISSING = object()


@contextlib.contextmanager
def vmap_safe(model: nn.Module, check: bool = True) -> Iterator[nn.Module]:
    r"""
    Context manager in which ``model`` can be run under ``torch.func.vmap``/``jacrev``/``grad``.

    Inside the block the model uses eager attention; the previous attention implementation of the
    model and its sub-models is restored on exit (also on error). With ``check=True`` the first
    entry for a given model, dtype and device runs :func:`check_vmap_compatibility`, so models
    whose masking is not understood fail here with a clear message.

    Example::

        >>> batch = prepare_inputs(model, trim_padding(tokenizer(texts, padding=True,
        ...                                                      return_tensors="pt")))
        >>> def logits(params, example):
        ...     batched = {k: v.unsqueeze(0) for k, v in example.items()}
        ...     return torch.func.functional_call(model, params, kwargs=batched).logits[0]
        >>> with vmap_safe(model):
        ...     jac = torch.func.vmap(torch.func.jacrev(logits), in_dims=(None, 0))(params, batch)

    Args:
        model (nn.Module): A Hugging Face encoder in eval mode.
        check (bool, optional): Whether to run the numerical probe (cached per model, dtype,
            device). Default: True

    Yields:
        model (nn.Module): The same model object.

    Raises:
        TypeError: If ``model`` is not a Hugging Face ``PreTrainedModel``.
        ValueError: If the model is in training mode, is a decoder, or uses a non-eager attention
            implementation that cannot be switched at run time (transformers 4.x).
        RuntimeError: If the probe fails (see :func:`check_vmap_compatibility`).
    """
    if not is_hf_model(model):
        raise TypeError(f"vmap_safe expects a transformers PreTrainedModel, got {type(model)}")
    if model.training:
        raise ValueError(
            "the model is in training mode (dropout is random and has no NTK): call model.eval()"
        )
    config = model.config
    merged = [
        name
        for name, module in model.named_modules()
        if hasattr(module, "lora_A") and getattr(module, "merged", False)
    ]
    if merged:
        raise ValueError(
            f"LoRA adapters are merged into the base weights ({merged[0]}, ...): the adapter "
            "parameters no longer enter the forward pass, so their gradients would be zero. The "
            "kernel functions of captum_ntk handle this (they run merged layers on their "
            "adapter path with unmerged copies of the base weights); with vmap_safe alone, call "
            "model.unmerge_adapter() first."
        )
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"{type(model).__name__} is an encoder-decoder; only encoders (BERT, RoBERTa, "
            "DistilBERT, ...) and decoder classifiers (GPT-2, Llama, Qwen2, Mistral) are supported"
        )

    configs = _attn_configs(model)
    saved = [(c, getattr(c, "_attn_implementation_internal", _MISSING)) for c in configs]
    current = getattr(config, "_attn_implementation", "eager") or "eager"
    switched = False
    if current != "eager":
        can_switch = (
            attention_mask_format(model) in ("additive_4d", "per_layer")
            and hasattr(model, "set_attn_implementation")
            and getattr(type(model), "_can_set_attn_implementation", lambda: False)()
        )
        if can_switch:
            model.set_attn_implementation("eager")
            switched = True
        if not switched or getattr(config, "_attn_implementation", None) != "eager":
            _restore(saved)
            raise ValueError(
                f"{type(model).__name__} uses attn_implementation={current!r}, which is not "
                "vmap-safe and cannot be switched at run time with this transformers version; "
                "load the model with attn_implementation='eager' (e.g. "
                "captum_ntk.hf.load_sequence_classifier)"
            )
    masks = (
        per_layer_mask_hook(model)
        if attention_mask_format(model) == "per_layer"
        else contextlib.nullcontext()
    )
    try:
        with masks:
            if check:
                _probe_cached(model)
            yield model
    finally:
        if switched:
            _restore(saved)


def _restore(saved: list[tuple[Any, Any]]) -> None:
    for config, value in saved:
        if value is _MISSING:
            continue
        config._attn_implementation_internal = value


def _probe_key(model: nn.Module) -> tuple[Any, ...]:
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    return (
        _float_dtype(model),
        str(device),
        attention_mask_format(model),
        getattr(model.config, "_attn_implementation", None),
    )


def _probe_cached(model: nn.Module) -> None:
    key = _probe_key(model)
    done = _VERIFIED.setdefault(model, set())
    if key not in done:
        _probe(model)
        done.add(key)


def check_vmap_compatibility(model: nn.Module) -> None:
    r"""
    Verifies numerically that ``model`` gives padding-free logits under ``vmap``.

    Runs two synthetic token sequences (3 tokens, and 5 or, for models with local attention,
    more than the longest attention window in the config) padded together (by 2 more) through
    :func:`prepare_inputs` and ``torch.func.vmap`` inside :func:`vmap_safe`, and compares the logits
    with plain forward passes on each unpadded sequence. Costs three tiny forward passes.

    Args:
        model (nn.Module): A Hugging Face encoder in eval mode.

    Raises:
        RuntimeError: If the model fails under ``vmap`` or its padded logits differ from the
            unpadded ones (e.g. a causal model, or mask code this module does not know).
    """
    with vmap_safe(model, check=False):
        _probe(model)
        _VERIFIED.setdefault(model, set()).add(_probe_key(model))


def computes_in_float32(model: nn.Module) -> bool:
    r"""
    Whether ``model``'s transformers code runs parts of attention in float32 whatever the dtype.

    ModernBERT, for example, applies its rotary embedding to ``q.float()`` and takes the softmax
    with ``dtype=torch.float32``; a float64 model then agrees with itself only to about float32
    precision when shapes (padding) change.

    Args:
        model (nn.Module): A Hugging Face ``PreTrainedModel``.

    Returns:
        float32_inside (bool): True if the model module's ``eager_attention_forward`` or
            ``apply_rotary_pos_emb`` casts to float32.
    """
    module = sys.modules.get(type(getattr(model, "base_model", model)).__module__)
    for name in ("eager_attention_forward", "apply_rotary_pos_emb"):
        function = getattr(module, name, None)
        with contextlib.suppress(TypeError, OSError):
            source = inspect.getsource(function) if function is not None else ""
            if "torch.float32" in source or ".float()" in source:
                return True
    return False


#: config attributes that bound how far a token attends (local / sliding-window attention)
_WINDOW_KEYS = ("sliding_window", "local_attention", "attention_window")


def _probe_lengths(model: nn.Module) -> tuple[tuple[int, int], int]:
    """Probe lengths: a short sequence and one longer than any attention window the configs
    declare (so a mask that drops the window shows), padded by 2 (capped by the positions)."""
    windows = [5]
    for config in _attn_configs(model):
        for key in _WINDOW_KEYS:
            value = getattr(config, key, None)
            for window in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(window, int) and not isinstance(window, bool) and window > 0:
                    windows.append(window + 3)
    long = max(windows)
    limit = _max_sequence_length(model)
    if limit is not None:
        long = max(3, min(long, limit - 2))
    return (3, long), long + 2


def _probe(model: nn.Module) -> None:
    name = type(model).__name__
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = _float_dtype(model)
    vocab = _vocab_size(model) or 2
    pad_id = getattr(model.config, "pad_token_id", None)
    pad_id = pad_id if isinstance(pad_id, int) and 0 <= pad_id < vocab else 0
    candidates = [i for i in range(min(vocab, 16)) if i != pad_id] or [0]
    lengths, padded_len = _probe_lengths(model)
    rows, masks = [], []
    for n, length in enumerate(lengths):
        tokens = [candidates[(n + 3 * k) % len(candidates)] for k in range(length)]
        rows.append(tokens + [pad_id] * (padded_len - length))
        masks.append([1] * length + [0] * (padded_len - length))
    input_ids = torch.tensor(rows, device=device)
    attention_mask = torch.tensor(masks, device=device)

    def logits_of(output: Any) -> Tensor:
        logits = getattr(output, "logits", None)
        if not isinstance(logits, Tensor):
            raise TypeError(
                f"{name} returns {type(output).__name__} without `.logits`; use a "
                "classification model (AutoModelForSequenceClassification)"
            )
        return logits

    def one(example: Mapping[str, Tensor]) -> Tensor:
        return logits_of(model(**{k: v.unsqueeze(0) for k, v in example.items()}))[0]

    with torch.no_grad():
        references = [
            logits_of(model(input_ids=input_ids[i : i + 1, :length]))[0]
            for i, length in enumerate(lengths)
        ]
        batch = prepare_inputs(model, {"input_ids": input_ids, "attention_mask": attention_mask})
        try:
            batched = torch.func.vmap(one)(batch)
        except Exception as err:
            raise RuntimeError(
                f"{name} does not run under torch.func.vmap even with eager attention and "
                f"{attention_mask_format(model)} masks: {err}"
            ) from err
    tol = {torch.float64: 1e-9, torch.float32: 1e-4}.get(dtype, 2e-2)
    if dtype == torch.float64 and computes_in_float32(model):
        tol = 1e-5
    for i, reference in enumerate(references):
        scale = float(reference.abs().max()) + 1e-6
        error = float((batched[i] - reference).abs().max())
        if not error <= tol * scale:
            raise RuntimeError(
                f"{name}: logits of a padded example under vmap differ from the unpadded forward "
                f"(max abs error {error:.3g}); its attention masking (format "
                f"{attention_mask_format(model)!r}) is not supported. Only bidirectional "
                "BERT-like encoders are."
            )
