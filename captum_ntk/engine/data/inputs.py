"""Model inputs in the three forms the library accepts, and their batching.

A model's inputs are given as

* a ``Tensor``: the model is called as ``model(x)``;
* a tuple (or list) of Tensors: positional arguments, ``model(*inputs)``;
* a ``Mapping`` of keyword Tensors (Hugging Face style): ``model(**inputs)``.

Dimension 0 of every tensor indexes examples. :class:`ModelInputs` holds one of these
forms behind one interface (slicing, moving, checking compatibility) so the engine
never has to ask which form it was given.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

InputsLike = Tensor | tuple | list | Mapping

#: Keys of a Mapping batch that are targets, not forward arguments (Captum/HF convention).
LABEL_KEYS = ("labels", "label")


@dataclass(frozen=True)
class ModelInputs:
    r"""Positional and keyword tensors for a model call, batched along dimension 0.

    Attributes:
        args (tuple[Tensor, ...]): positional forward arguments.
        kwargs (dict[str, Tensor]): keyword forward arguments.
    """

    args: tuple[Tensor, ...]
    kwargs: dict[str, Tensor]

    @classmethod
    def from_user(cls, inputs: Any, name: str = "inputs") -> ModelInputs:
        r"""Wraps user inputs (Tensor, tuple/list of Tensors or Mapping) and validates them.

        Args:
            inputs: the user's inputs.
            name (str): argument name used in error messages.

        Returns:
            ModelInputs: the wrapped inputs. ``labels`` keys of a Mapping are dropped.
        """
        if isinstance(inputs, ModelInputs):
            return inputs
        if isinstance(inputs, Tensor):
            obj = cls((inputs,), {})
        elif isinstance(inputs, Mapping):
            kwargs = {str(k): v for k, v in inputs.items() if k not in LABEL_KEYS}
            obj = cls((), kwargs)
        elif isinstance(inputs, (tuple, list)):
            obj = cls(tuple(inputs), {})
        else:
            raise TypeError(
                f"{name} must be a Tensor, a tuple of Tensors (positional forward arguments) or a "
                f"Mapping of keyword Tensors; got {type(inputs).__name__}."
            )
        tensors = obj.tensors()
        if not tensors:
            raise ValueError(f"{name} holds no tensors; pass at least one input tensor.")
        for key, t in zip(obj.keys(), tensors):
            if not isinstance(t, Tensor):
                raise TypeError(
                    f"{name}[{key!r}] is a {type(t).__name__}, not a Tensor; convert it with "
                    "torch.as_tensor first."
                )
            if t.dim() == 0:
                raise ValueError(
                    f"{name}[{key!r}] is a 0-d tensor; dimension 0 must index examples."
                )
        sizes = {t.shape[0] for t in tensors}
        if len(sizes) != 1:
            raise ValueError(
                f"{name}: all tensors must have the same number of examples (dimension 0); "
                f"got sizes {sorted(sizes)}."
            )
        if obj.num_examples == 0:
            raise ValueError(f"{name} is empty (0 examples); pass at least one example.")
        return obj

    # ------------------------------------------------------------------ structure
    def keys(self) -> list:
        """Positional indices followed by keyword names, in order."""
        return list(range(len(self.args))) + list(self.kwargs)

    def tensors(self) -> list[Tensor]:
        """All tensors, positional first."""
        return list(self.args) + list(self.kwargs.values())

    @property
    def num_examples(self) -> int:
        """Number of examples (size of dimension 0)."""
        return int(self.tensors()[0].shape[0])

    def __len__(self) -> int:
        return self.num_examples

    # ------------------------------------------------------------------ transforms
    def map(self, fn) -> ModelInputs:
        """Applies ``fn`` to every tensor and returns new inputs."""
        return ModelInputs(
            tuple(fn(a) for a in self.args), {k: fn(v) for k, v in self.kwargs.items()}
        )

    def slice(self, start: int, stop: int) -> ModelInputs:
        """Examples ``start:stop``."""
        return self.map(lambda t: t[start:stop])

    def to(
        self, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> ModelInputs:
        """Moves tensors to ``device``; casts floating-point tensors to ``dtype``."""

        def move(t: Tensor) -> Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return self.map(move)

    def blocks(self, batch_size: int) -> Iterator[tuple[int, ModelInputs]]:
        """Yields ``(start, block)`` pairs of at most ``batch_size`` examples."""
        n = self.num_examples
        for start in range(0, n, batch_size):
            yield start, self.slice(start, min(start + batch_size, n))

    # ------------------------------------------------------------------ checks
    def check_compatible(
        self, other: ModelInputs, names: tuple[str, str] = ("inputs1", "inputs2")
    ) -> None:
        r"""Raises a ValueError when ``other`` cannot be fed to the same model as ``self``.

        Both must have the same structure (number of positional tensors, keyword names),
        dtypes and per-example shapes. For keyword integer tensors of shape (N, T) in batches
        with an ``attention_mask`` (Hugging Face style) the sequence length T may differ,
        since padding is per batch.
        """
        a, b = names
        if len(self.args) != len(other.args) or set(self.kwargs) != set(other.kwargs):
            raise ValueError(
                f"{a} and {b} have different structures: {len(self.args)} vs {len(other.args)} "
                f"positional tensors, keys {sorted(self.kwargs)} vs {sorted(other.kwargs)}. "
                "Pass both in the same form."
            )
        for key in self.keys():
            t1 = self.args[key] if isinstance(key, int) else self.kwargs[key]
            t2 = other.args[key] if isinstance(key, int) else other.kwargs[key]
            if t1.dtype != t2.dtype:
                raise ValueError(
                    f"{a}[{key!r}] has dtype {t1.dtype} but {b}[{key!r}] has dtype {t2.dtype}; "
                    "cast them to the same dtype."
                )
            s1, s2 = tuple(t1.shape[1:]), tuple(t2.shape[1:])
            # padded token tensors of text batches may differ in length (trimmed per block)
            token_like = (
                isinstance(key, str)
                and "attention_mask" in self.kwargs
                and not t1.is_floating_point()
                and len(s1) == 1
            )
            if token_like:
                continue
            if s1 != s2:
                raise ValueError(
                    f"{a}[{key!r}] has per-example shape {s1} but {b}[{key!r}] has {s2}; "
                    "both must be inputs of the same model."
                )
