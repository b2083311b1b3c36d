r"""One protocol for the forms a block's features take.

Four forms travel through kernel assembly, stores and the attribution classes:

| form | made by | flat form (``FeatureMap.flatten``) |
|---|---|---|
| ``Tensor`` (B, ...) | dense / sparse projections; stores | itself |
| :class:`ParamBlocks` | Jacobians, summed gradients, layer activations | pieces concatenated |
| ``GramBlocks`` | the exact Gram engine | none (P numbers per example and logit) |
| ``KroneckerBlocks`` | the Kronecker projection (one-position layers in Gram form) | (B, C, D) |

Every form answers :func:`num_examples`, :func:`nbytes` and :func:`take` (examples
``start:stop``); the feature map that made it answers ``inner``, ``sq_norms``, ``flatten`` and
``unflatten``. Two forms meet in :meth:`FeatureMap.same_form`: features of one layout are
contracted as they are, anything else (a stored flat block against a freshly computed Gram-form
block, activation pieces against their stored concatenation) through the flat form, whose
inner products are the same kernel.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor


class FeatureBlock(Protocol):
    """What a structured feature block provides (``Tensor`` provides it natively)."""

    def __len__(self) -> int: ...

    def nbytes(self) -> int: ...

    def slice(self, start: int, stop: int) -> Any: ...


class ParamBlocks:
    r"""Per-parameter (or per-layer) pieces of the features of B examples, e.g. (B, C, p_i).

    Keeping the pieces avoids concatenating B x C x P numbers; inner products are sums over
    pieces.
    """

    def __init__(self, parts: list[Tensor]) -> None:
        self.parts = parts

    def __len__(self) -> int:
        return int(self.parts[0].shape[0])

    def numel(self) -> int:
        """Total number of values."""
        return sum(p.numel() for p in self.parts)

    def element_size(self) -> int:
        """Bytes per value."""
        return self.parts[0].element_size()

    def nbytes(self) -> int:
        """Bytes held."""
        return sum(p.numel() * p.element_size() for p in self.parts)

    def slice(self, start: int, stop: int) -> ParamBlocks:
        """Examples ``start:stop``."""
        return ParamBlocks([p[start:stop] for p in self.parts])

    def layout(self) -> tuple:
        """Shapes of the pieces beyond the example (and per-token) dimension."""
        return tuple(
            (p.dim(), tuple(p.shape[2:] if p.dim() == 3 else p.shape[1:])) for p in self.parts
        )


Features = Tensor | ParamBlocks | FeatureBlock


def num_examples(features: Features) -> int:
    """B, the examples of a block of features."""
    return int(features.shape[0]) if isinstance(features, Tensor) else len(features)


def nbytes(features: Features) -> int:
    """Bytes a block of features holds."""
    if isinstance(features, Tensor):
        return features.numel() * features.element_size()
    return features.nbytes()


def take(features: Features, start: int, stop: int) -> Features:
    """Examples ``start:stop`` of a block of features, in the same form."""
    if isinstance(features, Tensor):
        return features[start:stop]
    return features.slice(start, stop)


def same_layout(f1: Features, f2: Features) -> bool:
    """Whether two blocks can be contracted piece by piece (same form, same pieces)."""
    if type(f1) is not type(f2):
        return False
    if isinstance(f1, ParamBlocks):
        return f1.layout() == f2.layout()
    return True
