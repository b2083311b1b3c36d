"""The sparse Johnson-Lindenstrauss projection (projection="sjlt")."""

from __future__ import annotations

import math

import pytest
import torch

from captum_ntk.engine.projection.sjlt import SparseProjection, sjlt_indices, sjlt_matrix


@pytest.mark.parametrize(("k", "s"), [(64, 4), (50, 3), (16, 1), (40, 8)])
def test_matrix_has_s_signed_nonzeros_per_column_in_distinct_buckets(k: int, s: int) -> None:
    p = 2000
    matrix = sjlt_matrix(p, k, s, seed=5)
    nonzero = matrix != 0
    assert torch.equal(nonzero.sum(0), torch.full((p,), s))
    assert torch.equal(
        matrix[nonzero].abs(), torch.full((p * s,), 1 / math.sqrt(s), dtype=matrix.dtype)
    )
    # one nonzero in each bucket [j K // s, (j + 1) K // s)
    for j in range(s):
        lo, hi = j * k // s, (j + 1) * k // s
        assert torch.equal(nonzero[lo:hi].sum(0), torch.ones(p, dtype=torch.long))
    # columns have unit norm exactly; signs and rows are balanced
    assert torch.allclose(matrix.norm(dim=0), torch.ones(p, dtype=matrix.dtype), atol=1e-15)
    positive = float((matrix > 0).sum()) / (p * s)
    assert abs(positive - 0.5) < 4 * 0.5 / math.sqrt(p * s)
    counts = nonzero.sum(1).double()  # nonzeros per row: about Binomial(P, s / K)
    assert abs(float(counts.mean()) - p * s / k) < 1e-9
    assert float(counts.std()) < 2 * math.sqrt(p * s / k)


def test_features_equal_matrix_times_gradient_float64() -> None:
    torch.manual_seed(0)
    p, k, s = 5000, 96, 4
    g = torch.randn(7, p, dtype=torch.float64)
    reference = g @ sjlt_matrix(p, k, s, seed=11).T
    pieces = [g[:, :13], g[:, 13:2600], g[:, 2600:]]
    cached = SparseProjection(p, k, s, seed=11, dtype=torch.float64)
    streamed = SparseProjection(
        p, k, s, seed=11, dtype=torch.float64, cache_bytes=0, scratch_bytes=40 * s * 300
    )
    assert cached._cache is not None and streamed._cache is None and streamed.width == 300
    for proj in (cached, streamed):
        for arg in (g, pieces):
            assert float((proj(arg) - reference).abs().max()) < 1e-12


def test_bit_identical_across_batch_sizes_blocks_and_caching() -> None:
    torch.manual_seed(1)
    p, k = 30000, 256
    g = torch.randn(37, p)
    cached = SparseProjection(p, k, seed=2)
    streamed = SparseProjection(p, k, seed=2, cache_bytes=0, scratch_bytes=40 * 4 * 777)
    whole = cached(g)
    assert torch.equal(whole, torch.cat([cached(g[i : i + 1]) for i in range(37)]))
    assert torch.equal(whole, torch.cat([cached(g[:20]), cached(g[20:])]))
    assert torch.equal(whole, streamed([g[:, :999], g[:, 999:]]))


def test_indices_are_a_pure_function_of_seed_column_k_and_s() -> None:
    whole = sjlt_indices(0, 4000, 128, 4, seed=3)
    assert torch.equal(sjlt_indices(1234, 3210, 128, 4, seed=3), whole[:, 1234:3210])
    assert torch.equal(whole, sjlt_indices(0, 4000, 128, 4, seed=3))
    assert not torch.equal(whole, sjlt_indices(0, 4000, 128, 4, seed=4))
    assert not torch.equal(whole, sjlt_indices(0, 4000, 128, 4, seed=2**40))
    assert not torch.equal(sjlt_matrix(4000, 128, 4, 3), sjlt_matrix(4000, 128, 2, 3)[:, :])


