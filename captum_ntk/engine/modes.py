r"""Train-mode checks: when a model has no per-example function, and running it in eval mode.

A model whose output is random (dropout in train mode) or depends on the other examples of its
batch (BatchNorm in train mode, BatchNorm without running statistics) has no per-example NTK.
:func:`check_mode` is the context every computation runs in (it refuses such a model, or evaluates
its eval-mode function with ``eval_mode=True``); :func:`refuse_batch_dependent` is the check of the
computations that run the model on whole blocks (the Gram engine, the Kronecker projection, the
analysis kernels).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

_DROPOUT_TYPES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


def stochastic_train_mode_modules(model: nn.Module) -> list[str]:
    r"""Names of modules whose train mode makes the model random or batch-dependent.

    BatchNorm in train mode normalises with batch statistics (and updates running stats
    in place), dropout in train mode is random: neither function has an NTK per example.
    """
    found = []
    for name, m in model.named_modules():
        if not m.training:
            continue
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None:
            continue  # reported by batch_statistics_modules: eval mode does not help
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            found.append(f"{name or '<root>'} ({type(m).__name__})")
        elif isinstance(m, _DROPOUT_TYPES) and m.p > 0:
            found.append(f"{name or '<root>'} ({type(m).__name__}, p={m.p})")
        elif isinstance(m, nn.MultiheadAttention) and m.dropout > 0:
            found.append(f"{name or '<root>'} (MultiheadAttention, dropout={m.dropout})")
    return found


def batch_statistics_modules(model: nn.Module) -> list[str]:
    """Names of BatchNorm modules without running statistics (batch-dependent even in eval)."""
    return [
        f"{name or '<root>'} ({type(m).__name__})"
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None
    ]


@contextlib.contextmanager
def eval_mode_of(model: nn.Module) -> Iterator[None]:
    """Puts ``model`` in eval mode and restores every module's ``training`` flag afterwards."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag


def refuse_batch_dependent(model: nn.Module, what: str) -> None:
    r"""Raises for a model that is random or batch-dependent as it is now (train-mode dropout
    or BatchNorm, BatchNorm without running statistics), for computations that run it on
    whole blocks (``what``: e.g. "The Gram engine")."""
    found = stochastic_train_mode_modules(model) + batch_statistics_modules(model)
    if found:
        raise RuntimeError(
            f"{what} runs the model on whole blocks, but these modules make the output random "
            f"or batch-dependent: {', '.join(found[:5])}. Call model.eval() (or pass "
            "eval_mode=True)."
        )


def check_mode(model: nn.Module, eval_mode: bool) -> contextlib.AbstractContextManager:
    r"""Refuses models whose train mode makes the function random or batch-dependent.

    Args:
        model (nn.Module): the model.
        eval_mode (bool): if True, evaluate the eval-mode function instead (the model's
                flags are restored afterwards).

    Returns:
        A context manager to run the computation in.
    """
    batch_stats = batch_statistics_modules(model)
    if batch_stats:
        raise RuntimeError(
            "BatchNorm without running statistics (track_running_stats=False) normalises with "
            "the batch's statistics even in eval mode, so the model has no per-example NTK: "
            + ", ".join(batch_stats[:5])
            + ". Use track_running_stats=True (and model.eval()) or another normalisation."
        )
    if eval_mode:
        return eval_mode_of(model)
    offending = stochastic_train_mode_modules(model)
    if offending:
        raise RuntimeError(
            "The model is in train mode with BatchNorm or dropout: "
            + ", ".join(offending[:5])
            + (" ..." if len(offending) > 5 else "")
            + ". Its output is random or depends on the batch, so it has no per-example NTK. "
            "Call model.eval() first, or pass eval_mode=True to compute the kernel of the "
            "eval-mode function (the model's flags are restored afterwards)."
        )
    return contextlib.nullcontext()
