"""Faithful kGLM surrogates: targets, alpha="auto", alpha_scale, absent classes (issues 7, 12)."""

from __future__ import annotations

import models
import numpy as np
import pytest
import torch
from scipy import optimize, special, stats
from sklearn.linear_model import Ridge
from torch.utils.data import TensorDataset

import captum_ntk as cn
from captum_ntk.apps.tasks import near_separable_task
from captum_ntk.metrics import faithfulness
from captum_ntk.surrogate import KernelGLM
from captum_ntk.surrogate.selection import stratified_folds

TARGETS = ("logits", "probabilities", "labels", "predictions")


def random_kernel(n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    return scale * torch.exp(-0.25 * torch.cdist(x, x) ** 2)


# ------------------------------------------------------------------ the near-separable task
@pytest.fixture(scope="module")
def separable():
    torch.manual_seed(0)
    task = near_separable_task(seed=0)
    attr = cn.TrNTK0Attribution(task.model, TensorDataset(task.x_train, task.y_train))
    return task, attr, attr.influence(task.x_test)


def test_near_separable_task_is_confident_and_deterministic(separable) -> None:
    task, _, _ = separable
    assert task.accuracy() > 0.99
    assert not task.model.training
    with torch.no_grad():
        logits = task.model(task.x_train)[:, 0]
    # confident: float32 sigmoid probabilities of many training points round to exactly 1.0
    assert int((torch.sigmoid(logits.abs()) == 1.0).sum()) > 0 or logits.abs().median() > 5


def test_default_surrogate_is_faithful_on_near_separable_task(separable) -> None:
    task, attr, test_kernel = separable
    # faithfulness alone (consistency_weight=0): the near-interpolating kGLM, tau_K >= 0.8
    faithful = attr.fit_surrogate(consistency_weight=0)
    faithful_scores = faithfulness(
        task.model, attr, task.x_test, task.y_test, surrogate=faithful, test_kernel=test_kernel
    )
    assert faithful_scores["tau"] >= 0.8
    assert faithful_scores["ties"] == 0
    # defaults: target="logits", alpha="auto" with counterfactual self-consistency, which
    # trades faithfulness for attributions that are not a cancellation (docs/counterfactual.md)
    glm = attr.fit_surrogate()
    assert glm.alpha_ > faithful.alpha_
    scores = faithfulness(
        task.model, attr, task.x_test, task.y_test, surrogate=glm, test_kernel=test_kernel
    )
    assert scores["tau"] >= 0.7
    assert scores["ties"] == 0
    assert abs(scores["tad"]) <= 0.01
    # the paper's label-fitted kGLM is less faithful to this confident network (issue 12)
    paper = attr.fit_surrogate(target="labels", alpha=1e-3)
    paper_scores = faithfulness(
        task.model, attr, task.x_test, task.y_test, surrogate=paper, test_kernel=test_kernel
    )
    assert paper_scores["tau"] < scores["tau"] - 0.1
    assert paper_scores["tau"] < faithful_scores["tau"] - 0.2


# ------------------------------------------------------------------ Eq. 3 sums for every target
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", ["mlp", "single_logit"])
def test_attributions_sum_to_surrogate_logits(target: str, case: str) -> None:
    model = models.make_mlp() if case == "mlp" else models.make_single_logit()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(24, model_in(model), generator=generator, dtype=torch.float64)
    with torch.no_grad():
        logits = model(x)
    y = (
        logits.reshape(24, -1).argmax(1)
        if logits.dim() == 2 and logits.shape[1] > 1
        else (logits.reshape(-1) > 0).long()
    )
    y[:3] = 1 - y[:3].clamp(max=1)  # labels differ from the predictions
    attr = cn.TrNTKAttribution(model, TensorDataset(x[:16], y[:16]), batch_size=8)
    glm = attr.fit_surrogate(target=target, alpha=1e-3)
    assert glm.alpha_ == 1e-3 and glm.cv_results_ is None
    test = x[16:]
    attributions = attr.attribute(test)
    assert attributions.dtype == torch.float64 and bool(torch.isfinite(attributions).all())
    expected = glm.decision_function(attr.influence(test)).reshape(8, -1)
    torch.testing.assert_close(attributions.sum(dim=2), expected, rtol=1e-12, atol=1e-12)
    n_logits = logits.reshape(24, -1).shape[1]
    if target == "logits":
        assert glm.coef_.shape[0] == n_logits  # one row per network logit


def model_in(model: torch.nn.Module) -> int:
    return next(m for m in model.modules() if isinstance(m, torch.nn.Linear)).in_features


def test_absent_class_attributions_are_finite_and_sortable() -> None:
    kernel = random_kernel(30, seed=2)
    y = torch.tensor([0, 1, 3] * 10)  # classes 2 and 4 never occur
    glm = KernelGLM(alpha=1e-3).fit(kernel, y, num_classes=5)
    assert bool(torch.isfinite(glm.intercept_).all())
    assert torch.all(glm.coef_[[2, 4]] == 0)
    train_logits = glm.decision_function(kernel)
    # the absent classes sit 1000 below every present logit on the training set
    floor = train_logits[:, [0, 1, 3]].min() - 1000.0
    torch.testing.assert_close(glm.intercept_[[2, 4]], floor.expand(2))
    assert float(glm.predict_log_proba(kernel)[:, [2, 4]].max()) < -999
    assert float(glm.predict_proba(kernel)[:, [2, 4]].max()) == 0.0
    assert set(glm.predict(kernel).tolist()) <= {0, 1, 3}
    test_kernel = random_kernel(40, seed=3)[:7, :30]
    attributions = test_kernel[:, None, :] * glm.coef_[None] + (glm.intercept_ / 30)[None, :, None]
    assert bool(torch.isfinite(attributions).all())
    torch.testing.assert_close(attributions.sum(2), glm.decision_function(test_kernel))
    order = attributions[:, 2].argsort(dim=1, descending=True)  # sorting works (no NaN)
    assert order.shape == (7, 30)
    # the present classes are those of the fit without the absent ones
    compact = KernelGLM(alpha=1e-3).fit(kernel, y)
    torch.testing.assert_close(
        glm.predict_proba(kernel)[:, [0, 1, 3]], compact.predict_proba(kernel), atol=1e-12, rtol=0
    )


# ------------------------------------------------------------------ alpha="auto"
def test_alpha_auto_is_deterministic_and_consistent() -> None:
    kernel = random_kernel(60, seed=4, scale=250.0)  # unnormalised units
    generator = torch.Generator().manual_seed(5)
    logits = (kernel / 250.0) @ torch.randn(60, 3, generator=generator, dtype=torch.float64)
    probs = torch.softmax(3 * logits, dim=1)
    grid = (1e-1, 1e-3, 1e-5)
    first = KernelGLM(alpha_grid=grid, cv=3).fit(kernel, probs)
    second = KernelGLM(alpha_grid=grid, cv=3).fit(kernel, probs)
    results = first.cv_results_
    assert set(results) >= {"alphas", "mean_tau", "std_tau"}
    np.testing.assert_array_equal(results["alphas"], grid)
    np.testing.assert_array_equal(results["mean_tau"], second.cv_results_["mean_tau"])
    assert first.alpha_ == second.alpha_ == grid[int(np.argmax(results["mean_tau"]))]
    np.testing.assert_allclose(results["mean_tau"], results["fold_tau"].mean(axis=1))
    np.testing.assert_allclose(results["std_tau"], results["fold_tau"].std(axis=1))
    # fold tau recomputed independently: fit on the sub-block with the full kernel's scale,
    # score the held-out block against the targets' own correct-class log-probabilities
    scale = float(kernel.diagonal().pow(2).mean().sqrt())
    truth = probs.argmax(dim=1)
    folds = stratified_folds(truth, 3, seed=0)
    for g, alpha in enumerate(grid):
        held = folds[1]
        train = torch.tensor(sorted(set(range(60)) - set(held.tolist())))
        sub = KernelGLM(alpha=alpha, alpha_scale=scale).fit(kernel[train][:, train], probs[train])
        log_p = torch.log_softmax(sub.decision_function(kernel[held][:, train]), 1)
        tau = stats.kendalltau(
            probs[held, truth[held]].log(), log_p[torch.arange(len(held)), truth[held]]
        ).statistic
        assert results["fold_tau"][g, 1] == pytest.approx(tau, abs=1e-9)


def test_alpha_auto_needs_the_network_for_hard_labels() -> None:
    kernel = random_kernel(20, seed=6)
    y = torch.arange(20) % 2
    with pytest.raises(ValueError, match="network_logits"):
        KernelGLM().fit(kernel, y)
    logits = torch.linspace(-3, 3, 20)
    glm = KernelGLM(alpha_grid=(1e-2, 1e-4), cv=2).fit(kernel, y, network_logits=logits)
    assert glm.alpha_ in (1e-2, 1e-4)


def test_alpha_auto_binary_fit_of_two_present_classes_scores_the_right_class() -> None:
    """A one-logit kGLM fitted to classes {0, 2} of 3 (class 1 absent) must rank each held-out
    point's own class: the cross-validation equals that of the same problem relabelled {0, 1}
    with the network's columns permuted to match (log-softmax is permutation invariant)."""
    kernel = random_kernel(40, seed=14)
    generator = torch.Generator().manual_seed(15)
    logits = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    logits[:, 1] -= 5.0  # the network rarely predicts class 1
    y = torch.where(logits[:, 0] > logits[:, 2], 0, 2)
    options = dict(alpha_grid=(1e-1, 1e-3, 1e-5), cv=3)
    sparse = KernelGLM(**options).fit(kernel, y, num_classes=3, network_logits=logits)
    relabelled = KernelGLM(**options).fit(kernel, y // 2, network_logits=logits[:, [0, 2, 1]])
    np.testing.assert_allclose(
        sparse.cv_results_["fold_tau"], relabelled.cv_results_["fold_tau"], rtol=0, atol=1e-12
    )
    assert sparse.alpha_ == relabelled.alpha_


def test_alpha_auto_sklearn_scores_its_one_vs_rest_probabilities() -> None:
    """With the sklearn backend, held-out tau ranks SGDClassifier's own predict_proba."""
    from sklearn.linear_model import SGDClassifier

    kernel = random_kernel(36, seed=16)
    generator = torch.Generator().manual_seed(17)
    logits = (kernel @ torch.randn(36, 3, generator=generator, dtype=torch.float64)) / 6.0
    y = logits.argmax(dim=1)
    grid = (1e-1, 1e-3)
    glm = KernelGLM(backend="sklearn", alpha_grid=grid, alpha_scale=None, cv=2)
    glm.fit(kernel, y, network_logits=logits)
    folds = stratified_folds(y, 2, seed=0)
    network_log_p = torch.log_softmax(logits, dim=1)
    for g, alpha in enumerate(grid):
        for f, held in enumerate(folds):
            train = torch.tensor(sorted(set(range(36)) - set(held.tolist())))
            classifier = SGDClassifier(
                loss="log_loss",
                penalty="l2",
                alpha=alpha,
                class_weight="balanced",
                max_iter=1000,
                tol=1e-3,
                random_state=0,
            ).fit(kernel[train][:, train].numpy(), y[train].numpy())
            proba = classifier.predict_proba(kernel[held][:, train].numpy())
            rows = np.arange(len(held))
            tau = stats.kendalltau(
                network_log_p[held, y[held]].numpy(), np.log(proba[rows, y[held].numpy()])
            ).statistic
            assert glm.cv_results_["fold_tau"][g, f] == pytest.approx(tau, abs=1e-9)


# ------------------------------------------------------------------ alpha_scale
@pytest.mark.parametrize("loss", ["log_loss", "squared"])
def test_alpha_scale_auto_makes_the_fit_unit_free(loss: str) -> None:
    kernel = random_kernel(40, seed=7)
    generator = torch.Generator().manual_seed(8)
    z = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    y = torch.softmax(z, 1) if loss == "log_loss" else z
    reference = KernelGLM(alpha=1e-3, loss=loss, tol=1e-10).fit(kernel, y)
    scaled = KernelGLM(alpha=1e-3, loss=loss, tol=1e-10).fit(kernel * 1e3, y)
    torch.testing.assert_close(
        scaled.decision_function(kernel * 1e3),
        reference.decision_function(kernel),
        atol=1e-6,
        rtol=0,
    )
    assert scaled.penalty_ == pytest.approx(1e-3 * scaled.kernel_scale_**2)
    # alpha_scale=None: alpha in the kernel's units (1e3 x kernel needs 1e6 x alpha)
    raw = KernelGLM(
        alpha=1e-3 * 1e6 * reference.kernel_scale_**2, alpha_scale=None, loss=loss, tol=1e-10
    ).fit(kernel * 1e3, y)
    torch.testing.assert_close(
        raw.decision_function(kernel * 1e3), reference.decision_function(kernel), atol=1e-6, rtol=0
    )


# ------------------------------------------------------------------ independent references
def _soft_objective(
    theta: np.ndarray, kernel: np.ndarray, targets: np.ndarray, penalty: float
) -> float:
    n, c = targets.shape
    coef, intercept = theta[: c * n].reshape(c, n), theta[c * n :]
    logits = kernel @ coef.T + intercept
    log_p = logits - special.logsumexp(logits, axis=1, keepdims=True)
    return float(-(targets * log_p).sum(1).mean() + 0.5 * penalty * (coef**2).sum())


def test_soft_target_fit_matches_scipy_minimiser() -> None:
    kernel = random_kernel(12, seed=9)
    generator = torch.Generator().manual_seed(10)
    targets = torch.softmax(torch.randn(12, 3, generator=generator, dtype=torch.float64), 1)
    penalty = 1e-2
    glm = KernelGLM(alpha=penalty, alpha_scale=None, class_weight=None, tol=1e-12).fit(
        kernel, targets
    )
    k, t = kernel.numpy(), targets.numpy()
    solution = optimize.minimize(
        _soft_objective,
        np.zeros(3 * 12 + 3),
        args=(k, t, penalty),
        method="BFGS",
        options={"gtol": 1e-11, "maxiter": 10000},
    )
    expected = torch.from_numpy(
        special.softmax(k @ solution.x[:36].reshape(3, 12).T + solution.x[36:], axis=1)
    )
    torch.testing.assert_close(glm.predict_proba(kernel), expected, atol=1e-6, rtol=0)
    # binary soft targets (N,): the one-logit logistic loss with a soft target
    p = targets[:, 0]
    binary = KernelGLM(alpha=penalty, alpha_scale=None, class_weight=None, tol=1e-12).fit(kernel, p)

    def objective(theta: np.ndarray) -> float:
        s = k @ theta[:12] + theta[12]
        loss = -(p.numpy() * -np.logaddexp(0, -s) + (1 - p.numpy()) * -np.logaddexp(0, s))
        return float(loss.mean() + 0.5 * penalty * (theta[:12] ** 2).sum())

    solution = optimize.minimize(
        objective, np.zeros(13), method="BFGS", options={"gtol": 1e-11, "maxiter": 10000}
    )
    expected_s = torch.from_numpy(k @ solution.x[:12] + solution.x[12])
    assert binary.coef_.shape == (1, 12)
    torch.testing.assert_close(binary.decision_function(kernel), expected_s, atol=1e-5, rtol=0)


def test_squared_loss_is_sklearn_ridge_on_kernel_rows() -> None:
    kernel = random_kernel(30, seed=11)
    generator = torch.Generator().manual_seed(12)
    z = torch.randn(30, 4, generator=generator, dtype=torch.float64)
    penalty = 1e-3
    glm = KernelGLM(alpha=penalty, alpha_scale=None, loss="squared", class_weight=None).fit(
        kernel, z
    )
    ridge = Ridge(alpha=penalty * 30).fit(kernel.numpy(), z.numpy())
    torch.testing.assert_close(glm.coef_, torch.from_numpy(ridge.coef_), atol=1e-8, rtol=1e-6)
    torch.testing.assert_close(
        glm.intercept_, torch.from_numpy(ridge.intercept_), atol=1e-8, rtol=1e-6
    )
    one = KernelGLM(alpha=penalty, alpha_scale=None, loss="squared", class_weight=None).fit(
        kernel, z[:, 0]
    )
    assert one.coef_.shape == (1, 30) and one.decision_function(kernel).shape == (30,)


def test_target_errors() -> None:
    kernel = random_kernel(10, seed=13)
    with pytest.raises(ValueError, match="sum to 1"):
        KernelGLM(alpha=1e-3).fit(kernel, torch.full((10, 3), 0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        KernelGLM(alpha=1e-3).fit(kernel, torch.linspace(-0.5, 0.5, 10))
    with pytest.raises(ValueError, match="hard labels only"):
        KernelGLM(alpha=1e-3, backend="sklearn").fit(kernel, torch.linspace(0.1, 0.9, 10))
    with pytest.raises(ValueError, match="loss"):
        KernelGLM(loss="hinge").fit(kernel, torch.arange(10) % 2)
