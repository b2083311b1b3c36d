r"""Seeded random projections of per-example gradients (``projection=`` of projected kernels).

Modules: :mod:`.kinds` (the registry of projection names, :func:`make_projection`),
:mod:`.dense` (i.i.d. Rademacher / Gaussian matrices generated blockwise from the seed),
:mod:`.packed` (the Rademacher signs bit-packed), :mod:`.sjlt` (sparse JL transform),
:mod:`.hashing` (the counter-based hash every matrix entry comes from, so a matrix is the same on
every device and for every block size), :mod:`.precision` (fp32 / tf32 / bf16 matmul arithmetic
and the exact-float32 context) and the fused CUDA kernels :mod:`.triton_dense`,
:mod:`.triton_sjlt`. A user projector plugs in through :func:`register_projection`.
"""

from .dense import RandomProjection, default_projection_dim, projection_matrix
from .kinds import PROJECTION_KINDS, check_projection, make_projection, register_projection

__all__ = [
    "PROJECTION_KINDS",
    "RandomProjection",
    "check_projection",
    "default_projection_dim",
    "make_projection",
    "projection_matrix",
    "register_projection",
]
