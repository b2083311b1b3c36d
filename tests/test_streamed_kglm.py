"""kGLM training from a memmapped kernel streamed in row blocks: same optimum as KernelGLM."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from captum_ntk.surrogate import KernelGLM
from captum_ntk.surrogate._validation import parse_targets
from captum_ntk.surrogate.objectives import SquaredSystem, sample_weight
from captum_ntk.surrogate.streamed import _RowBlocks, fit_streamed


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


# ----------------------------------------------------------------------------- squared loss
def _real_targets(x, kind):
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn(len(x), 3, generator=gen, dtype=torch.float64)
    if kind == "soft":  # probabilities fitted as real numbers (the squared loss's "soft")
        return torch.softmax(2 * x[:, :3] + noise, dim=1)
    if kind == "one":
        return x[:, 0] - 0.5 * x[:, 1] ** 2 + 0.1 * noise[:, 0]
    return 3 * x[:, :3] + noise  # (N, 3) logits


@pytest.mark.parametrize("kind", ["logits", "soft", "one"])
@pytest.mark.parametrize(
    "options",
    [
        {"alpha": 1e-3},
        {"alpha": 1e-2, "class_weight": None},
        {"alpha": 1e-4, "alpha_scale": 2.0},
        {"alpha": 5e-3, "alpha_scale": None, "class_weight": None},
    ],
)
def test_streamed_squared_equals_in_memory_ridge(tmp_path, kind, options):
    x, kernel, _ = _problem()
    kernel = 3.0 * kernel  # a scale != 1, so alpha_scale matters
    y = _real_targets(x, kind)
    reference = KernelGLM(loss="squared", **options).fit(kernel, y)
    streamed = fit_streamed(
        _memmap(tmp_path, kernel),
        y,
        loss="squared",
        tol=1e-13,
        max_iter=5000,
        block_rows=37,
        device="cpu",
        **options,
    )
    assert streamed.coef_.shape == reference.coef_.shape
    scale = reference.coef_.abs().max()
    assert (streamed.coef_ - reference.coef_).abs().max() <= 1e-9 * scale
    torch.testing.assert_close(streamed.intercept_, reference.intercept_, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(
        streamed.decision_function(kernel[:30]),
        reference.decision_function(kernel[:30]),
        rtol=1e-9,
        atol=1e-10,
    )
    assert streamed.penalty_ == pytest.approx(reference.penalty_)
    assert streamed.kernel_scale_ == pytest.approx(reference.kernel_scale_)
    assert streamed.target_kind_ == "real"
    # One pass for the statistics, then one pass per CG iteration.
    assert len(streamed.pass_seconds_) == streamed.n_iter_ + 1


def test_streamed_squared_fortran_order_file_and_float32(tmp_path):
    x, kernel, _ = _problem(150, seed=4)
    y = _real_targets(x, "logits")
    path = tmp_path / "fortran.npy"
    np.save(path, np.asfortranarray(kernel.numpy()))
    reference = KernelGLM(loss="squared", alpha=1e-3).fit(kernel, y)
    streamed = fit_streamed(
        path, y, loss="squared", alpha=1e-3, tol=1e-13, max_iter=5000, block_rows=64, device="cpu"
    )
    assert (streamed.coef_ - reference.coef_).abs().max() <= 1e-9 * reference.coef_.abs().max()
    # float32 kernel: solved in float64 on the float32 entries, like KernelGLM.
    k32 = kernel.float()
    np.save(tmp_path / "k32.npy", k32.numpy())
    ref32 = KernelGLM(loss="squared", alpha=1e-3).fit(k32, y)
    glm32 = fit_streamed(
        tmp_path / "k32.npy", y, loss="squared", alpha=1e-3, tol=1e-12, max_iter=5000,
        device="cpu",
    )  # fmt: skip
    assert glm32.coef_.dtype == torch.float32
    assert (glm32.coef_ - ref32.coef_).abs().max() <= 1e-5 * ref32.coef_.abs().max()


def test_streamed_squared_warm_start(tmp_path):
    x, kernel, _ = _problem()
    y = _real_targets(x, "logits")
    memmap = _memmap(tmp_path, kernel)
    options = {"loss": "squared", "tol": 1e-12, "max_iter": 5000, "device": "cpu"}
    cold = fit_streamed(memmap, y, alpha=1e-3, **options)
    near = fit_streamed(memmap, y, alpha=1.2e-3, **options)
    warm = fit_streamed(memmap, y, alpha=1e-3, warm_start=near, **options)
    assert 0 < warm.n_iter_ < cold.n_iter_
    assert (warm.coef_ - cold.coef_).abs().max() <= 1e-9 * cold.coef_.abs().max()
    again = fit_streamed(memmap, y, alpha=1e-3, warm_start=cold, **options)
    assert again.n_iter_ == 0
    torch.testing.assert_close(again.coef_, cold.coef_, rtol=0, atol=0)
    # A cap on the iterations warns instead of returning a silently unconverged fit.
    with pytest.warns(ConvergenceWarning, match="conjugate-gradient"):
        fit_streamed(memmap, y, alpha=1e-3, **{**options, "max_iter": 3})


def test_streamed_squared_warm_start_on_a_zero_right_hand_side(tmp_path):
    # A column of 0 targets has a right-hand side of exactly 0 and a constant column one of
    # rounding size; a warm start fitted to other targets must not stall on either.
    x, kernel, _ = _problem()
    y = _real_targets(x, "logits")
    memmap = _memmap(tmp_path, kernel)
    options = {"loss": "squared", "alpha": 1e-3, "max_iter": 400, "device": "cpu"}
    warm = fit_streamed(memmap, y, **options)
    flat = y.clone()
    flat[:, 1], flat[:, 2] = 0.0, 0.3
    cold = fit_streamed(memmap, flat, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        fitted = fit_streamed(memmap, flat, warm_start=warm, **options)
    assert fitted.n_iter_ < options["max_iter"]
    assert torch.equal(fitted.coef_[1], torch.zeros(len(x), dtype=torch.float64))
    assert fitted.intercept_[1] == 0
    # The exact fit of a constant is coef 0, intercept 0.3.
    assert fitted.coef_[2].abs().max() <= 1e-12
    assert fitted.intercept_[2] == pytest.approx(0.3, abs=1e-12)
    torch.testing.assert_close(
        fitted.coef_[0], cold.coef_[0], rtol=0, atol=1e-4 * cold.coef_[0].abs().max()
    )


@pytest.mark.parametrize("loss", ["squared", "log_loss"])
def test_streamed_warm_start_refuses_alpha_0(loss):
    # At alpha=0 CG from a warm start keeps the warm start's null-space part: not the
    # minimum-norm solution of KernelGLM, so it is refused rather than silently different.
    x, kernel, labels = _problem(60)
    y = _real_targets(x, "logits") if loss == "squared" else labels
    near = fit_streamed(kernel.numpy(), y, loss=loss, alpha=1e-3, device="cpu")
    with pytest.raises(ValueError, match="warm_start needs alpha > 0"):
        fit_streamed(kernel.numpy(), y, loss=loss, alpha=0.0, warm_start=near, device="cpu")


def _tol_agreement(alpha, tol, kind="logits"):
    """Streamed vs in-memory squared fit at ``tol``: (coef error / its bound (m,), rel. errors)."""
    x, kernel, _ = _problem()
    y = _real_targets(x, kind)
    reference = KernelGLM(loss="squared", alpha=alpha).fit(kernel, y)
    streamed = fit_streamed(
        kernel.numpy(), y, loss="squared", alpha=alpha, tol=tol, max_iter=10_000, device="cpu"
    )
    targets = parse_targets(y, len(x), None, "squared")
    weight = sample_weight(targets.group, int(targets.classes.numel()), "balanced")
    system = SquaredSystem(kernel, targets, weight, device=torch.device("cpu"))
    # ||x - x*|| <= ||r|| / lambda_min <= tol ||b|| / a, x = coef * scale, a = alpha here.
    bound = tol * system.rhs.norm(dim=0) / alpha
    error = ((streamed.coef_ - reference.coef_) * system.scale).reshape(-1, len(x)).norm(dim=1)
    coef = (streamed.coef_ - reference.coef_).abs().max() / reference.coef_.abs().max()
    ref_out = reference.decision_function(kernel)
    out = (streamed.decision_function(kernel) - ref_out).abs().max() / ref_out.abs().max()
    return error / bound, float(coef), float(out)


@pytest.mark.parametrize("tol", [1e-7, 1e-10])
@pytest.mark.parametrize("alpha", [1e-2, 1e-4, 1e-6])
@pytest.mark.parametrize("kind", ["logits", "one"])
def test_streamed_squared_error_within_its_tol_bound(alpha, tol, kind):
    # tol bounds each column's residual, hence its coefficient error by tol |b_j| / a.
    ratio, coef_error, _ = _tol_agreement(alpha, tol, kind)
    assert bool((ratio <= 1.0).all()), ratio
    assert coef_error <= 1e4 * tol  # and the relative error follows tol


def test_streamed_log_loss_warm_start(tmp_path):
    _, kernel, labels = _problem()
    memmap = _memmap(tmp_path, kernel)
    cold = fit_streamed(memmap, labels, alpha=1e-3, tol=1e-9, device="cpu")
    warm = fit_streamed(memmap, labels, alpha=1e-3, tol=1e-9, device="cpu", warm_start=cold)
    assert warm.n_iter_ <= 2 < cold.n_iter_
    assert (warm.coef_ - cold.coef_).abs().max() <= 1e-6 * cold.coef_.abs().max()


def test_streamed_squared_bad_input(tmp_path):
    x, kernel, labels = _problem(60)
    y = _real_targets(x, "logits")
    with pytest.raises(ValueError, match="y has 59 labels"):
        fit_streamed(kernel.numpy(), y[:59], loss="squared", alpha=1e-3)
    with pytest.raises(ValueError, match="square"):
        fit_streamed(kernel.numpy()[:, :50], y, loss="squared", alpha=1e-3)
    with pytest.raises(TypeError, match=r"\(N, N\)"):
        fit_streamed(kernel.numpy()[None], y, loss="squared", alpha=1e-3)
    with pytest.raises(ValueError, match="NaN or infinite"):
        bad_y = y.clone()
        bad_y[3, 1] = float("nan")
        fit_streamed(kernel.numpy(), bad_y, loss="squared", alpha=1e-3)
    with pytest.raises(ValueError, match="shape"):
        fit_streamed(kernel.numpy(), y[:, :, None], loss="squared", alpha=1e-3)
    bad = kernel.clone()
    bad[41, 7] = float("nan")
    with pytest.raises(ValueError, match="rows 40:60 contain NaN"):
        fit_streamed(_memmap(tmp_path, bad), y, loss="squared", alpha=1e-3, block_rows=20)
    with pytest.raises(ValueError, match="loss must be one of"):
        fit_streamed(kernel.numpy(), y, loss="hinge", alpha=1e-3)
    with pytest.raises(ValueError, match="block_rows"):
        fit_streamed(kernel.numpy(), y, loss="squared", alpha=1e-3, block_rows=0)
    logistic = fit_streamed(kernel.numpy(), labels, alpha=1e-3, tol=1e-3)
    with pytest.raises(ValueError, match="warm-start from a fit"):
        fit_streamed(kernel.numpy(), y, loss="squared", alpha=1e-3, warm_start=logistic)
    with pytest.raises(TypeError, match="fitted KernelGLM"):
        fit_streamed(kernel.numpy(), y, loss="squared", alpha=1e-3, warm_start=KernelGLM())


def test_row_blocks_read_the_same_rows_from_files_views_and_arrays(tmp_path):
    _, kernel, _ = _problem(90, seed=5)
    memmap = _memmap(tmp_path, kernel)
    np.save(tmp_path / "f.npy", np.asfortranarray(kernel.numpy()))
    sources = {
        "path": tmp_path / "kernel.npy",  # whole file: plain file reads
        "memmap": memmap,
        "view": memmap[:, :],  # a view of a memmap: sliced
        "fortran": np.load(tmp_path / "f.npy", mmap_mode="r"),
        "tensor": kernel,
    }
    assert _RowBlocks(sources["path"], 16, torch.device("cpu")).file is not None
    assert _RowBlocks(sources["view"], 16, torch.device("cpu")).file is None
    for name, source in sources.items():
        blocks = _RowBlocks(source, 16, torch.device("cpu"))
        rows = torch.cat([block.clone() for _, _, block in blocks])  # blocks reuse a buffer
        assert torch.equal(rows, kernel), name
        assert len(blocks.passes) == 1


if __name__ == "__main__":  # the agreement at the default tol quoted in docs/scale.md
    for alpha in (1e-2, 1e-4, 1e-6):
        ratio, coef_error, out_error = _tol_agreement(alpha, 1e-7)
        print(
            f"tol=1e-7 alpha={alpha:g}: coef max rel err {coef_error:.1e}, decision_function "
            f"{out_error:.1e}, error / bound {float(ratio.max()):.2f}"
        )
