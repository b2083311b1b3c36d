"""GPT-2's ``Conv1D`` (weight stored (in, out)) as a linear layer of the Gram engine (issue 19).

Every kernel of a model built from ``transformers.pytorch_utils.Conv1D`` layers equals the naive
per-example loop in float64, with the layers in Gram form and materialised, through the Gram
capture of the projected kernels (whose gradient pieces must be in the parameter's own (in, out)
layout), and through the Kronecker projection (which leaves them to the dense projection).
"""

from __future__ import annotations

import pytest
import reference as ref
import torch
from torch import Tensor, nn

import captum_ntk as cn
from captum_ntk.engine.data.inputs import ModelInputs
from captum_ntk.engine.gram import GramFeatures
from captum_ntk.engine.gram.rules import TransposedAffineRule
from captum_ntk.kernels import build_feature_map

Conv1D = pytest.importorskip("transformers.pytorch_utils").Conv1D
TOL = 1e-10


class GPT2Block(nn.Module):
    """GPT-2's MLP: c_fc (Conv1D 5 -> 8), gelu, c_proj (Conv1D 8 -> 5), over tokens; a head."""

    def __init__(self) -> None:
        super().__init__()
        self.c_fc = Conv1D(8, 5)
        self.c_proj = Conv1D(5, 8)
        self.ln = nn.LayerNorm(5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, 5)
        h = x + self.c_proj(nn.functional.gelu(self.c_fc(self.ln(x))))
        return self.head(h.mean(1))


def _model() -> nn.Module:
    model = GPT2Block().double().eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return model


def _inputs(n: int, seed: int, t: int = 4) -> Tensor:
    return torch.randn(n, t, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def assert_rel(actual: Tensor, expected: Tensor, tol: float = TOL) -> None:
    err = float((actual - expected).abs().max() / expected.abs().max())
    assert err < tol, f"relative error {err:.3g}"


@pytest.mark.parametrize("kernel", ["trntk0", "trntk", "entk", "pntk0"])
def test_conv1d_layers_are_covered_and_exact(kernel: str) -> None:
    model, x1, x2 = _model(), _inputs(4, 1), _inputs(3, 2)
    fmap = build_feature_map(model, kernel, engine="gram")
    assert isinstance(fmap, GramFeatures)
    fmap.plan(ModelInputs.from_user(x1))
    assert {"c_fc", "c_proj"} <= set(fmap.layer_forms())
    assert all(isinstance(r, TransposedAffineRule) for r in fmap.rules if r.name.startswith("c_"))
    expected = ref.ref_kernel(model, x1, x2, kernel=kernel)
    for use_gram in (True, False):
        for rule in fmap.rules:
            rule.use_gram = rule.gram_capable and use_gram
        f1, f2 = fmap(ModelInputs.from_user(x1)), fmap(ModelInputs.from_user(x2))
        value = fmap.inner(f1, f2)
        if kernel == "trntk":  # the feature map gives the unnormalised products
            value = value / torch.sqrt(fmap.sq_norms(f1)[:, None] * fmap.sq_norms(f2)[None, :])
        assert_rel(value, expected)
    assert_rel(cn.kernel_matrix(model, x1, x2, kernel=kernel, engine="gram"), expected)


@pytest.mark.parametrize("projection", ["rademacher", "kronecker"])
def test_conv1d_through_the_capture_and_the_kronecker_projection(projection: str) -> None:
    model, x1, x2 = _model(), _inputs(4, 3), _inputs(3, 4)
    options = {"projection_dim": 16, "seed": 2, "projection": projection}
    gram = cn.kernel_matrix(model, x1, x2, kernel="proj_trntk", engine="gram", **options)
    jac = cn.kernel_matrix(model, x1, x2, kernel="proj_trntk", engine="jacobian", **options)
    assert_rel(gram, jac, 1e-9)
    if projection == "rademacher":  # the capture's pieces are in the (in, out) layout
        expected = ref.ref_kernel(model, x1, x2, kernel="proj_trntk", projection_dim=16, seed=2)
        assert_rel(gram, expected)
