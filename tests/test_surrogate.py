"""Tests of the kGLM surrogate, :class:`captum_ntk.surrogate.KernelGLM`."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import LogisticRegression, SGDClassifier

from captum_ntk.surrogate import KernelGLM


def blobs(
    n_per_class: int, n_classes: int, seed: int, radius: float = 4.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Well separated 2-D Gaussian blobs on a circle (linearly separable)."""
    generator = torch.Generator().manual_seed(seed)
    angles = 2 * torch.pi * torch.arange(n_classes, dtype=torch.float64) / n_classes
    centers = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    y = torch.arange(n_classes).repeat_interleave(n_per_class)
    x = centers[y] + 0.5 * torch.randn(len(y), 2, generator=generator, dtype=torch.float64)
    return x, y


def rbf_problem(n: int, n_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A noisy (not separable) problem with an RBF kernel, float64."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    scores = x @ torch.randn(3, n_classes, generator=generator, dtype=torch.float64)
    scores = scores + 0.8 * torch.randn(n, n_classes, generator=generator, dtype=torch.float64)
    y = scores.argmax(dim=1)
    kernel = torch.exp(-0.5 * torch.cdist(x, x) ** 2)
    return kernel, y


# ------------------------------------------------------------------------- fitting quality
@pytest.mark.parametrize("n_classes", [2, 3])
def test_separable_linear_kernel_is_fitted_perfectly(n_classes: int) -> None:
    x_train, y_train = blobs(30, n_classes, seed=0)
    x_test, y_test = blobs(20, n_classes, seed=1)
    glm = KernelGLM(alpha=1e-3).fit(x_train @ x_train.T, y_train)
    assert glm.score(x_train @ x_train.T, y_train) == 1.0
    assert torch.equal(glm.predict(x_test @ x_train.T), y_test)


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("class_weight", ["balanced", None])
def test_torch_backend_matches_sklearn_logistic_regression(
    n_classes: int, class_weight: str | None
) -> None:
    # Penalty mapping. KernelGLM minimises  (1/N) sum_i s_i l_i + (alpha/2) ||W||^2  and
    # LogisticRegression minimises  C sum_i s_i l_i + (1/2) ||W||^2  (intercept unpenalised in
    # both, s_i the class weights). Multiplying the first by 1/(alpha N) gives the second with
    # C = 1 / (alpha N): same minimiser.
    kernel, y = rbf_problem(90, n_classes, seed=n_classes)
    if class_weight == "balanced":
        y[:50] = 0  # make the classes unbalanced so the weights matter
    alpha, n_train = 3e-3, kernel.shape[0]
    glm = KernelGLM(alpha=alpha, class_weight=class_weight, tol=1e-10).fit(kernel, y)
    reference = LogisticRegression(
        C=1.0 / (alpha * n_train),
        class_weight=class_weight,
        solver="newton-cholesky",
        tol=1e-12,
        max_iter=1000,
    ).fit(kernel.numpy(), y.numpy())

    probs = glm.predict_proba(kernel)
    expected = torch.from_numpy(reference.predict_proba(kernel.numpy()))
    assert glm.coef_.shape == reference.coef_.shape
    torch.testing.assert_close(probs, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(glm.coef_, torch.from_numpy(reference.coef_), atol=1e-3, rtol=1e-3)
    # The mapping matters: C = 1/alpha (forgetting N) gives a visibly different model.
    wrong = LogisticRegression(C=1.0 / alpha, class_weight=class_weight, solver="newton-cholesky")
    wrong.fit(kernel.numpy(), y.numpy())
    assert (probs - torch.from_numpy(wrong.predict_proba(kernel.numpy()))).abs().max() > 1e-2


def test_converges_quickly_on_a_500_point_kernel() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(500, 20, generator=generator, dtype=torch.float64)
    y = (x @ torch.randn(20, 10, generator=generator, dtype=torch.float64)).argmax(dim=1)
    features = torch.relu(x @ torch.randn(20, 256, generator=generator, dtype=torch.float64))
    features = features / features.norm(dim=1, keepdim=True)
    kernel = features @ features.T  # cosine kernel: a dominant near-constant eigenvector
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        glm = KernelGLM(alpha=1e-4).fit(kernel, y)
    assert glm.n_iter_ < 200
    assert glm.score(kernel, y) > 0.8


# ------------------------------------------------------------------------- shapes and algebra
def test_binary_layout_and_label_mapping() -> None:
    kernel, y01 = rbf_problem(40, 2, seed=3)
    y = torch.where(y01 == 1, 7, 3)  # labels need not be 0/1
    glm = KernelGLM(alpha=1e-4).fit(kernel, y)
    test_kernel = kernel[:11]
    assert glm.coef_.shape == (1, 40)
    assert glm.intercept_.shape == (1,)
    assert torch.equal(glm.classes_, torch.tensor([3, 7]))
    logits = glm.decision_function(test_kernel)
    probs = glm.predict_proba(test_kernel)
    assert logits.shape == (11,)
    assert probs.shape == (11, 2)
    torch.testing.assert_close(probs[:, 1], torch.sigmoid(logits))
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(11, dtype=torch.float64))
    assert torch.equal(glm.predict(test_kernel), torch.where(logits > 0, 7, 3))


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_decision_function_is_kernel_times_coef_plus_intercept(backend: str) -> None:
    kernel, y = rbf_problem(60, 4, seed=4)
    glm = KernelGLM(backend=backend, alpha=1e-4).fit(kernel, y)
    test_kernel = torch.rand(9, 60, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    logits = glm.decision_function(test_kernel)
    assert glm.coef_.shape == (4, 60)
    assert glm.intercept_.shape == (4,)
    torch.testing.assert_close(logits, test_kernel @ glm.coef_.T + glm.intercept_)
    probs = glm.predict_proba(test_kernel)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(9, dtype=torch.float64))
    assert torch.equal(glm.predict(test_kernel), probs.argmax(dim=1))


def test_torch_probabilities_are_a_softmax() -> None:
    kernel, y = rbf_problem(50, 3, seed=5)
    glm = KernelGLM(alpha=1e-4).fit(kernel, y)
    torch.testing.assert_close(
        glm.predict_proba(kernel), torch.softmax(glm.decision_function(kernel), dim=1)
    )


def test_two_fits_are_identical() -> None:
    kernel, y = rbf_problem(70, 3, seed=6)
    first, second = KernelGLM(alpha=1e-4).fit(kernel, y), KernelGLM(alpha=1e-4).fit(kernel, y)
    assert torch.equal(first.coef_, second.coef_)
    assert torch.equal(first.intercept_, second.intercept_)


def test_numpy_inputs_and_dtypes() -> None:
    kernel, y = rbf_problem(40, 3, seed=7)
    from_numpy = KernelGLM(alpha=1e-4).fit(kernel.numpy(), y.numpy())
    from_torch = KernelGLM(alpha=1e-4).fit(kernel, y)
    assert torch.equal(from_numpy.coef_, from_torch.coef_)
    out = from_numpy.predict_proba(kernel.numpy())
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    assert from_numpy.predict(kernel.numpy()).dtype == torch.int64

    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        single = KernelGLM(alpha=1e-4).fit(kernel.float(), y)
    assert single.coef_.dtype == torch.float32
    assert single.decision_function(kernel.float()).dtype == torch.float32
    assert single.decision_function(kernel).dtype == torch.float64  # promoted
    torch.testing.assert_close(
        single.predict_proba(kernel), from_torch.predict_proba(kernel), atol=1e-3, rtol=0
    )


def test_balanced_weights_change_the_fit() -> None:
    kernel, y = rbf_problem(60, 2, seed=8)
    y[:40] = 0
    balanced = KernelGLM(alpha=1e-4, class_weight="balanced").fit(kernel, y)
    plain = KernelGLM(alpha=1e-4, class_weight=None).fit(kernel, y)
    # Up-weighting the rare class 1 raises its predicted probability on average.
    assert balanced.predict_proba(kernel)[:, 1].mean() > plain.predict_proba(kernel)[:, 1].mean()


# ------------------------------------------------------------------------- classes
def test_num_classes_with_absent_classes() -> None:
    kernel, y3 = rbf_problem(45, 3, seed=9)
    y = torch.tensor([0, 1, 3])[y3]  # classes 2 and 4 never occur
    glm = KernelGLM(alpha=1e-4).fit(kernel, y, num_classes=5)
    assert torch.equal(glm.classes_, torch.arange(5))
    assert glm.coef_.shape == (5, 45)
    assert torch.all(glm.coef_[[2, 4]] == 0)
    assert bool(torch.isfinite(glm.intercept_).all())  # finite since issue 7 item 5
    probs = glm.predict_proba(kernel)
    assert torch.all(probs[:, [2, 4]] == 0)
    # Same model as a fit on the present classes only.
    compact = KernelGLM(alpha=1e-4).fit(kernel, y)
    torch.testing.assert_close(probs[:, [0, 1, 3]], compact.predict_proba(kernel))


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_num_classes_with_two_present_classes(backend: str) -> None:
    kernel, y01 = rbf_problem(40, 2, seed=10)
    y = torch.where(y01 == 1, 2, 0)
    glm = KernelGLM(backend=backend, alpha=1e-4).fit(kernel, y, num_classes=4)
    binary = KernelGLM(backend=backend, alpha=1e-4).fit(kernel, y)
    probs = glm.predict_proba(kernel)
    assert probs.shape == (40, 4)
    torch.testing.assert_close(probs[:, [0, 2]], binary.predict_proba(kernel))
    assert torch.equal(glm.predict(kernel), binary.predict(kernel))


def test_num_classes_two_is_binary() -> None:
    kernel, y = rbf_problem(30, 2, seed=11)
    glm = KernelGLM(alpha=1e-4).fit(kernel, y, num_classes=2)
    assert glm.coef_.shape == (1, 30)


# ------------------------------------------------------------------------- sklearn backend
@pytest.mark.parametrize("n_classes", [2, 3])
def test_sklearn_backend_is_sgd_classifier(n_classes: int) -> None:
    kernel, y = rbf_problem(60, n_classes, seed=12)
    glm = KernelGLM(backend="sklearn", alpha=1e-3, random_state=0).fit(kernel, y)
    reference = SGDClassifier(
        loss="log_loss",
        penalty="l2",
        alpha=1e-3,
        class_weight="balanced",
        max_iter=1000,
        tol=1e-3,
        random_state=0,
    ).fit(kernel.numpy(), y.numpy())
    rows = 1 if n_classes == 2 else n_classes
    assert glm.coef_.shape == (rows, 60)
    torch.testing.assert_close(glm.coef_, torch.from_numpy(reference.coef_))
    torch.testing.assert_close(
        glm.decision_function(kernel), torch.from_numpy(reference.decision_function(kernel.numpy()))
    )
    # For C > 2 this is scikit-learn's one-vs-rest normalisation, not a softmax.
    torch.testing.assert_close(
        glm.predict_proba(kernel), torch.from_numpy(reference.predict_proba(kernel.numpy()))
    )
    assert torch.equal(glm.predict(kernel), torch.from_numpy(reference.predict(kernel.numpy())))


def test_sklearn_estimator_protocol() -> None:
    glm = KernelGLM(alpha=1e-2, class_weight=None)
    assert glm.get_params()["alpha"] == 1e-2
    copy = clone(glm).set_params(alpha=1e-4)
    assert copy.alpha == 1e-4 and glm.alpha == 1e-2


# ------------------------------------------------------------------------- errors
def test_errors() -> None:
    kernel, y = rbf_problem(20, 2, seed=13)
    with pytest.raises(ValueError, match="2-D"):
        KernelGLM(alpha=1e-4).fit(kernel[0], y)
    with pytest.raises(ValueError, match="square"):
        KernelGLM(alpha=1e-4).fit(kernel[:15], y)
    with pytest.raises(ValueError, match="19 labels.*N = 20"):
        KernelGLM(alpha=1e-4).fit(kernel, y[:19])
    with pytest.raises(ValueError, match="at least 2 distinct classes"):
        KernelGLM(alpha=1e-4).fit(kernel, torch.zeros(20, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 distinct classes"):
        KernelGLM(alpha=1e-4).fit(kernel, torch.zeros(20, dtype=torch.long), num_classes=3)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        KernelGLM(alpha=1e-4).fit(kernel, y + 1, num_classes=2)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        KernelGLM(alpha=1e-4).fit(kernel, y + 0.5)  # non-integer: read as soft targets
    with pytest.raises(ValueError, match="NaN"):
        KernelGLM(alpha=1e-4).fit(kernel * torch.nan, y)
    with pytest.raises(ValueError, match="backend"):
        KernelGLM(backend="jax").fit(kernel, y)
    with pytest.raises(ValueError, match="alpha"):
        KernelGLM(alpha=-1.0).fit(kernel, y)
    with pytest.raises(ValueError, match="class_weight"):
        KernelGLM(alpha=1e-4, class_weight="auto").fit(kernel, y)

    unfitted = KernelGLM(alpha=1e-4)
    for method in (unfitted.decision_function, unfitted.predict_proba, unfitted.predict):
        with pytest.raises(NotFittedError, match="Call 'fit'"):
            method(kernel)

    glm = KernelGLM(alpha=1e-4).fit(kernel, y)
    with pytest.raises(ValueError, match=r"19 columns.*N = 20.*\(n, 20\)"):
        glm.predict(kernel[:, :19])
    with pytest.raises(ValueError, match="2-D"):
        glm.predict_proba(kernel[0])


def test_max_iter_warns() -> None:
    kernel, y = rbf_problem(50, 3, seed=14)
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        KernelGLM(alpha=1e-4, max_iter=2).fit(kernel, y)


def test_numpy_labels_any_integer_dtype() -> None:
    kernel, y = rbf_problem(30, 3, seed=15)
    glm = KernelGLM(alpha=1e-4).fit(kernel.numpy(), y.numpy().astype(np.int32))
    assert glm.classes_.dtype == torch.int64


def test_fit_under_inference_mode_and_no_grad() -> None:
    kernel, y = rbf_problem(30, 3, seed=16)
    expected = KernelGLM(alpha=1e-4).fit(kernel, y).coef_
    with torch.inference_mode():
        inference_kernel = kernel.clone()
        inside = KernelGLM(alpha=1e-4).fit(inference_kernel, y).coef_
    outside = KernelGLM(alpha=1e-4).fit(inference_kernel, y).coef_
    with torch.no_grad():
        no_grad = KernelGLM(alpha=1e-4).fit(kernel, y).coef_
    torch.testing.assert_close(inside, expected, rtol=0, atol=0)
    torch.testing.assert_close(outside, expected, rtol=0, atol=0)
    torch.testing.assert_close(no_grad, expected, rtol=0, atol=0)


def test_kernel_units_trade_off_against_alpha() -> None:
    # Multiplying the kernel by s is the same model as dividing alpha by s^2 (W -> W / s); the
    # fit must find it whatever the units (the optimiser works on a rescaled problem).
    kernel, y = rbf_problem(60, 3, seed=17)
    reference = KernelGLM(alpha=1e-3, alpha_scale=None).fit(kernel, y)
    for s in (1e3, 1e-2):
        scaled = KernelGLM(alpha=1e-3 * s**2, alpha_scale=None).fit(kernel * s, y)
        torch.testing.assert_close(
            scaled.predict_proba(kernel * s), reference.predict_proba(kernel), atol=1e-6, rtol=0
        )
        torch.testing.assert_close(scaled.coef_ * s, reference.coef_, atol=1e-4, rtol=1e-4)
