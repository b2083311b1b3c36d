r"""One Captum-style attribution class per kernel of the registry that has one."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..engine.modes import check_mode
from ..kernels.assembly import FeatureCache
from ..kernels.registry import KERNELS
from .base import NTKAttribution
from .state import current_model_state


class _ProjectedMixin:
    """``compute_intermediate_quantities`` for projected kernels."""

    @current_model_state
    def compute_intermediate_quantities(
        self, inputs: Any, normalize: bool = True, show_progress: bool = False
    ) -> Tensor:
        r"""Projected features whose inner products give the kernel.

        Args:
            inputs: a batch (or DataLoader) in the training convention.
            normalize (bool): unit-normalise rows so products equal :meth:`influence`
                    (zero rows stay zero); False gives the unnormalised features: products
                    sum_c <S g^c_i, S g^c_j> / K (proj-trNTK) or <S sum_c g^c_i, S sum_c g^c_j> / K
                    (proj-pNTK; C times the projected pNTK0, which has a 1/C).
            show_progress (bool): progress bar.

        Returns:
            Tensor: (n, C*K) for proj-trNTK, (n, K) for proj-pNTK, on the CPU, of the model's
            current parameters.
        """
        x = self._test_inputs(inputs)  # type: ignore[attr-defined]
        cache = FeatureCache(self.feature_map, x, self.block_size)  # type: ignore[attr-defined]
        with check_mode(self.model, self.eval_mode):  # type: ignore[attr-defined]
            blocks = [cache.get(s) for s in cache.starts]
        flat = [self.feature_map.flatten(b) for b in blocks]  # type: ignore[attr-defined]
        feats = torch.cat([f.reshape(f.shape[0], -1).cpu() for f in flat])
        if normalize:
            norms = feats.norm(dim=1, keepdim=True)
            feats = torch.where(norms > 0, feats / norms.clamp_min(1e-300), feats)
        return feats


class TrNTKAttribution(NTKAttribution):
    """Trace-NTK (Eq. 5): cosine-normalised sum over logits of gradient inner products."""

    kernel = "trntk"


class TrNTK0Attribution(NTKAttribution):
    """Unnormalised trace-NTK: sum over logits of gradient inner products."""

    kernel = "trntk0"


class PNTKAttribution(NTKAttribution):
    """Pseudo-NTK (Eq. 6), cosine-normalised: gradients of the summed logits."""

    kernel = "pntk"


class PNTK0Attribution(NTKAttribution):
    """Unnormalised pseudo-NTK: (1/C) <grad sum_c F^c(x), grad sum_c F^c(x')>."""

    kernel = "pntk0"


class ProjTrNTKAttribution(_ProjectedMixin, NTKAttribution):
    """Projected trace-NTK (Eq. 8). Options: projection_dim, projection, seed."""

    kernel = "proj_trntk"


class ProjPNTKAttribution(_ProjectedMixin, NTKAttribution):
    """Projected pseudo-NTK (Eq. 7). Options: projection_dim, projection, seed."""

    kernel = "proj_pntk"


class ConjugateKernelAttribution(NTKAttribution):
    """Conjugate kernel: cosine Gram of the final embedding (input of the last Linear)."""

    kernel = "ck"


class EmbeddingKernelAttribution(NTKAttribution):
    """Embedding kernel: normalised sum over layers of activation inner products."""

    kernel = "embedding"


#: Attribution class for every kernel name that has one (read from the registry).
ATTRIBUTION_CLASSES: dict[str, type[NTKAttribution]] = {
    name: globals()[spec.attribution] for name, spec in KERNELS.items() if spec.attribution
}
