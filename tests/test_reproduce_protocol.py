"""The authors' tau_K protocol (class-1 scores, saturated network probabilities dropped)."""

from __future__ import annotations

import math

import torch
from scipy import stats

from captum_ntk.apps.reproduce.protocol import class_one_scores, paper_tau


def test_paper_tau_is_kendall_of_class_one_scores_without_saturated_examples() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(40, generator=gen, dtype=torch.float64) * 3
    logits[:5] = torch.tensor([40.0, -40.0, 30.0, -25.0, 18.0], dtype=torch.float64)  # saturated
    scores = logits + torch.randn(40, generator=gen, dtype=torch.float64)
    p32 = torch.sigmoid(logits.float())
    keep = ((p32 > 0) & (p32 < 1)).numpy()
    assert keep.sum() < 40  # the test has saturated examples to drop
    expected = stats.kendalltau(torch.sigmoid(logits).numpy()[keep], scores.numpy()[keep])
    assert math.isclose(paper_tau(logits, scores), expected.statistic, rel_tol=1e-12)


def test_class_one_scores_and_the_gap_between_the_protocols() -> None:
    """Both models right on every example: class-1 scores rank every cross-class pair alike,
    while correct-class probabilities can disagree on the order within the saturated band."""
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    nn_logit = torch.tensor([-9.0, -8.0, -7.0, 7.0, 8.0, 9.0], dtype=torch.float64)
    glm_logit = torch.tensor([-1.0, -2.0, -3.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    p_correct = torch.sigmoid(torch.where(labels == 1, nn_logit, -nn_logit))
    assert torch.allclose(class_one_scores(p_correct, labels), torch.sigmoid(nn_logit))
    g_correct = torch.sigmoid(torch.where(labels == 1, glm_logit, -glm_logit))
    correct_class_tau = stats.kendalltau(p_correct.numpy(), g_correct.numpy()).statistic
    assert correct_class_tau < 0  # within-class orders reversed
    # 9 cross-class pairs concordant, 6 within-class pairs discordant: (9 - 6) / 15
    assert math.isclose(paper_tau(nn_logit, glm_logit), 0.2, rel_tol=1e-12)
    assert math.isnan(paper_tau(torch.tensor([50.0, -50.0]), torch.tensor([1.0, -1.0])))


def test_verdict_against_the_paper() -> None:
    from captum_ntk.apps.reproduce.report import format_summary, versus_paper

    assert versus_paper(0.703, 0.708) == "within 0.03"
    assert versus_paper(0.283, 0.708) == "OUTSIDE (-0.425)"
    assert versus_paper(float("nan"), 0.708) == "n/a" and versus_paper(0.5, None) == "n/a"
    entry = {"kernel": "trntk", "surrogate": "paper", "n_seeds": 1, "paper_tau": 0.708}
    for metric in ("tau_paper", "tau", "tad", "r_miss", "acc_nn", "r2_linear", "lds"):
        entry[f"{metric}_mean"], entry[f"{metric}_se"] = 0.283, float("nan")
    assert "OUTSIDE (-0.425)" in format_summary("MLP (MNIST2)", [entry])
    assert "reduced setting" in format_summary("MLP (MNIST2)", [{**entry, "reduced": True}])


def test_the_default_surrogate_gets_a_difference_not_a_verdict() -> None:
    from captum_ntk.apps.reproduce.report import format_summary

    entry = {"kernel": "trntk", "surrogate": "default", "n_seeds": 1, "paper_tau": 0.857}
    for metric in ("tau_paper", "tau", "tad", "r_miss", "acc_nn", "r2_linear", "lds"):
        entry[f"{metric}_mean"], entry[f"{metric}_se"] = 0.956, float("nan")
    table = format_summary("CNN (MNIST2)", [entry])
    assert "+0.099" in table and "OUTSIDE" not in table and "within" not in table


def test_lds_lines_give_the_paired_difference_and_a_plain_verdict():
    from captum_ntk.apps.reproduce.report import format_lds

    base = {"seed": 0, "kernel": "trntk", "lds_protocol": "32 subsets x 2 runs, shared seeds",
            "lds_agreement": 0.4, "lds_error": 0.01}  # fmt: skip
    rows = [
        {**base, "surrogate": "paper", "lds": 0.4, "lds_gap": 0.0, "lds_gap_error": 0.0},
        {**base, "surrogate": "default", "lds": 0.2, "lds_gap": -0.2, "lds_gap_error": 0.01},
        {**base, "seed": 1, "surrogate": "paper", "lds": 0.3, "lds_gap": 0.0, "lds_gap_error": 0.0},
        {
            **base,
            "seed": 1,
            "surrogate": "default",
            "lds": 0.31,
            "lds_gap": 0.01,
            "lds_gap_error": 0.01,
        },  # fmt: skip
        {"seed": 2, "kernel": "trntk", "surrogate": "paper", "lds": float("nan")},  # no LDS run
    ]
    lines = format_lds(rows)
    assert len(lines) == 4
    assert lines[0] == (
        "seed 0 trntk paper: LDS 0.400 ± 0.010 (32 subsets x 2 runs, shared seeds; run "
        "agreement 0.400)"
    )
    assert lines[1].endswith(
        "-0.200 ± 0.010 vs paper: BELOW (32 subsets x 2 runs, shared seeds; run agreement 0.400)"
    )
    assert "+0.010 ± 0.010 vs paper: tied within noise" in lines[3]
