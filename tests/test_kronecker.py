"""The Kronecker-factored per-layer projection (projection="kronecker")."""

from __future__ import annotations

import math

import pytest
import torch
from models import cnn_inputs, make_cnn, make_mlp, mlp_inputs
from reference import library_parameters, ref_gradients

from captum_ntk.engine.data.inputs import ModelInputs
from captum_ntk.engine.kronecker import KroneckerFeatures, factor_dims, split_dims
from captum_ntk.engine.model import ModelFunction
from captum_ntk.engine.projection.dense import projection_matrix

#: (weight, bias) of the covered layers of the test CNN, in module order; bn1 is the rest
CNN_LAYERS = [("conv1.weight", "conv1.bias"), ("fc.weight", "fc.bias")]
CNN_REST = ["bn1.weight", "bn1.bias"]


def _segments(model, grads: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference gradient (N, C, P) cut into per-parameter pieces (N, C, p_i)."""
    sizes = dict((n, p.numel()) for n, p in model.named_parameters())
    out, start = {}, 0
    for name in library_parameters(model):
        out[name] = grads[..., start : start + sizes[name]]
        start += sizes[name]
    return out


def _explicit_features(fmap: KroneckerFeatures, model, grads: torch.Tensor) -> torch.Tensor:
    """(P_out kron P_in) applied to each layer's explicit [W | b] gradient, then the rest."""
    seg = _segments(model, grads)
    n, c = grads.shape[:2]
    blocks = []
    for layer, (w, b) in zip(fmap.layers, CNN_LAYERS):
        full = torch.cat([seg[w].reshape(n, c, layer.d_out, -1), seg[b][..., None]], dim=-1)
        matrix = torch.kron(layer.p_out, layer.p_in)  # acts on the row-major [W | b]
        assert matrix.shape == (layer.dim, full[0, 0].numel())
        blocks.append(full.reshape(n, c, -1) @ matrix.T)
    rest = torch.cat([seg[name] for name in CNN_REST], dim=-1)
    if fmap.rest_projection is not None:
        k = fmap.rest_projection.projection_dim
        dense = projection_matrix(rest.shape[-1], k, seed=fmap.rest_projection.seed)
        rest = rest @ dense.T / math.sqrt(k)
    blocks.append(rest)
    return torch.cat(blocks, dim=-1)


@pytest.mark.parametrize("k", [40, 8])
def test_features_equal_explicit_kronecker_matrix_times_gradient(k: int) -> None:
    model, x = make_cnn(), cnn_inputs(5)
    fmap = KroneckerFeatures(ModelFunction(model), k, seed=3)
    feats = fmap(ModelInputs.from_user(x, "x"))
    assert set(fmap.not_covered) == {"bn1"}
    assert (fmap.rest_projection is None) == (k == 40)  # K=8: the 6 BN parameters get 2
    assert feats.shape == (5, 4, fmap.feature_dim) and fmap.feature_dim <= k
    grads = ref_gradients(model, x, library_parameters(model))
    explicit = _explicit_features(fmap, model, grads)
    assert float((feats - explicit).abs().max()) < 1e-12
    for layer in fmap.layers:  # Rademacher factors scaled to E[P^T P] = I
        for factor in (layer.p_in, layer.p_out):
            assert torch.equal(factor.abs() * math.sqrt(factor.shape[0]), torch.ones_like(factor))


def test_summed_features_equal_explicit_matrix_times_summed_gradient() -> None:
    model, x = make_cnn(), cnn_inputs(4)
    fmap = KroneckerFeatures(ModelFunction(model), 40, seed=1, summed=True)
    feats = fmap(ModelInputs.from_user(x, "x"))
    grads = ref_gradients(model, x, library_parameters(model)).sum(1, keepdim=True)
    explicit = _explicit_features(fmap, model, grads)[:, 0]
    assert feats.shape == explicit.shape
    assert float((feats - explicit).abs().max()) < 1e-12


def test_trace_kernel_is_unbiased_over_seeds() -> None:
    model, x = make_mlp(d_in=6, d_hidden=7, d_out=5), mlp_inputs(2)
    grads = ref_gradients(model, x, library_parameters(model))
    exact = float(torch.einsum("cp,cp->", grads[0], grads[1]))
    inputs = ModelInputs.from_user(x, "x")
    estimates = []
    for seed in range(300):
        feats = KroneckerFeatures(ModelFunction(model), 24, seed=seed)(inputs)
        estimates.append(float(torch.einsum("cd,cd->", feats[0], feats[1])))
    est = torch.tensor(estimates, dtype=torch.float64)
    standard_error = float(est.std()) / math.sqrt(len(estimates))
    assert standard_error > 0
    assert abs(float(est.mean()) - exact) < 4 * standard_error


def test_dimension_rule() -> None:
    assert split_dims(40, [30, 112, 6]) == [17, 17, 6]  # the capped unit's share is reused
    assert split_dims(10, [3, 3]) == [3, 3]  # never more than a unit's parameters
    assert split_dims(1024, [401_920, 262_656, 5_130]) == [342, 341, 341]
    assert sum(split_dims(7, [100, 100, 100])) == 7
    assert factor_dims(341, 513, 10) == (170, 2)  # aspect ratio follows d_in : d_out
    assert factor_dims(17, 28, 4) == (17, 1)
    assert factor_dims(100, 10, 10) == (10, 10)


def test_bad_projection_dim_is_refused() -> None:
    function = ModelFunction(make_mlp())
    with pytest.raises(ValueError, match="must be in"):
        KroneckerFeatures(function, function.num_params)


def test_kernel_matrix_and_attribution_with_kronecker() -> None:
    from reference import cosine_gram

    import captum_ntk as cn

    model, x1, x2 = make_cnn(), cnn_inputs(4), cnn_inputs(3, seed=9)
    fmap = KroneckerFeatures(ModelFunction(model), 40, seed=2)
    f1 = fmap(ModelInputs.from_user(x1, "x")).reshape(4, -1)
    f2 = fmap(ModelInputs.from_user(x2, "x")).reshape(3, -1)
    ref = cosine_gram(f1, f2)
    got = cn.kernel_matrix(
        model, x1, x2, kernel="proj_trntk", projection="kronecker", projection_dim=40, seed=2
    )
    assert float((got - ref).abs().max()) < 1e-12
    dataset = torch.utils.data.TensorDataset(x2, torch.zeros(3, dtype=torch.long))
    attr = cn.ProjTrNTKAttribution(
        model, dataset, projection="kronecker", projection_dim=40, seed=2, batch_size=2
    )
    scores = attr.influence((x1, torch.zeros(4, dtype=torch.long)))
    assert float((scores - ref).abs().max()) < 1e-12


def test_forward_mixing_examples_takes_the_dense_projection() -> None:
    """A model whose forward centres hidden units over the batch: no layer may be factored."""
    from torch import nn

    class Centred(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.out = nn.Linear(6, 5), nn.Linear(5, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(self.inp(x))
            return self.out(h - 0.5 * h.mean(dim=0, keepdim=True))

    torch.manual_seed(0)
    model = Centred().double().eval()
    x = mlp_inputs(4)
    fmap = KroneckerFeatures(ModelFunction(model), 20, seed=0)
    feats = fmap(ModelInputs.from_user(x, "x"))
    assert fmap.layers == [] and "depends on the other examples" in fmap.not_covered["out"]
    grads = ref_gradients(model, x, library_parameters(model))  # one example at a time
    k = fmap.rest_projection.projection_dim
    dense = projection_matrix(grads.shape[-1], k, seed=fmap.rest_projection.seed)
    assert float((feats - grads @ dense.T / math.sqrt(k)).abs().max()) < 1e-12
    late = KroneckerFeatures(ModelFunction(model), 20, seed=0)
    late.plan(ModelInputs.from_user(x[:1], "x"))
    with pytest.raises(RuntimeError, match="projection='rademacher'"):
        late(ModelInputs.from_user(x, "x"))


# --------------------------------------------------------------------------------------------------
# Gram form: one-position layers keep their projected factors, never the k_out x k_in features
# --------------------------------------------------------------------------------------------------
def _features_form(model, x, k: int, summed: bool) -> torch.Tensor:
    """Plain features (B, rows, D) from the features form (gram_form=False)."""
    fmap = KroneckerFeatures(ModelFunction(model), k, seed=4, summed=summed)
    feats = fmap(ModelInputs.from_user(x, "x"))
    return feats.reshape(len(x), -1)


@pytest.mark.parametrize("summed", [False, True])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_gram_form_kernel_equals_features_form(arch: str, summed: bool) -> None:
    from reference import cosine_gram

    import captum_ntk as cn
    from captum_ntk.engine.kronecker import KroneckerBlocks

    if arch == "mlp":
        model, x1, x2 = make_mlp(), mlp_inputs(5), mlp_inputs(4, seed=7)
    else:
        model, x1, x2 = make_cnn(), cnn_inputs(5), cnn_inputs(4, seed=7)
    k = 40
    fmap = KroneckerFeatures(ModelFunction(model), k, seed=4, summed=summed, gram_form=True)
    blocks = fmap(ModelInputs.from_user(x1, "x"))
    plain = _features_form(model, x1, k, summed)
    if arch == "mlp" or not summed:  # (the CNN's summed fc has k_out = 1: features are cheaper)
        assert isinstance(blocks, KroneckerBlocks)
        # the MLP's two Linear layers are one-position; the CNN's conv (T = 16) keeps features
        forms = [g for g, _ in blocks.layout][: len(fmap.layers)]
        assert forms == ([True, True] if arch == "mlp" else [False, True])
        assert torch.equal(fmap.flatten(blocks).reshape(len(x1), -1), plain)  # bit-identical
    else:
        assert torch.equal(blocks.reshape(len(x1), -1), plain)
    f2 = _features_form(model, x2, k, summed)
    ref = cosine_gram(plain, f2)
    kernel = "proj_pntk" if summed else "proj_trntk"
    opts = dict(kernel=kernel, projection="kronecker", projection_dim=k, seed=4)
    got = cn.kernel_matrix(model, x1, x2, **opts)
    assert float((got - ref).abs().max()) < 1e-12
    features_form = cn.kernel_matrix(model, x1, x2, engine="jacobian", **opts)
    assert float((features_form - ref).abs().max()) < 1e-12
    if isinstance(blocks, KroneckerBlocks):
        gram_bytes = fmap.example_bytes(ModelInputs.from_user(x1, "x"))
        assert gram_bytes == blocks.numel() * 8 // len(x1)  # what a block holds, per example
        plain_fmap = KroneckerFeatures(ModelFunction(model), k, seed=4, summed=summed)
        assert gram_bytes < plain_fmap.example_bytes(ModelInputs.from_user(x1, "x"))


def test_gram_form_in_stores_and_attribution(tmp_path) -> None:
    from reference import cosine_gram

    import captum_ntk as cn

    model, x1, x2 = make_mlp(), mlp_inputs(6), mlp_inputs(5, seed=7)
    f1, f2 = _features_form(model, x1, 40, False), _features_form(model, x2, 40, False)
    ref = cosine_gram(f1, f2)
    opts = dict(kernel="proj_trntk", projection="kronecker", projection_dim=40, seed=4)
    stored = cn.kernel_matrix(model, x1, x2, store=tmp_path / "s", batch_size=4, **opts)
    assert float((stored - ref).abs().max()) < 1e-12
    dataset = torch.utils.data.TensorDataset(x2, torch.zeros(5, dtype=torch.long))
    attr = cn.ProjTrNTKAttribution(
        model, dataset, projection="kronecker", projection_dim=40, seed=4, batch_size=2
    )
    scores = attr.influence((x1, torch.zeros(6, dtype=torch.long)))
    assert float((scores - ref).abs().max()) < 1e-12


def test_gram_form_many_classes_in_class_chunks() -> None:
    """C = 12 logits gathered over class chunks (a tiny budget) into one Gram piece."""
    from reference import cosine_gram

    model, x = make_mlp(d_out=12), mlp_inputs(4)
    plain = _features_form(model, x, 60, False)
    fmap = KroneckerFeatures(ModelFunction(model), 60, seed=4, gram_form=True)
    fmap.memory_limit = 4 * 1024  # forces several class chunks
    blocks = fmap(ModelInputs.from_user(x, "x"))
    got = cosine_gram_from(fmap, blocks)
    assert float((got - cosine_gram(plain, plain)).abs().max()) < 1e-12


def cosine_gram_from(fmap: KroneckerFeatures, blocks) -> torch.Tensor:
    from reference import cosine_normalise

    sq = fmap.sq_norms(blocks)
    return cosine_normalise(fmap.inner(blocks, blocks), sq, sq)
