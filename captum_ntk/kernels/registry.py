r"""The kernel registry: every kernel declared once.

A :class:`KernelSpec` holds what the rest of the library needs to know about a kernel: its name,
whether it is cosine-normalised, its output shape, whether it differentiates the model, whether it
is projected, how to build its feature map, and the name of its Captum-style attribution class.
:func:`captum_ntk.kernel_matrix`, the attribution classes, the CLI and the demo read it.

| kernel | feature of example i | inner product |
|---|---|---|
| entk | Jacobian J_i, (C, P) | J_i J_j^T, (C, C) |
| trntk0 / trntk | Jacobian J_i, (C, P) | sum_c <J_i^c, J_j^c> |
| pntk0 / pntk | g_i = grad sum_c F^c, (P,) | <g_i, g_j> / C |
| proj_trntk | S J_i^T / sqrt(K), (C, K) | sum_c <., .> |
| proj_pntk | S g_i / sqrt(K), (K,) | <., .> |
| ck | input of the last Linear called, (D,) | <., .> |
| embedding | concatenated layer outputs, (D,) | <., .> |
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..engine.activation_layers import CalledLeafOutputFeatures, LastLinearInputFeatures
from ..engine.features import (
    ActivationFeatures,
    FeatureMap,
    JacobianFeatures,
    ProjectedJacobianFeatures,
    ProjectedSummedGradientFeatures,
    SummedGradientFeatures,
)
from ..engine.model import ModelFunction
from ..engine.projection.dense import RandomProjection

#: Options a feature-map builder receives: (function, layers, projection or None).
Builder = Callable[[ModelFunction, "Sequence[str] | None", "RandomProjection | None"], FeatureMap]


@dataclass(frozen=True)
class KernelSpec:
    r"""One kernel's declaration.

    Attributes:
        name (str): the kernel's name (``kernel=`` argument).
        normalized (bool): cosine-normalised (unit diagonal).
        per_class (bool): output (N1, N2, C, C) rather than (N1, N2).
        differentiates (bool): built from parameter gradients (else from activations).
        projected (bool): uses a random projection (``projection_dim``, ``projection``, ``seed``).
        build (Builder): makes the feature map.
        attribution (str or None): name of the Captum-style attribution class, if any.
        description (str): one line for help texts.
        summed (bool): the gradients are those of the summed logits (pntk family), which the
                    Gram engine and the Kronecker projection need to know. Default: False.
    """

    name: str
    normalized: bool
    per_class: bool
    differentiates: bool
    projected: bool
    build: Builder
    attribution: str | None
    description: str
    summed: bool = False

    @property
    def exact_gradients(self) -> bool:
        """Exact parameter-gradient kernels: what the per-layer Gram engine computes."""
        return self.differentiates and not self.projected


def _as_list(layers: Sequence[str] | str) -> list[str]:
    return [layers] if isinstance(layers, str) else list(layers)


def _ck(function: ModelFunction, layers, projection) -> FeatureMap:
    if layers is None:  # the last nn.Linear called, found on the first block
        return LastLinearInputFeatures(function)
    names = _as_list(layers)
    if len(names) != 1:
        raise ValueError(f"The conjugate kernel takes one layer, got {names}.")
    return ActivationFeatures(function, names, "input")


def _embedding(function: ModelFunction, layers, projection) -> FeatureMap:
    if layers is None:  # called leaves with per-example outputs, found on the first block
        return CalledLeafOutputFeatures(function)
    return ActivationFeatures(function, _as_list(layers), "output")


KERNELS: dict[str, KernelSpec] = {
    spec.name: spec
    for spec in (
        KernelSpec("entk", False, True, True, False,
                   lambda f, layers, proj: JacobianFeatures(f, per_class=True), None,
                   "full empirical NTK <g^c_i, g^c'_j>, (N1, N2, C, C)"),
        KernelSpec("trntk", True, False, True, False,
                   lambda f, layers, proj: JacobianFeatures(f), "TrNTKAttribution",
                   "trace NTK, cosine-normalised (Eq. 5)"),
        KernelSpec("trntk0", False, False, True, False,
                   lambda f, layers, proj: JacobianFeatures(f), "TrNTK0Attribution",
                   "trace NTK sum_c <g^c_i, g^c_j> (unnormalised)"),
        KernelSpec("pntk", True, False, True, False,
                   lambda f, layers, proj: SummedGradientFeatures(f), "PNTKAttribution",
                   "pseudo-NTK, cosine-normalised", summed=True),
        KernelSpec("pntk0", False, False, True, False,
                   lambda f, layers, proj: SummedGradientFeatures(f), "PNTK0Attribution",
                   "pseudo-NTK <grad sum_c F^c_i, grad sum_c F^c_j> / C (unnormalised)",
                   summed=True),
        KernelSpec("proj_trntk", True, False, True, True,
                   lambda f, layers, proj: ProjectedJacobianFeatures(f, proj),
                   "ProjTrNTKAttribution", "projected trace NTK (Eq. 8)"),
        KernelSpec("proj_pntk", True, False, True, True,
                   lambda f, layers, proj: ProjectedSummedGradientFeatures(f, proj),
                   "ProjPNTKAttribution", "projected pseudo-NTK (Eq. 7)", summed=True),
        KernelSpec("ck", True, False, False, False, _ck, "ConjugateKernelAttribution",
                   "conjugate kernel: cosine Gram of the final embedding"),
        KernelSpec("embedding", True, False, False, False, _embedding,
                   "EmbeddingKernelAttribution", "embedding kernel over layer outputs"),
    )
}  # fmt: skip


def kernel_spec(kernel: str) -> KernelSpec:
    """The registered kernel ``kernel``; a ValueError lists the valid names otherwise."""
    try:
        return KERNELS[kernel]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown kernel {kernel!r}; choose one of {sorted(KERNELS)}.") from None


def kernel_names(*, attributable: bool = False) -> tuple[str, ...]:
    """Registered kernel names (only those with an attribution class if ``attributable``)."""
    return tuple(n for n, s in KERNELS.items() if s.attribution is not None or not attributable)
