"""Which parameters a kernel differentiates with respect to, and which layers exist."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def _modules_with_parameters(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if name and any(True for _ in m.parameters())]


def resolve_modules(model: nn.Module, layers: Sequence[str] | str) -> list[str]:
    r"""Checks that every name in ``layers`` is a module of ``model``.

    Args:
        model (nn.Module): the model.
        layers (str or sequence of str): module names as in ``model.named_modules()``.

    Returns:
        list[str]: the names, in the given order.

    Raises:
        ValueError: naming the unknown layers and listing valid ones.
    """
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError("layers is empty; pass None for the default or at least one module name.")
    modules = dict(model.named_modules())
    unknown = [name for name in layers if name not in modules or name == ""]
    if unknown:
        valid = _modules_with_parameters(model)
        shown = ", ".join(valid[:40]) + (f", ... ({len(valid)} in all)" if len(valid) > 40 else "")
        raise ValueError(
            f"Unknown layer name(s) {unknown}. Valid names (from model.named_modules()) "
            f"include: {shown}."
        )
    return layers


def select_parameters(
    model: nn.Module, layers: Sequence[str] | str | None = None
) -> dict[str, nn.Parameter]:
    r"""The parameters a kernel is taken over, in ``model.named_parameters()`` order.

    Args:
        model (nn.Module): the model.
        layers (str or sequence of str, optional): module names (as in
                ``model.named_modules()``); every parameter of those modules (and their
                submodules) is selected, frozen ones included since the caller named them.
                Default: None, every parameter with ``requires_grad=True`` (frozen
                parameters are excluded).

    Returns:
        dict[str, nn.Parameter]: selected parameters, name -> parameter. Tied parameters
        appear once, under their first name. P = the sum of their ``numel()``.

    Raises:
        ValueError: unknown layer names, or nothing selected.
    """
    named = dict(model.named_parameters())
    if layers is None:
        selected = {n: p for n, p in named.items() if p.requires_grad}
        if not selected:
            raise ValueError(
                "The model has no parameter with requires_grad=True; pass layers=[...] to "
                "choose the parameters the kernel is taken over."
            )
        return selected
    names = resolve_modules(model, layers)
    chosen_ids: set[int] = set()
    for name in names:
        chosen_ids.update(id(p) for p in dict(model.named_modules())[name].parameters())
    selected = {n: p for n, p in named.items() if id(p) in chosen_ids}
    if not selected:
        raise ValueError(f"The layers {names} hold no parameters; choose layers with parameters.")
    return selected


def num_parameters(model: nn.Module, layers: Sequence[str] | str | None = None) -> int:
    """P: the number of scalar parameters a kernel over ``layers`` differentiates."""
    return sum(p.numel() for p in select_parameters(model, layers).values())
