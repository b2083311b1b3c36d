r"""Default layer choices for the activation kernels (``ck``, ``embedding``)."""

from __future__ import annotations

from torch import nn


def last_linear(model: nn.Module) -> str:
    """Name of the last ``nn.Linear`` in ``model.named_modules()`` order."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError(
            "The conjugate kernel uses the input of the last nn.Linear layer, but the model has "
            "none; pass layers=['<module name>'] to choose the layer whose input is the embedding."
        )
    return names[-1]


def leaf_layers_with_parameters(model: nn.Module) -> list[str]:
    """Names of leaf modules that own parameters (the embedding kernel's default layers)."""
    return [
        n
        for n, m in model.named_modules()
        if n and not list(m.children()) and any(True for _ in m.parameters(recurse=False))
    ]
