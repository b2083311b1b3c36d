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

import torch

from .packed_projection import PackedRademacherProjection
from .precision import check_precision
from .projection import RandomProjection
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


def check_projection(projection: str) -> str:
    """Returns ``projection`` if it is a known name, else raises a ValueError listing them."""
    if projection not in PROJECTION_KINDS:
        raise ValueError(
            f"Unknown projection {projection!r}; choose one of {tuple(PROJECTION_KINDS)}."
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
) -> RandomProjection | SparseProjection:
    r"""The K x P projection object for ``projection`` ("rademacher", "gaussian" or "sjlt").

    Args:
        projection (str): the projection's name.
        num_params (int): P.
        projection_dim (int): K.
        seed (int): the seed.
        device, dtype: compute device and dtype.
        cache_bytes (int): budget for a cached matrix (dense) or cached indices (sjlt).
        scratch_bytes (int, optional): budget for per-call scratch.
        precision (str): "fp32", "tf32" or "bf16" for the dense matmuls (see
                :mod:`captum_ntk.engine.precision`; the SJLT has no matmul).

    Returns:
        RandomProjection or SparseProjection: call it on (M, P) gradients (or pieces).
    """
    check_projection(projection)
    check_precision(precision, device)
    if projection == "kronecker":
        raise ValueError("The Kronecker projection is a feature map, not a K x P matrix.")
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
