r"""Kernels: the registry of kernel definitions, blockwise assembly and :func:`kernel_matrix`."""

from .matrix import auto_batch_size, build_feature_map, kernel_matrix
from .registry import KERNELS, KernelSpec, kernel_names, kernel_spec

__all__ = [
    "KERNELS",
    "KernelSpec",
    "auto_batch_size",
    "build_feature_map",
    "kernel_matrix",
    "kernel_names",
    "kernel_spec",
]
