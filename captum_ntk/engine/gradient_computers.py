r"""Where per-example gradients come from: the gradient computers behind ``engine=``.

| ``engine`` | exact kernels (entk, trntk0, trntk, pntk0, pntk) | projected kernels |
|---|---|---|
| ``"auto"`` | the per-layer Gram engine | ``torch.func`` (vmap over examples) |
| ``"jacobian"`` | ``torch.func`` Jacobians | ``torch.func`` |
| ``"gram"`` | the per-layer Gram engine | the Gram capture (batched passes) |
| a registered name | your computer's Jacobians | your computer's gradients, projected |

TRAK composes a gradient computer, a projector, a saver and a scorer. Here a gradient computer
registered with :func:`register_gradient_computer` serves every gradient kernel and attribution
class by name, and a projector registered with
:func:`captum_ntk.engine.projection.register_projection` serves every projected one; the rest
(blockwise assembly, stores, normalisation, the kGLM) is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from torch import Tensor

from .data.inputs import ModelInputs
from .model import ModelFunction

#: The built-in values of ``engine``.
BUILTIN_ENGINES = ("auto", "jacobian", "gram")


class GradientComputer(Protocol):
    r"""Per-example derivatives of the logits for a block of examples.

    The model and its selected parameters are the :class:`ModelFunction` the factory receives
    (``function.model``, ``function.params`` in ``function.names`` order, ``function.prepare``
    for device, dtype and model-family input handling).
    """

    def jacobian(self, inputs: ModelInputs, classes: tuple[int, int] | None = None) -> list[Tensor]:
        """Pieces (B, C', p_i) in parameter order: rows of logits ``classes`` (default all)."""
        ...

    def summed_gradient(self, inputs: ModelInputs) -> list[Tensor]:
        """Pieces (B, p_i) of the gradient of the summed logits."""
        ...

    def activation_bytes(self, inputs: ModelInputs) -> int:
        """Bytes of intermediates one example's pass holds (sizes the passes)."""
        ...


#: factory(function, memory_limit) -> GradientComputer
GradientComputerFactory = Callable[[ModelFunction, int], GradientComputer]

_USER_COMPUTERS: dict[str, tuple[GradientComputerFactory, str]] = {}


def register_gradient_computer(
    name: str, factory: GradientComputerFactory, description: str
) -> None:
    r"""Makes ``engine=name`` compute per-example gradients with your code.

    Args:
        name (str): the engine name (not a built-in one).
        factory (callable): ``factory(function, memory_limit)`` returning a
                :class:`GradientComputer` for the model function (called once per feature map).
        description (str): one line for error messages.
    """
    if name in BUILTIN_ENGINES:
        raise ValueError(f"{name!r} is a built-in engine; register under another name.")
    if not callable(factory):
        raise TypeError("factory must be callable: factory(function, memory_limit).")
    _USER_COMPUTERS[name] = (factory, description)


def unregister_gradient_computer(name: str) -> None:
    """Removes an engine added by :func:`register_gradient_computer`."""
    if name not in _USER_COMPUTERS:
        raise ValueError(f"{name!r} was not registered with register_gradient_computer.")
    del _USER_COMPUTERS[name]


def engine_names() -> tuple[str, ...]:
    """Every valid ``engine=`` value: the built-in ones, then the registered ones."""
    return BUILTIN_ENGINES + tuple(_USER_COMPUTERS)


def is_user_engine(engine: str) -> bool:
    """Whether ``engine`` names a registered gradient computer."""
    return engine in _USER_COMPUTERS


def user_gradient_computer(engine: str, function: ModelFunction, memory_limit: int):
    """The registered computer ``engine`` for ``function``."""
    factory, _ = _USER_COMPUTERS[engine]
    return factory(function, memory_limit)
