"""kGLM training from a memmapped kernel streamed in row blocks: same optimum as KernelGLM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from captum_ntk.surrogate import KernelGLM
from captum_ntk.surrogate.streamed import fit_streamed


def _problem(n=240, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    kernel = torch.exp(-(torch.cdist(x, x) ** 2) / 5)
    labels = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 0.5).long()
    return x, kernel, labels


def _memmap(tmp_path, kernel):
    path = tmp_path / "kernel.npy"
    out = np.lib.format.open_memmap(path, "w+", np.float64, tuple(kernel.shape))
    out[:] = kernel.numpy()
    out.flush()
    return np.load(path, mmap_mode="r")


@pytest.mark.parametrize(
    "target, options",
    [
        ("labels", {"alpha": 1e-3}),
        ("binary", {"alpha": 1e-2, "class_weight": None}),
        ("soft", {"alpha": 1e-3, "alpha_scale": 2.0}),
    ],
)
def test_streamed_fit_reaches_the_in_memory_optimum(tmp_path, target, options):
    x, kernel, labels = _problem()
    if target == "binary":
        y = (x[:, 0] > 0).long()
    elif target == "soft":
        y = torch.softmax(
            torch.randn(len(x), 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64),
            dim=1,
        )
    else:
        y = labels
    reference = KernelGLM(tol=1e-10, **options).fit(kernel, y)
    streamed = fit_streamed(
        _memmap(tmp_path, kernel), y, tol=1e-10, block_rows=37, device="cpu", **options
    )
    scale = reference.coef_.abs().max()
    assert (streamed.coef_ - reference.coef_).abs().max() <= 1e-6 * scale
    torch.testing.assert_close(streamed.intercept_, reference.intercept_, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        streamed.predict_proba(kernel[:20]),
        reference.predict_proba(kernel[:20]),
        rtol=1e-6,
        atol=1e-8,
    )
    assert streamed.coef_.shape == reference.coef_.shape
    assert streamed.penalty_ == pytest.approx(reference.penalty_)


def test_float32_memmap_and_path(tmp_path):
    _, kernel, labels = _problem(120, seed=2)
    path = tmp_path / "k32.npy"
    np.save(path, kernel.numpy().astype(np.float32))
    glm = fit_streamed(str(path), labels, alpha=1e-3, block_rows=50, device="cpu")
    reference = KernelGLM(alpha=1e-3).fit(kernel.float(), labels)
    assert glm.coef_.dtype == torch.float32
    assert (glm.predict(kernel.float()) == reference.predict(kernel.float())).float().mean() > 0.99


def test_streamed_fit_refuses_what_it_cannot_do(tmp_path):
    _, kernel, labels = _problem(60)
    with pytest.raises(ValueError, match="fixed alpha"):
        fit_streamed(kernel.numpy(), labels, alpha="auto")
    with pytest.raises(ValueError, match="probabilities"):
        fit_streamed(kernel.numpy(), torch.randn(60, 2, dtype=torch.float64), alpha=1e-3)
    with pytest.raises(ValueError, match="every class present"):
        fit_streamed(kernel.numpy(), labels, alpha=1e-3, num_classes=5)
    with pytest.raises(ValueError, match="square"):
        fit_streamed(kernel.numpy()[:10], labels[:10], alpha=1e-3)
