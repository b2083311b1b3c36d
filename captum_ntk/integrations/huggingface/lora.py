r"""peft LoRA adapters merged into their base weights: the kernel over the adapters still.

``model.merge_adapter()`` folds ``W + s B A`` into each base weight and makes the forward pass
skip the adapters, so their gradients would be zero. The function is unchanged, so the kernel
over the adapters is still defined: while the engine runs the model, :func:`adapter_path` makes
each merged layer take its adapter path again (``merged_adapters`` emptied, restored on exit), and
:func:`unmerged_tensors` gives the engine's copy of each merged base weight its unmerged value
``W_merged - s B A`` (peft's ``get_delta_weight``). The user's model is never written to: only the
list ``merged_adapters`` is swapped for the duration of a forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import Tensor, nn

__all__ = ["adapter_path", "merged_lora_layers", "unmerged_tensors"]


def merged_lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every peft LoRA layer of ``model`` with merged adapters."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if hasattr(module, "lora_A") and getattr(module, "merged_adapters", None)
    ]


def unmerged_tensors(model: nn.Module, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    r"""``tensors`` (name -> tensor, names of ``model``) with every merged base weight unmerged.

    Args:
        model (nn.Module): the root model the names refer to.
        tensors (dict): the engine's copies of parameters and buffers (any subset).

    Returns:
        dict: a new dict; ``{layer}.base_layer.weight`` entries of merged layers hold
        ``W_merged - sum_a delta_a`` in their own dtype and device.
    """
    out = dict(tensors)
    for name, layer in merged_lora_layers(model):
        key = f"{name}.base_layer.weight" if name else "base_layer.weight"
        if key not in out:
            continue
        weight = out[key]
        for adapter in layer.merged_adapters:
            delta = layer.get_delta_weight(adapter).detach()
            weight = weight - delta.to(device=weight.device, dtype=weight.dtype)
        out[key] = weight
    return out


@contextlib.contextmanager
def adapter_path(model: nn.Module) -> Iterator[None]:
    """Merged LoRA layers run their adapter path (their ``merged_adapters`` emptied) inside."""
    saved = [(layer, list(layer.merged_adapters)) for _, layer in merged_lora_layers(model)]
    for layer, _ in saved:
        layer.merged_adapters.clear()
    try:
        yield
    finally:
        for layer, adapters in saved:
            layer.merged_adapters[:] = adapters
