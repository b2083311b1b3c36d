r"""Surrogate models fitted to kernels: the kernel GLM (kGLM, Eq. 1)."""

from .kglm import KernelGLM

__all__ = ["KernelGLM"]