def test_inner_products_are_unbiased_over_seeds() -> None:
    torch.manual_seed(0)
    p, k = 3000, 64
    g = torch.randn(2, p, dtype=torch.float64)
    g[1] += 0.5 * g[0]  # a sizeable true inner product
    exact = float(g[0] @ g[1])
    estimates = []
    for seed in range(200):
        f = SparseProjection(p, k, seed=seed, dtype=torch.float64)(g)
        estimates.append(float(f[0] @ f[1]))
    est = torch.tensor(estimates, dtype=torch.float64)
    standard_error = float(est.std()) / math.sqrt(len(estimates))
    assert abs(float(est.mean()) - exact) < 4 * standard_error
    # the spread is that of a JL estimate: about sqrt((|g|^2 |h|^2 + <g,h>^2) / K)
    jl = math.sqrt((float(g[0] @ g[0]) * float(g[1] @ g[1]) + exact**2) / k)
    assert 0.7 * jl < float(est.std()) < 1.3 * jl


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="not smaller than the number of parameters"):
        SparseProjection(100, 100)
    with pytest.raises(ValueError, match="nonzeros per column"):
        SparseProjection(100, 3, nonzeros=4)
    with pytest.raises(ValueError, match="positive"):
        SparseProjection(100, 10, nonzeros=0)
    with pytest.raises(ValueError, match="Expected gradients with 100 columns"):
        SparseProjection(100, 10)(torch.zeros(2, 99))
    with pytest.raises(ValueError, match="sjlt_nonzeros must be an int"):
        SparseProjection(100, 10, nonzeros=2.5)  # was truncated to 2
    with pytest.raises(ValueError, match="projection_dim must be an int"):
        SparseProjection(100, 10.5)


@pytest.mark.cuda
def test_cuda_matches_cpu_and_is_deterministic() -> None:
    torch.manual_seed(0)
    p, k = 200_000, 1024
    g = torch.randn(33, p)
    cpu = SparseProjection(p, k, seed=9)(g)
    proj = SparseProjection(p, k, seed=9, device="cuda")
    first = proj(g.cuda())
    assert torch.allclose(first.cpu(), cpu, rtol=1e-5, atol=1e-4)
    assert torch.equal(first, proj(g.cuda()))  # same bits on a second run
    assert torch.equal(first[:5], proj(g[:5].cuda()))  # and for fewer rows


@pytest.mark.parametrize("kernel", ["proj_trntk", "proj_pntk"])
def test_kernel_matrix_with_sjlt_matches_the_reference(kernel: str) -> None:
    from models import make_wide_mlp, mlp_inputs
    from reference import kernel_from_grads, library_parameters, ref_gradients

    import captum_ntk as cn

    model = make_wide_mlp()
    x1, x2 = mlp_inputs(4, d_in=20), mlp_inputs(3, seed=5, d_in=20)
    names = library_parameters(model)
    g1, g2 = ref_gradients(model, x1, names), ref_gradients(model, x2, names)
    matrix = sjlt_matrix(g1.shape[-1], 512, seed=7)
    ref = kernel_from_grads(g1, g2, kernel, matrix)
    got = cn.kernel_matrix(
        model, x1, x2, kernel=kernel, projection="sjlt", projection_dim=512, seed=7, batch_size=2
    )
    assert float((got - ref).abs().max()) < 1e-10
    attr = cn.ProjTrNTKAttribution if kernel == "proj_trntk" else cn.ProjPNTKAttribution
    scores = attr(
        model, torch.utils.data.TensorDataset(x2, torch.zeros(3)), projection="sjlt",
        projection_dim=512, seed=7,
    ).influence((x1, torch.zeros(4)))  # fmt: skip
    assert float((scores - ref).abs().max()) < 1e-10


def test_unknown_projection_is_refused() -> None:
    from models import make_wide_mlp, mlp_inputs

    import captum_ntk as cn

    with pytest.raises(ValueError, match="Unknown projection 'sparse'"):
        cn.kernel_matrix(
            make_wide_mlp(), mlp_inputs(2, d_in=20), kernel="proj_pntk", projection="sparse"
        )
