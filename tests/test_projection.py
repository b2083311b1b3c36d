"""Seeded projections: statistics, blockwise generation, and the fused CUDA path."""

from __future__ import annotations

import math

import pytest
import torch

from captum_ntk.engine.projection.dense import (
    RandomProjection,
    column_width,
    projection_block,
    projection_matrix,
)


def test_block_generation_is_consistent_with_whole_matrix() -> None:
    whole = projection_matrix(5000, 64, seed=7)
    assert torch.equal(
        projection_block(64, 1234, 4321, seed=7, dtype=torch.float64), whole[:, 1234:4321]
    )
    gauss = projection_matrix(3000, 32, "gaussian", seed=7)
    assert torch.equal(
        projection_block(32, 100, 900, "gaussian", seed=7, dtype=torch.float64), gauss[:, 100:900]
    )


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_entries_are_iid_like(kind: str) -> None:
    k, p = 512, 20000
    s = projection_matrix(p, k, kind, seed=3)
    assert abs(float(s.mean())) < 5 / math.sqrt(k * p)
    if kind == "rademacher":
        assert set(s.unique().tolist()) == {-1.0, 1.0}
    else:
        assert abs(float(s.var()) - 1) < 0.01
        assert abs(float((s**4).mean()) - 3) < 0.05
    gram = s @ s.T / p
    off = gram - torch.diag(gram.diag())
    # off-diagonal entries ~ N(0, 1/p): std close to 1/sqrt(p)
    assert abs(float(off.std()) * math.sqrt(p) - 1) < 0.02
    # extreme eigenvalues of an i.i.d. Gram follow Marchenko-Pastur: (1 +- sqrt(k/p))^2
    eig = torch.linalg.eigvalsh(gram)
    r = math.sqrt(k / p)
    assert abs(float(eig[0]) - (1 - r) ** 2) < 0.02
    assert abs(float(eig[-1]) - (1 + r) ** 2) < 0.03


def test_seeds_differ_and_repeat() -> None:
    a = projection_matrix(1000, 16, seed=0)
    assert torch.equal(a, projection_matrix(1000, 16, seed=0))
    assert not torch.equal(a, projection_matrix(1000, 16, seed=1))
    assert not torch.equal(a, projection_matrix(1000, 16, seed=2**40))


def test_projection_is_unbiased_for_inner_products() -> None:
    torch.manual_seed(0)
    g = torch.randn(2, 3000, dtype=torch.float64)
    exact = float(g[0] @ g[1])
    estimates = []
    for seed in range(40):
        f = RandomProjection(3000, 256, seed=seed, dtype=torch.float64)(g)
        estimates.append(float(f[0] @ f[1]))
    mean = sum(estimates) / len(estimates)
    spread = (sum((e - mean) ** 2 for e in estimates) / (len(estimates) - 1)) ** 0.5
    assert abs(mean - exact) < 4 * spread / math.sqrt(len(estimates))


def test_pieces_and_cache_give_the_same_features() -> None:
    torch.manual_seed(0)
    g = torch.randn(5, 7000, dtype=torch.float64)
    k = 600  # column blocks of column_width(600) columns cut across the pieces
    assert column_width(k) < 7000
    cached = RandomProjection(7000, k, seed=4, dtype=torch.float64)
    streamed = RandomProjection(7000, k, seed=4, dtype=torch.float64, cache_bytes=0)
    assert cached._cache is not None and streamed._cache is None
    ref = g @ projection_matrix(7000, k, seed=4).T / math.sqrt(k)
    pieces = [g[:, :10], g[:, 10:4000], g[:, 4000:]]
    for proj in (cached, streamed):
        torch.testing.assert_close(proj(g), ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(proj(pieces), ref, rtol=1e-12, atol=1e-12)


def test_projection_dim_must_be_smaller_than_p() -> None:
    with pytest.raises(ValueError, match="projection_dim"):
        RandomProjection(100, 100)
    with pytest.raises(ValueError, match="rademacher"):
        RandomProjection(100, 10, kind="sparse")
    with pytest.raises(ValueError, match="projection_dim must be an int"):
        RandomProjection(100, 7.5)  # was truncated to 7


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_cuda_projection_matches_the_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    from captum_ntk.engine.projection import triton_dense as _triton_projection

    if not _triton_projection.available():
        pytest.skip("Triton not available")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    p, k = 50_000, 1000
    g = torch.randn(70, p, device="cuda")
    proj = RandomProjection(p, k, seed=11, device="cuda", dtype=torch.float32, cache_bytes=0)
    assert proj._use_triton(g)
    pieces = [g[:, :123], g[:, 123:30000], g[:, 30000:]]
    fused = proj(pieces)
    s = projection_matrix(p, k, seed=11, device="cuda")
    ref = (g.double() @ s.T / math.sqrt(k)).float()
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    # rows do not depend on the batch they come in (up to float rounding)
    torch.testing.assert_close(proj([t[:5] for t in pieces]), fused[:5], rtol=1e-6, atol=1e-6)
    # TF32 mode: same matrix, lower precision
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    tf32 = proj(pieces)
    torch.testing.assert_close(tf32, ref, rtol=1e-2, atol=1e-2 * float(ref.abs().max()))
    # the same features as the blockwise torch path on the CPU, up to float rounding
    cpu = RandomProjection(p, k, seed=11, dtype=torch.float64, cache_bytes=0)(g.double().cpu())
    torch.testing.assert_close(
        fused.cpu().double(), cpu, rtol=1e-4, atol=1e-4 * float(cpu.abs().max())
    )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_cuda_projection_of_strided_column_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    from captum_ntk.engine.projection import triton_dense as _triton_projection

    if not _triton_projection.available():
        pytest.skip("Triton not available")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    p, k = 20_000, 300
    g = torch.randn(40, p, device="cuda")
    # a small scratch budget: keys for 1024 columns at a time, so every piece is projected as
    # strided column slices (rows keep the stride of the whole gradient)
    proj = RandomProjection(p, k, seed=5, device="cuda", cache_bytes=0, scratch_bytes=1 << 16)
    assert proj._use_triton(g)
    fused = proj([g[:, :7000], g[:, 7000:]])
    s = projection_matrix(p, k, seed=5, device="cuda")
    ref = (g.double() @ s.T / math.sqrt(k)).float()
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert not any(isinstance(v, torch.Tensor) for v in vars(proj).values())  # no kept keys


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_cuda_projection_beyond_2_31_gradient_entries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from captum_ntk.engine.projection import triton_dense as _triton_projection

    if not _triton_projection.available():
        pytest.skip("Triton not available")
    p, k = 60_000, 128
    rows = 2**31 // p + 64  # rows x P > 2**31: 32-bit offsets of the last rows overflow
    if torch.cuda.mem_get_info()[0] < 3 * rows * p * 4:
        pytest.skip("needs about 26 GB of free GPU memory")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    g = torch.empty(rows, p, device="cuda")
    g.normal_(generator=torch.Generator(device="cuda").manual_seed(0))
    assert g.numel() > 2**31
    proj = RandomProjection(p, k, seed=3, device="cuda", cache_bytes=0)
    assert proj._use_triton(g)
    fused = proj(g)
    # the torch path (float64, no Triton) on the first and last rows
    exact = RandomProjection(p, k, seed=3, device="cuda", dtype=torch.float64, cache_bytes=0)
    for chosen in (slice(0, 8), slice(rows - 8, rows)):
        ref = exact(g[chosen].double()).float()
        torch.testing.assert_close(
            fused[chosen], ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max())
        )
