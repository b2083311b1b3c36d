r"""The projections of projected kernels (``projection=`` of ``kernel_matrix``), in one place.

| projection | matrix | estimator | cost per gradient row |
|---|---|---|---|
| ``rademacher`` | K x P, i.i.d. +-1 / sqrt(K) | the paper's proj-trNTK / proj-pNTK (Eq. 7, 8) | K P multiply-adds |
| ``gaussian`` | K x P, i.i.d. N(0, 1) / sqrt(K) | the paper's | K P multiply-adds |
| ``sjlt`` | K x P, s nonzeros +-1/sqrt(s) per column | sparse JL: unbiased, not i.i.d. | s P additions |
| ``kronecker`` | per layer P_out (x) P_in | Kronecker variant: unbiased, more variance | per layer, no gradient formed |

Every matrix is a pure function of (seed, parameter layout, K) (and s for ``sjlt``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor

from .dense import RandomProjection
from .packed import PackedRademacherProjection
from .precision import check_precision
from .sjlt import DEFAULT_NONZEROS, SparseProjection

#: Projection name -> one-line description.
PROJECTION_KINDS: dict[str, str] = {
    "rademacher": "dense i.i.d. +-1 entries (the paper's projection)",
    "gaussian": "dense i.i.d. N(0, 1) entries (the paper's projection)",
    "sjlt": f"sparse JL transform, s={DEFAULT_NONZEROS} nonzeros +-1/sqrt(s) per column",
    "kronecker": "per-layer Kronecker factors P_out (x) P_in (a different, unbiased estimator)",
}

#: Projections applied to (flattened) gradients by a matrix object.
MATRIX_PROJECTIONS = ("rademacher", "gaussian", "sjlt")


class Projector(Protocol):
    r"""What a projection object provides (the built-in ones and user ones alike).

    ``projector(gradients)`` maps M gradient rows, given as one (M, P) tensor or as pieces
    (M, p_i) in parameter order, to (M, K) features whose inner products estimate the
    gradients' inner products; ``projection_dim`` is K. It must be a pure function of its
    construction arguments (seed included): stores and the attribution classes rely on the
    same projector giving the same features for the same gradients in every call.
    """

    projection_dim: int

    def __call__(self, gradients: Tensor | Sequence[Tensor]) -> Tensor: ...


#: factory(num_params, projection_dim, seed, *, device, dtype, cache_bytes, scratch_bytes,
#: precision) -> Projector
ProjectorFactory = Callable[..., Projector]

#: User projections registered with :func:`register_projection`: name -> factory.
_USER_PROJECTIONS: dict[str, ProjectorFactory] = {}


def register_projection(name: str, factory: ProjectorFactory, description: str) -> None:
    r"""Makes ``projection=name`` use your projector in every projected kernel and class.

    TRAK composes a gradient computer, a projector, a saver and a scorer; here the projector
    slots in by name, so ``kernel_matrix``, the attribution classes, stores and the CLI take it
    like the built-in names (a store records the name, the seed and K).

    Args:
        name (str): the name (not one of the built-in names).
        factory (callable): ``factory(num_params, projection_dim, seed, *, device, dtype,
                cache_bytes, scratch_bytes, precision)`` returning a :class:`Projector`.
        description (str): one line for error messages and ``captum-ntk`` listings.

    Example::

        >>> class Mine:
        ...     def __init__(self, num_params, k, seed, *, device, dtype, **_):
        ...         g = torch.Generator().manual_seed(seed)
        ...         self.projection_dim = k
        ...         self.matrix = torch.randn(num_params, k, generator=g, dtype=dtype).to(device)
        ...     def __call__(self, gradients):
        ...         rows = gradients if torch.is_tensor(gradients) else torch.cat(list(gradients), 1)
        ...         return rows @ self.matrix / self.projection_dim**0.5
        >>> captum_ntk.register_projection("mine", Mine, "my Gaussian projection")
        >>> captum_ntk.kernel_matrix(model, x, kernel="proj_trntk", projection="mine")
    """
    if name in MATRIX_PROJECTIONS or name == "kronecker":
        raise ValueError(f"{name!r} is a built-in projection; register under another name.")
    if not callable(factory):
        raise TypeError("factory must be callable: factory(num_params, projection_dim, seed, ...).")
    _USER_PROJECTIONS[name] = factory
    PROJECTION_KINDS[name] = description


def unregister_projection(name: str) -> None:
    """Removes a projection added by :func:`register_projection`."""
    if name not in _USER_PROJECTIONS:
        raise ValueError(f"{name!r} was not registered with register_projection.")
    del _USER_PROJECTIONS[name]
    del PROJECTION_KINDS[name]


def check_projection(projection: str) -> str:
    """Returns ``projection`` if it is a known name, else raises a ValueError listing them."""
    if not isinstance(projection, str) or projection not in PROJECTION_KINDS:
        raise ValueError(
            f"Unknown projection {projection!r}; choose one of {tuple(PROJECTION_KINDS)} or add "
            "yours with captum_ntk.register_projection(name, factory, description)."
        )
    return projection


def make_projection(
    projection: str,
    num_params: int,
    projection_dim: int,
    seed: int,
    *,
    device: torch.device | str,
    dtype: torch.dtype,
    cache_bytes: int,
    scratch_bytes: int | None,
    precision: str = "fp32",
) -> Projector:
    r"""The K x P projection object for ``projection`` ("rademacher", "gaussian", "sjlt" or a
    name added with :func:`register_projection`).

    Args:
        projection (str): the projection's name.
        num_params (int): P.
        projection_dim (int): K.
        seed (int): the seed.
        device, dtype: compute device and dtype.
        cache_bytes (int): budget for a cached matrix (dense) or cached indices (sjlt).
        scratch_bytes (int, optional): budget for per-call scratch.
        precision (str): "fp32", "tf32" or "bf16" for the dense matmuls (see
                :mod:`captum_ntk.engine.projection.precision`; the SJLT has no matmul).

    Returns:
        RandomProjection or SparseProjection: call it on (M, P) gradients (or pieces).
    """
    check_projection(projection)
    check_precision(precision, device)
    if projection == "kronecker":
        raise ValueError("The Kronecker projection is a feature map, not a K x P matrix.")
    if projection in _USER_PROJECTIONS:
        projector = _USER_PROJECTIONS[projection](
            num_params, projection_dim, seed, device=device, dtype=dtype,
            cache_bytes=cache_bytes, scratch_bytes=scratch_bytes, precision=precision,
        )  # fmt: skip
        if int(getattr(projector, "projection_dim", -1)) != projection_dim:
            raise ValueError(
                f"The projector registered as {projection!r} must have projection_dim == "
                f"{projection_dim} (the K it was asked for)."
            )
        return projector
    if projection == "sjlt":
        return SparseProjection(
            num_params, projection_dim, DEFAULT_NONZEROS, seed, device, dtype,
            cache_bytes=cache_bytes, scratch_bytes=scratch_bytes,
        )  # fmt: skip
    if projection == "rademacher":  # signs cached bit-packed when the float matrix does not fit
        proj: RandomProjection = PackedRademacherProjection(
            num_params, projection_dim, seed, device, dtype,
            cache_bytes=cache_bytes, scratch_bytes=scratch_bytes,
        )  # fmt: skip
    else:
        proj = RandomProjection(
            num_params, projection_dim, projection, seed, device, dtype,
            cache_bytes=cache_bytes, scratch_bytes=scratch_bytes,
        )  # fmt: skip
    proj.precision = precision
    return proj
