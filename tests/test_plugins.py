"""A user's own projector and gradient computer, plugged in by name (issue 17, layout).

``register_projection`` and ``register_gradient_computer`` make ``projection=`` / ``engine=``
names that every kernel, attribution class and store accepts, without editing
``kernels/matrix.py``. Checked against the float64 reference.
"""

from __future__ import annotations

import math

import models as M
import pytest
import reference as ref
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

import captum_ntk as cn
from captum_ntk.engine.autograd_loop import looped_jacobian
from captum_ntk.engine.gradient_computers import unregister_gradient_computer
from captum_ntk.engine.model import ModelFunction, _as_2d
from captum_ntk.engine.projection.kinds import unregister_projection

TOL = 1e-10


def assert_rel(actual: Tensor, expected: Tensor, tol: float = TOL) -> None:
    err = float((actual - expected).abs().max() / expected.abs().max())
    assert err < tol, f"relative error {err:.3g}"


class SeededGaussian:
    """A user projector: a seeded (P, K) Gaussian matrix."""

    def __init__(self, num_params: int, k: int, seed: int, *, device, dtype, **_) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.projection_dim = k
        self.matrix = torch.randn(num_params, k, generator=gen, dtype=torch.float64)
        self.matrix = self.matrix.to(device=device, dtype=dtype)

    def __call__(self, gradients) -> Tensor:
        rows = gradients if torch.is_tensor(gradients) else torch.cat(list(gradients), dim=1)
        return rows @ self.matrix / math.sqrt(self.projection_dim)


class LoopGradients:
    """A user gradient computer: one autograd pass per example and logit."""

    def __init__(self, function: ModelFunction, memory_limit: int) -> None:
        self.function = function
        self.calls = 0

    def _pieces(self, inputs, rows) -> list[Tensor]:
        self.calls += 1
        f = self.function
        inputs = f.prepare(inputs)

        def logits_of(params, i):
            part = inputs.slice(i, i + 1)
            return _as_2d(f._call(params, part.args, part.kwargs), 1)[0]

        return looped_jacobian(logits_of, f.params, inputs.num_examples, rows)

    def jacobian(self, inputs, classes=None) -> list[Tensor]:
        start, stop = classes if classes is not None else (None, None)
        return self._pieces(inputs, lambda out: out[start:stop])

    def summed_gradient(self, inputs) -> list[Tensor]:
        b = inputs.num_examples
        return [p.reshape(b, -1) for p in self._pieces(inputs, lambda out: out.sum()[None])]

    def activation_bytes(self, inputs) -> int:
        return self.function.activation_bytes(inputs)


@pytest.fixture
def seeded_gaussian():
    cn.register_projection("seeded_gaussian", SeededGaussian, "a user projector (test)")
    yield "seeded_gaussian"
    unregister_projection("seeded_gaussian")


@pytest.fixture
def loop_engine():
    made = []

    def factory(function, memory_limit):
        made.append(LoopGradients(function, memory_limit))
        return made[-1]

    cn.register_gradient_computer("loop", factory, "autograd loop (test)")
    yield "loop", made
    unregister_gradient_computer("loop")


def _reference_projected(model, x1, x2, kernel: str, seed: int, k: int) -> Tensor:
    names = ref.library_parameters(model)
    g1 = ref.ref_gradients(model, x1, names)
    g2 = ref.ref_gradients(model, x2, names)
    if kernel == "proj_pntk":
        g1, g2 = g1.sum(1, keepdim=True), g2.sum(1, keepdim=True)
    matrix = SeededGaussian(g1.shape[-1], k, seed, device="cpu", dtype=torch.float64).matrix
    f1 = (g1 @ matrix).reshape(len(g1), -1)
    f2 = (g2 @ matrix).reshape(len(g2), -1)
    return ref.cosine_gram(f1, f2)


@pytest.mark.parametrize("kernel", ["proj_trntk", "proj_pntk"])
def test_registered_projection_in_every_path(seeded_gaussian, tmp_path, kernel):
    model, x, xt = M.make_mlp(), M.mlp_inputs(6, seed=1), M.mlp_inputs(3, seed=2)
    options = {"projection": seeded_gaussian, "projection_dim": 8, "seed": 4}
    k = cn.kernel_matrix(model, xt, x, kernel=kernel, batch_size=2, **options)
    assert_rel(k, _reference_projected(model, xt, x, kernel, 4, 8))
    cls = cn.ProjTrNTKAttribution if kernel == "proj_trntk" else cn.ProjPNTKAttribution
    data = TensorDataset(x, torch.zeros(6, dtype=torch.long))
    stored = cls(model, data, batch_size=4, store=tmp_path / "s", **options)
    assert_rel(stored.influence(xt), k)
    assert "seeded_gaussian" in str((tmp_path / "s" / "metadata.json").read_text())


def test_registered_projection_with_a_wrong_dimension_is_refused(seeded_gaussian):
    class Wrong(SeededGaussian):
        def __init__(self, num_params, k, seed, **kw) -> None:
            super().__init__(num_params, k + 1, seed, **kw)

    cn.register_projection("wrong", Wrong, "wrong K")
    try:
        with pytest.raises(ValueError, match="projection_dim == 8"):
            cn.kernel_matrix(M.make_mlp(), M.mlp_inputs(2), kernel="proj_trntk",
                             projection="wrong", projection_dim=8)  # fmt: skip
    finally:
        unregister_projection("wrong")
    with pytest.raises(ValueError, match="built-in"):
        cn.register_projection("sjlt", SeededGaussian, "no")


@pytest.mark.parametrize("kernel", ["trntk", "entk", "pntk0", "proj_trntk"])
def test_registered_gradient_computer(loop_engine, kernel):
    name, made = loop_engine
    model, x1, x2 = M.make_cnn(), M.cnn_inputs(4, seed=1), M.cnn_inputs(3, seed=2)
    options = {"projection_dim": 16, "seed": 1} if kernel.startswith("proj") else {}
    k = cn.kernel_matrix(model, x1, x2, kernel=kernel, engine=name, batch_size=2, **options)
    expected = ref.ref_kernel(model, x1, x2, kernel=kernel, **options)
    assert_rel(k, expected)
    assert made and made[-1].calls > 0  # the user's computer did the work
    if kernel in ("trntk", "proj_trntk"):  # and through an attribution class
        cls = cn.TrNTKAttribution if kernel == "trntk" else cn.ProjTrNTKAttribution
        data = TensorDataset(x2, torch.zeros(3, dtype=torch.long))
        scores = cls(model, data, engine=name, batch_size=2, **options).influence(x1)
        assert_rel(scores, k)


def test_registered_gradient_computer_refusals(loop_engine):
    name, _ = loop_engine
    model, x = M.make_mlp(), M.mlp_inputs(3)
    with pytest.raises(ValueError, match="activation kernel"):
        cn.kernel_matrix(model, x, kernel="ck", engine=name)
    with pytest.raises(ValueError, match="kronecker"):
        cn.kernel_matrix(model, x, kernel="proj_trntk", engine=name, projection="kronecker",
                         projection_dim=8)  # fmt: skip
    with pytest.raises(ValueError, match="'loop'"):
        cn.kernel_matrix(model, x, kernel="trntk", engine="nope")
    with pytest.raises(ValueError, match="built-in"):
        cn.register_gradient_computer("gram", lambda f, m: f, "no")
