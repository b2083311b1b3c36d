"""Tests of :mod:`captum_ntk.metrics`."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from scipy.special import expit, logit
from torch import nn

from captum_ntk.metrics import (
    correct_class_probability,
    faithfulness,
    forensic_precision_recall,
    kendall_tau,
    linearization,
    misclassification_coincidence_rate,
    pearson,
    spearman,
    test_accuracy_differential,
)
from captum_ntk.surrogate import KernelGLM


def brute_force_tau_b(x: list[float], y: list[float]) -> float:
    """Kendall tau-b by counting every pair."""
    concordant = discordant = tied_x = tied_y = pairs = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        pairs += 1
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        tied_x += dx == 0
        tied_y += dy == 0
        concordant += dx * dy > 0
        discordant += dx * dy < 0
    return (concordant - discordant) / math.sqrt((pairs - tied_x) * (pairs - tied_y))


# ------------------------------------------------------------------------- correlations
def test_kendall_tau_hand_example_with_ties() -> None:
    # Pairs of x = [1, 2, 2, 3], y = [1, 3, 2, 2]: (0,1) (0,2) (0,3) concordant; (1,3)
    # discordant (x up, y down); (1,2) tied in x; (2,3) tied in y. n0 = 6 pairs, so
    # tau_b = (3 - 1) / sqrt((6 - 1) * (6 - 1)) = 0.4.
    assert kendall_tau(torch.tensor([1.0, 2, 2, 3]), np.array([1.0, 3, 2, 2])) == pytest.approx(0.4)


def test_kendall_tau_matches_pair_count_with_many_ties() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, 40).astype(float)  # heavy ties in both
    y = x + rng.integers(-2, 3, 40)
    expected = brute_force_tau_b(x.tolist(), y.tolist())
    assert kendall_tau(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(
        expected, abs=1e-12
    )
    assert kendall_tau(y, x) == pytest.approx(expected, abs=1e-12)  # symmetric
    assert kendall_tau(x[:, None], y) == pytest.approx(expected, abs=1e-12)  # (n, 1) accepted


def test_correlation_errors() -> None:
    with pytest.raises(ValueError, match="constant"):
        kendall_tau(torch.ones(5), torch.arange(5.0))
    with pytest.raises(ValueError, match="constant"):
        pearson(torch.arange(5.0), torch.zeros(5))
    with pytest.raises(ValueError, match="same length"):
        kendall_tau(torch.arange(5.0), torch.arange(4.0))
    with pytest.raises(ValueError, match="NaN"):
        spearman(torch.tensor([0.0, math.nan, 1.0]), torch.arange(3.0))
    with pytest.raises(ValueError, match="at least 2"):
        kendall_tau(torch.ones(1), torch.ones(1))


def test_pearson_and_spearman() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    b = np.array([2.0, 1.0, 4.0, 3.0, 5.0])
    # Pearson by hand: centred a = [-3, -2, -1, 0, 6], centred b = [-1, -2, 1, 0, 2];
    # sum ab = 3 + 4 - 1 + 0 + 12 = 18, |a|^2 = 50, |b|^2 = 10, r = 18 / sqrt(500).
    assert pearson(a, b) == pytest.approx(18 / math.sqrt(500))
    # Spearman: ranks a = [1..5], ranks b = [2, 1, 4, 3, 5]; d^2 = 1 + 1 + 1 + 1 + 0 = 4,
    # rho = 1 - 6 * 4 / (5 * 24) = 0.8.
    assert spearman(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(0.8)
    assert isinstance(pearson(a, b), float)


# ------------------------------------------------------------------------- TAD and R_miss
def test_test_accuracy_differential() -> None:
    labels = torch.tensor([0, 1, 2, 0, 1])
    pred_nn = torch.tensor([0, 1, 2, 1, 1])  # 4/5 correct
    pred_surrogate = torch.tensor([0, 2, 2, 1, 0])  # 2/5 correct
    assert test_accuracy_differential(pred_surrogate, pred_nn, labels) == pytest.approx(-0.4)
    assert test_accuracy_differential(pred_nn, pred_surrogate, labels) == pytest.approx(0.4)
    scores = torch.nn.functional.one_hot(pred_surrogate, 3).double()  # (n, C) -> argmax
    assert test_accuracy_differential(scores, pred_nn, labels) == pytest.approx(-0.4)


def test_misclassification_coincidence_rate_worked_example() -> None:
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    pred_nn = torch.tensor([0, 2, 2, 1, 1, 0])
    pred_surrogate = torch.tensor([0, 2, 1, 1, 0, 1])
    # NN wrong at {1, 3, 5}; surrogate wrong at {1, 2, 3, 4, 5}; union has 5 examples.
    # Both wrong at {1, 3, 5}; same prediction at 1 (2 = 2) and 3 (1 = 1) but not at 5 (0 vs 1).
    # R_miss = 2 / 5.
    assert misclassification_coincidence_rate(pred_nn, pred_surrogate, labels) == pytest.approx(0.4)
    # Identical mistakes give 1; no mistakes at all gives nan (empty union).
    assert misclassification_coincidence_rate(pred_nn, pred_nn, labels) == 1.0
    assert math.isnan(misclassification_coincidence_rate(labels, labels, labels))
    # Disjoint mistakes give 0.
    assert (
        misclassification_coincidence_rate(
            np.array([1, 1, 2]), np.array([0, 2, 2]), np.array([0, 1, 2])
        )
        == 0.0
    )


def test_correct_class_probability() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    torch.testing.assert_close(
        correct_class_probability(probs, torch.tensor([0, 2])), torch.tensor([0.7, 0.6])
    )
    sigmoid = np.array([0.9, 0.2, 0.4])
    torch.testing.assert_close(
        correct_class_probability(sigmoid, np.array([1, 0, 0])),
        torch.tensor([0.9, 0.8, 0.6], dtype=torch.float64),
    )
    with pytest.raises(ValueError, match="0 or 1"):
        correct_class_probability(sigmoid, np.array([1, 2, 0]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        correct_class_probability(probs, torch.tensor([0, 3]))


# ------------------------------------------------------------------------- linearization
def test_linearization_recovers_exact_generalized_logistic() -> None:
    rng = np.random.default_rng(0)
    p_surrogate = expit(rng.normal(0.0, 2.5, 400))
    # p_nn = a + (b - a) sigmoid(c (logit(p_s) - d)): an exact 4-parameter logistic map.
    a, b, c, d = 0.05, 0.9, 1.7, 0.3
    p_nn = a + (b - a) * expit(c * (logit(p_surrogate) - d))
    r2 = linearization(torch.from_numpy(p_surrogate), torch.from_numpy(p_nn), seed=1)
    assert set(r2) == {"linear", "logistic4", "arctan4"}
    assert r2["logistic4"] == pytest.approx(1.0, abs=1e-6)
    # a, b away from 0 and 1 make the relation curved in logit space: the line fits worse.
    assert r2["linear"] < 0.99
    assert r2["arctan4"] > r2["linear"]


def test_linearization_linear_map_and_noise() -> None:
    rng = np.random.default_rng(1)
    u = rng.normal(0.0, 2.0, 300)
    exact = linearization(expit(u), expit(2.0 * u - 0.5))
    assert exact["linear"] == pytest.approx(1.0, abs=1e-10)
    assert exact["logistic4"] == pytest.approx(1.0, abs=1e-4)
    noisy = linearization(expit(u), expit(2.0 * u - 0.5 + rng.normal(0.0, 2.0, 300)))
    # Signal variance 4 * 4 = 16, noise 4: the population R^2 is 16 / 20 = 0.8.
    assert 0.6 < noisy["linear"] < 0.9
    assert linearization(expit(u), expit(2.0 * u)) == linearization(expit(u), expit(2.0 * u))


def test_linearization_masks_saturated_probabilities() -> None:
    rng = np.random.default_rng(2)
    u = rng.normal(0.0, 1.0, 100)
    p_surrogate, p_nn = expit(u), expit(u)
    p_nn[:40] = 1.0  # saturated: dropped rather than sent to logit = inf
    assert linearization(p_surrogate, p_nn)["linear"] == pytest.approx(1.0)
    p_nn[:95] = 0.0
    with pytest.raises(ValueError, match="only 5 examples"):
        linearization(p_surrogate, p_nn)
    with pytest.raises(ValueError, match="probabilities"):
        linearization(u, expit(u))


# ------------------------------------------------------------------------- forensics
def test_forensic_precision_recall() -> None:
    # 6 training points, 0-2 poisoned. Kernel rows rank the training points; top=3, threshold=2.
    train_poisoned = torch.tensor([True, True, True, False, False, False])
    kernel = torch.tensor(
        [
            [0.9, 0.8, 0.1, 0.7, 0.0, 0.0],  # top3 = {0, 1, 3}: 2 poisoned -> flagged (TP)
            [0.1, 0.0, 0.0, 0.9, 0.8, 0.7],  # top3 = {3, 4, 5}: 0 poisoned -> not flagged (FN)
            [0.9, 0.0, 0.8, 0.7, 0.0, 0.0],  # top3 = {0, 2, 3}: flagged but clean (FP)
            [0.0, 0.0, 0.0, 0.9, 0.8, 0.7],  # clean, not flagged (TN)
            [0.5, 0.5, 0.0, 0.5, 0.5, 0.0],  # ties: stable order keeps {0, 1, 3} -> flagged (TP)
        ]
    )
    test_poisoned = torch.tensor([True, True, False, False, True])
    precision, recall = forensic_precision_recall(
        kernel, train_poisoned, test_poisoned, top=3, threshold=2
    )
    assert precision == pytest.approx(2 / 3)  # TP = 2, FP = 1
    assert recall == pytest.approx(2 / 3)  # TP = 2, FN = 1
    # Nothing flagged: precision undefined (nan by default, or zero_division).
    precision, recall = forensic_precision_recall(
        kernel, torch.zeros(6, dtype=torch.bool), test_poisoned, top=3, threshold=2
    )
    assert math.isnan(precision) and recall == 0.0
    precision, _ = forensic_precision_recall(
        kernel.numpy(),
        np.zeros(6, dtype=bool),
        test_poisoned.numpy(),
        top=3,
        threshold=2,
        zero_division=0.0,
    )
    assert precision == 0.0
    with pytest.raises(ValueError, match="n_train = 6"):
        forensic_precision_recall(kernel, train_poisoned[:5], test_poisoned)
    with pytest.raises(ValueError, match="threshold"):
        forensic_precision_recall(kernel, train_poisoned, test_poisoned, top=3, threshold=4)


# ------------------------------------------------------------------------- faithfulness
class LinearKernelAttribution:
    """Stand-in for a kernel attribution: κ(x, x') = <x, x'> + 1 on a fixed training set."""

    def __init__(self, train_x: torch.Tensor, train_y: torch.Tensor) -> None:
        self.train_x, self.train_y = train_x, train_y
        self.surrogate: KernelGLM | None = None
        self.fit_calls = 0
        self.batches: list[Any] = []

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.train_x.T + 1

    def influence(self, inputs: Any) -> torch.Tensor:
        self.batches.append(inputs)
        x = inputs["x"] if isinstance(inputs, dict) else inputs[0]  # Captum: (x, labels)
        return self.kernel(x)

    def fit_surrogate(self) -> KernelGLM:
        self.fit_calls += 1
        self.surrogate = KernelGLM(alpha=1e-2).fit(self.kernel(self.train_x), self.train_y)
        return self.surrogate


def toy_classification(
    n_outputs: int, n: int, seed: int
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    model = nn.Linear(3, n_outputs).double().eval()
    with torch.no_grad():
        model.weight.copy_(torch.randn(n_outputs, 3, generator=generator, dtype=torch.float64))
        model.bias.zero_()
    x = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    logits = model(x).detach() + 0.7 * torch.randn(
        n, n_outputs, generator=generator, dtype=torch.float64
    )
    y = (logits[:, 0] > 0).long() if n_outputs == 1 else logits.argmax(dim=1)
    return model, x, y


def test_faithfulness_multiclass_matches_primitives() -> None:
    model, x, y = toy_classification(3, 120, seed=0)
    train_x, train_y, test_x, test_y = x[:80], y[:80], x[80:], y[80:]
    attribution = LinearKernelAttribution(train_x, train_y)
    result = faithfulness(model, attribution, test_x, test_y, batch_size=7, return_per_example=True)

    assert attribution.fit_calls == 1
    glm = attribution.surrogate
    assert glm is not None
    x_batch, labels_batch = attribution.batches[0]  # the Captum batch convention
    assert torch.equal(x_batch, test_x) and torch.equal(labels_batch, test_y)

    with torch.no_grad():
        p_nn = torch.softmax(model(test_x), dim=1)
    probs_surrogate = glm.predict_proba(attribution.kernel(test_x))
    pred_nn, pred_surrogate = p_nn.argmax(dim=1), probs_surrogate.argmax(dim=1)
    p_nn_correct = p_nn[torch.arange(40), test_y]
    p_surrogate_correct = probs_surrogate[torch.arange(40), test_y]
    assert result["tau"] == pytest.approx(kendall_tau(p_nn_correct, p_surrogate_correct))
    assert result["tad"] == pytest.approx(
        test_accuracy_differential(pred_surrogate, pred_nn, test_y)
    )
    r_miss = misclassification_coincidence_rate(pred_nn, pred_surrogate, test_y)
    assert result["r_miss"] == pytest.approx(r_miss, nan_ok=True)
    assert result["acc_nn"] == pytest.approx((pred_nn == test_y).double().mean().item())
    assert result["acc_surrogate"] - result["acc_nn"] == pytest.approx(result["tad"])
    torch.testing.assert_close(result["p_nn"], p_nn_correct)
    torch.testing.assert_close(result["p_surrogate"], p_surrogate_correct)
    assert result["tau"] > 0.3  # a linear model and a linear-kernel GLM agree

    # The cached surrogate is reused; an explicit one overrides it.
    faithfulness(model, attribution, test_x, test_y)
    assert attribution.fit_calls == 1
    other = KernelGLM(alpha=10.0).fit(attribution.kernel(train_x), train_y)
    overridden = faithfulness(model, attribution, test_x, test_y, surrogate=other)
    assert overridden["tau"] != result["tau"]
    assert attribution.fit_calls == 1


def test_faithfulness_one_logit_network() -> None:
    model, x, y = toy_classification(1, 100, seed=1)
    attribution = LinearKernelAttribution(x[:60], y[:60])
    result = faithfulness(model, attribution, x[60:], y[60:], return_per_example=True)
    assert attribution.surrogate is not None and attribution.surrogate.coef_.shape == (1, 60)
    with torch.no_grad():
        logit_nn = model(x[60:])[:, 0]
    expected = torch.where(y[60:] == 1, torch.sigmoid(logit_nn), torch.sigmoid(-logit_nn))
    torch.testing.assert_close(result["p_nn"], expected)
    assert torch.equal(result["pred_nn"], (logit_nn > 0).long())
    # tau from an independent computation: scipy on float64 log-sigmoids of both models' logits
    logit_glm = attribution.surrogate.decision_function(attribution.kernel(x[60:])).double()
    sign = torch.where(y[60:] == 1, 1.0, -1.0).double()
    expected_tau = stats.kendalltau(
        F.logsigmoid(sign * logit_nn).numpy(), F.logsigmoid(sign * logit_glm).numpy()
    ).statistic
    assert result["tau"] == pytest.approx(expected_tau, abs=1e-12)
    # a linear kernel explains a linear network: the level must be high, not merely in [-1, 1]
    assert result["tau"] >= 0.85


class KeywordModel(nn.Module):
    """Takes keyword inputs and returns an object with ``.logits`` (Hugging Face style)."""

    class Output:
        def __init__(self, logits: torch.Tensor) -> None:
            self.logits = logits

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> KeywordModel.Output:
        return self.Output(self.inner(x) * scale)


def test_faithfulness_mapping_and_tuple_inputs() -> None:
    model, x, y = toy_classification(3, 90, seed=2)
    attribution = LinearKernelAttribution(x[:60], y[:60])
    reference = faithfulness(model, attribution, x[60:], y[60:])

    keyword_model = KeywordModel(model)
    scale = torch.ones(30, 1, dtype=torch.float64)
    mapped = faithfulness(
        keyword_model, attribution, {"x": x[60:], "scale": scale}, y[60:], batch_size=4
    )
    assert "labels" in attribution.batches[-1]
    assert mapped == pytest.approx(reference, nan_ok=True)

    def two_argument_forward(features: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return model(features) + offset

    offset = torch.zeros(30, 1, dtype=torch.float64)
    tupled = faithfulness(two_argument_forward, attribution, (x[60:], offset), y[60:], batch_size=8)
    assert tupled == pytest.approx(reference, nan_ok=True)

    kernel = attribution.kernel(x[60:])
    precomputed = faithfulness(model, attribution, x[60:], y[60:], test_kernel=kernel)
    assert precomputed == pytest.approx(reference, nan_ok=True)


def test_faithfulness_errors() -> None:
    model, x, y = toy_classification(3, 60, seed=3)
    attribution = LinearKernelAttribution(x[:40], y[:40])
    with pytest.raises(ValueError, match="20 examples but labels has 19"):
        faithfulness(model, attribution, x[40:], y[40:59])
    binary = KernelGLM(alpha=1e-4).fit(attribution.kernel(x[:40]), (y[:40] > 0).long())
    with pytest.raises(ValueError, match="2 classes but the network has 3"):
        faithfulness(model, attribution, x[40:], y[40:], surrogate=binary)


# ------------------------------------------------------------------------- saturation
def test_saturated_probabilities_tie_in_float32_but_not_float64_log_probabilities() -> None:
    from captum_ntk.metrics import correct_class_log_probability, correct_class_margin, tied_pairs

    margins = torch.linspace(20.0, 40.0, 12)  # confident network: float32 sigmoid rounds to 1
    labels = torch.tensor([0, 1] * 6)
    logits = torch.where(labels == 1, margins, -margins)  # one logit, every example correct
    p32 = torch.sigmoid(torch.where(labels == 1, logits, -logits))
    assert tied_pairs(p32) == 12 * 11 // 2  # all 1.0: Kendall tau on these is undefined
    log_p = correct_class_log_probability(logits, labels)
    assert log_p.dtype == torch.float64 and tied_pairs(log_p) == 0
    assert torch.equal(log_p.argsort(), margins.argsort())
    torch.testing.assert_close(correct_class_margin(logits, labels), margins.double())
    # 10 classes: margin is the correct logit minus the largest other
    multi = torch.zeros(3, 4, dtype=torch.float64)
    multi[:, 2] = torch.tensor([30.0, 35.0, 40.0])
    multi[:, 0] = 1.0
    torch.testing.assert_close(
        correct_class_margin(multi, torch.tensor([2, 2, 2])),
        torch.tensor([29.0, 34.0, 39.0], dtype=torch.float64),
    )


def test_faithfulness_reports_no_ties_for_saturated_network() -> None:
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(30, 3, generator=generator, dtype=torch.float64)
    test = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    y_train = (train[:, 0] > 0).long()
    glm = KernelGLM(alpha=1e-2).fit(train @ train.T, y_train)
    test_kernel = test @ train.T
    scores = glm.decision_function(test_kernel)
    labels = (scores > 0).long()

    def network(x: torch.Tensor) -> torch.Tensor:  # a monotone, saturated copy of the kGLM
        s = glm.decision_function(x @ train.T)
        return (torch.sign(s) * (30 + 5 * s.abs())).float()

    result = faithfulness(network, None, test, labels, surrogate=glm, test_kernel=test_kernel)
    p32 = torch.sigmoid(network(test).abs())
    assert tied_pairs_count(p32) > 0  # float32 probabilities tie at 1.0
    assert result["ties"] == 0 and result["ties_nn"] == 0
    assert result["tau"] == pytest.approx(1.0) and result["tau_margin"] == pytest.approx(1.0)


def tied_pairs_count(values: torch.Tensor) -> int:
    from captum_ntk.metrics import tied_pairs

    return tied_pairs(values)
