r"""Default layer choices for the activation kernels (``ck``, ``embedding``).

The conjugate kernel's default layer is the last ``nn.Linear`` *called* in a forward pass, found
with forward hooks on one example run through :class:`~captum_ntk.engine.model.ModelFunction` (so
model-family adapters, e.g. for Hugging Face inputs, apply). Registration order is not enough:
``XLMRobertaForSequenceClassification`` registers its ``classifier`` before its encoder, so the
last ``nn.Linear`` in ``named_modules()`` is an encoder layer.
"""

from __future__ import annotations

import contextlib

from torch import Tensor, nn

from .data.inputs import ModelInputs
from .feature_blocks import ParamBlocks
from .features import ActivationFeatures
from .model import ModelFunction, extract_logits

_CHOOSE = "pass layers=['<module name>'] to choose the layer whose input is the embedding"


def last_called_linear(function: ModelFunction, inputs: ModelInputs) -> str:
    r"""
    Name of the last ``nn.Linear`` called in the forward pass of one example.

    Args:
        function (ModelFunction): The model.
        inputs (ModelInputs): A block of examples; only the first one is run.

    Returns:
        name (str): The module name (as in ``model.named_modules()``).

    Raises:
        ValueError: If no ``nn.Linear`` is called, or the choice is ambiguous: the last one
            called runs more than once per forward pass (a shared layer), or its output does not
            have one value per logit (the logits are not computed from it).
    """
    names = {m: n for n, m in function.model.named_modules() if isinstance(m, nn.Linear)}
    if not names:
        raise ValueError(
            f"The conjugate kernel uses the input of the last nn.Linear layer, but the model has "
            f"none; {_CHOOSE}."
        )
    calls: list[tuple[str, object]] = []
    handles = [
        module.register_forward_hook(lambda _m, _a, out, name=name: calls.append((name, out)))
        for module, name in names.items()
    ]
    # only the model's own call counts (an adapter may first run checks, e.g. the HF vmap probe)
    handles.append(function.model.register_forward_pre_hook(lambda *_: calls.clear()))
    try:
        logits = function.batch_logits(inputs.slice(0, 1))
    finally:
        for handle in handles:
            handle.remove()
    if not calls:
        raise ValueError(f"No nn.Linear layer is called in the model's forward pass; {_CHOOSE}.")
    name, output = calls[-1]
    count = sum(1 for called, _ in calls if called == name)
    if count > 1:
        raise ValueError(
            f"The last nn.Linear called, {name!r}, runs {count} times per forward pass, so its "
            f"input is not one embedding; {_CHOOSE}."
        )
    if not isinstance(output, Tensor) or output.numel() != logits.numel():
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(
            f"The last nn.Linear called, {name!r}, outputs {shape} for one example but the model "
            f"has {logits.shape[-1]} logits, so the logits are not computed from it; {_CHOOSE}."
        )
    return name


class LastLinearInputFeatures(ActivationFeatures):
    r"""The conjugate kernel's default features: the input of the last ``nn.Linear`` called.

    The layer is found on the first block's first example (:func:`last_called_linear`).

    Args:
        function (ModelFunction): The model.
    """

    def __init__(self, function: ModelFunction) -> None:
        super().__init__(function, [], "input")

    def __call__(self, inputs: ModelInputs) -> ParamBlocks:
        if not self.layers:
            self.layers = [last_called_linear(self.function, inputs)]
        return super().__call__(inputs)


def leaf_layers_with_parameters(model: nn.Module) -> list[str]:
    """Names of leaf modules that own parameters (candidates for the embedding kernel)."""
    return [
        n
        for n, m in model.named_modules()
        if n and not list(m.children()) and any(True for _ in m.parameters(recurse=False))
    ]


def per_example_leaf_layers(function: ModelFunction, inputs: ModelInputs) -> list[str]:
    r"""
    The embedding kernel's default layers: parameterised leaf modules called with per-example output.

    A leaf whose output has no batch dimension (MPNet's relative-position bias embedding returns
    (T, T, heads) for the whole batch) describes no single example and is left out; so is a leaf
    the forward pass never calls (``nn.MultiheadAttention.out_proj``).

    Args:
        function (ModelFunction): The model.
        inputs (ModelInputs): A block of examples; the first two are run.

    Returns:
        names (list[str]): Module names in ``named_modules()`` order.

    Raises:
        ValueError: If no such layer exists.
    """
    modules = dict(function.model.named_modules())
    candidates = leaf_layers_with_parameters(function.model)
    probe = inputs.slice(0, min(2, inputs.num_examples))
    batch: dict[str, int] = {}

    def hook(_m: nn.Module, _a: tuple, out: object, name: str) -> None:
        with contextlib.suppress(TypeError):
            value = extract_logits(out)
            batch[name] = int(value.shape[0]) if value.dim() else -1  # the last call counts

    handles = [
        modules[n].register_forward_hook(lambda m, a, o, n=n: hook(m, a, o, n)) for n in candidates
    ]
    try:
        function.batch_logits(probe)
    finally:
        for handle in handles:
            handle.remove()
    names = [n for n in candidates if batch.get(n) == probe.num_examples]
    if not names:
        raise ValueError(
            "No parameterised leaf module has a per-example output in the forward pass; pass "
            "layers=[...] to choose the layers of the embedding kernel."
        )
    return names


class CalledLeafOutputFeatures(ActivationFeatures):
    r"""The embedding kernel's default features (:func:`per_example_leaf_layers`, found on the
    first block).

    Args:
        function (ModelFunction): The model.
    """

    def __init__(self, function: ModelFunction) -> None:
        super().__init__(function, [], "output")

    def __call__(self, inputs: ModelInputs) -> ParamBlocks:
        if not self.layers:
            self.layers = per_example_leaf_layers(self.function, inputs)
        return super().__call__(inputs)
