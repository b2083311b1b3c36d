"""Spectral summaries and the online kernel-evolution tracker."""

from __future__ import annotations

import math

import models
import numpy as np
import pytest
import torch

import captum_ntk as cn
from captum_ntk import analysis as A


def _gram(n: int = 8, seed: int = 0) -> torch.Tensor:
    f = torch.randn(n, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return f @ f.T


def test_spectral_summaries_against_numpy() -> None:
    k1, k2 = _gram(seed=0), _gram(seed=1)
    a, b = k1.numpy(), k2.numpy()
    cos = (a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b))
    assert A.kernel_distance(k1, k2) == pytest.approx(1 - cos, rel=1e-12)
    assert A.kernel_distance(k1, 3.0 * k1) == pytest.approx(0.0, abs=1e-14)
    lam = np.linalg.eigvalsh(a)[::-1].clip(0)
    assert A.spectral_mass(k1, 2) == pytest.approx(lam[:2].sum() / lam.sum(), rel=1e-10)
    p = lam[lam > 1e-12 * lam[0]] / lam.sum()
    assert A.effective_rank(k1) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-6)
    assert A.effective_rank(torch.eye(6)) == pytest.approx(6.0)
    y = torch.tensor([1.0, -1, 1, 1, -1, -1, 1, -1], dtype=torch.float64)
    h = np.eye(8) - 1 / 8
    kc, yc = h @ a @ h, h @ np.outer(y, y) @ h
    expected = (kc * yc).sum() / (np.linalg.norm(kc) * np.linalg.norm(yc))
    assert A.centered_alignment(k1, y) == pytest.approx(expected, rel=1e-10)
    assert A.centered_alignment(torch.outer(y, y), y) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="constant"):
        A.centered_alignment(k1, torch.ones(8))
    assert A.label_energy(
        torch.outer(y, y) + 1e-3 * torch.eye(8, dtype=torch.float64), y, 1
    ) == pytest.approx(1.0)


def test_tracker_scalars_match_direct_computation_and_memory_is_bounded() -> None:
    y = torch.tensor([1.0, -1, 1, 1, -1, -1, 1, -1], dtype=torch.float64)
    tracker = A.KernelEvolution(torch.zeros(8, 2), y, top_k=3, max_snapshots=8)
    grams = [_gram(seed=s) for s in range(100)]
    for step, gram in enumerate(grams):
        tracker.update(gram, step=10 * step)
    assert len(tracker) == 100 and tracker.steps[-1] == 990
    h = tracker.history
    assert math.isnan(h["velocity"][0])
    assert h["velocity"][5] == pytest.approx(A.kernel_distance(grams[5], grams[4]), rel=1e-12)
    assert h["distance_to_initial"][7] == pytest.approx(
        A.kernel_distance(grams[7], grams[0]), rel=1e-12
    )
    assert h["angle_to_initial"][7] == pytest.approx(
        math.acos(1 - h["distance_to_initial"][7]), rel=1e-9
    )
    assert h["alignment"][3] == pytest.approx(A.centered_alignment(grams[3], y), rel=1e-12)
    assert h["label_energy"][3] == pytest.approx(A.label_energy(grams[3], y, 3), rel=1e-12)
    assert h["top_k_mass"][3] == pytest.approx(A.spectral_mass(grams[3], 3), rel=1e-12)
    # only initial / previous / current Grams plus at most max_snapshots kept snapshots
    assert tracker.initial is not None and torch.equal(tracker.current, grams[-1])
    steps, dist = tracker.pairwise_distances()
    assert 2 <= len(steps) <= 8 and steps[0] == 0
    gaps = np.diff(steps)
    assert (gaps == gaps[0]).all()  # evenly spaced after thinning
    i, j = steps.index(steps[1]), steps.index(steps[-1])
    assert float(dist[i, j]) == pytest.approx(
        A.kernel_distance(grams[steps[1] // 10], grams[steps[-1] // 10]), rel=1e-10
    )
    assert len(tracker.as_dict()["spectra"]) == 100


def test_tracker_computes_model_kernels() -> None:
    model = models.make_mlp(seed=0)
    probe = models.mlp_inputs(6)
    tracker = A.KernelEvolution(probe, kernel="trntk0")
    tracker.update(model)
    torch.testing.assert_close(tracker.current, cn.kernel_matrix(model, probe, kernel="trntk0"))
    with torch.no_grad():
        model.fc2.weight.mul_(1.5)
    values = tracker.update(model)
    assert values["velocity"] > 0 and math.isnan(values["alignment"])
    with pytest.raises(ValueError, match="probe Gram"):
        tracker.update(torch.eye(3))


def test_plot_kernel_evolution() -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    runs = {}
    for name, seed in (("standard", 0), ("adversarial", 50)):
        runs[name] = A.KernelEvolution(torch.zeros(8, 2), torch.arange(8.0))
        for s in range(5):
            runs[name].update(_gram(seed=seed + s))
    fig = A.plot_kernel_evolution(runs)
    assert len(fig.axes) >= 8
    plt.close(fig)
    fig = A.plot_feature_tradeoff(
        [0.5, 0.9], [0.5, 0.7], {"m": [1, 2], "accuracy": [0.5, 0.9], "robust_accuracy": [0.5, 0.7]}
    )
    plt.close(fig)
    with pytest.raises(ValueError, match="update"):
        A.plot_kernel_evolution(A.KernelEvolution(torch.zeros(8, 2)))


def test_spectral_k_must_be_positive() -> None:
    """k <= 0 used to slice from the end (lam[:-1]) and return a wrong share silently."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    gram = x @ x.T
    for k in (0, -1, 1.5):
        with pytest.raises(ValueError, match="k "):
            A.spectral_mass(gram, k)
        with pytest.raises(ValueError, match="k "):
            A.label_energy(gram, torch.arange(6.0), k)
    assert A.spectral_mass(gram, 10) == pytest.approx(1.0)
