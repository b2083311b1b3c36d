"""select_by_lds: choose on validation test examples, report the LDS on held-out ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from captum_ntk.metrics import LdsSelectionResult, select_by_lds


def _ground_truth(n_test: int = 20, n_train: int = 40, m: int = 30, noise: float = 0.05):
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(m, n_train, generator=gen) < 0.5
    true = torch.randn(n_test, n_train, generator=gen, dtype=torch.float64)
    outputs = masks.double() @ true.T + noise * torch.randn(m, n_test, generator=gen).double()
    return masks, outputs, true


def _reference_lds(scores: torch.Tensor, masks, outputs, examples) -> list[float]:
    """Per-example Spearman by scipy, independently of the library's rank code."""
    predictions = masks.double().numpy() @ scores.numpy().T
    return [spearmanr(predictions[:, z], outputs.numpy()[:, z])[0] for z in examples.tolist()]


def test_the_true_datamodel_wins_and_holds_up_on_held_out_examples() -> None:
    masks, outputs, true = _ground_truth()
    gen = torch.Generator().manual_seed(1)
    candidates = {
        "noise": torch.randn(true.shape, generator=gen, dtype=torch.float64),
        "true": true,
        "negated": -true,
    }
    choice = select_by_lds(candidates, masks, outputs)
    assert isinstance(choice, LdsSelectionResult)
    assert choice.best == "true"
    assert choice.held_out["true"][0] > 0.9
    assert choice.held_out["negated"][0] < -0.9
    assert abs(choice.held_out["noise"][0]) < 0.5
    assert "chosen" in [line for line in choice.summary().splitlines() if "| true |" in line][0]


def test_values_match_scipy_on_each_part() -> None:
    masks, outputs, true = _ground_truth(noise=3.0)  # noisy: correlations well inside (-1, 1)
    noisy = true + torch.randn(true.shape, generator=torch.Generator().manual_seed(2)).double()
    choice = select_by_lds({"a": noisy, "b": true}, masks, outputs, validation_fraction=0.3)
    for name, scores in (("a", noisy), ("b", true)):
        val = _reference_lds(scores, masks, outputs, choice.validation_examples)
        held = _reference_lds(scores, masks, outputs, choice.held_out_examples)
        assert choice.validation[name] == pytest.approx(np.mean(val), abs=1e-12)
        assert choice.held_out[name][0] == pytest.approx(np.mean(held), abs=1e-12)
        se = np.std(held, ddof=1) / math.sqrt(len(held))
        assert choice.held_out[name][1] == pytest.approx(se, abs=1e-12)


def test_split_is_seeded_disjoint_and_complete() -> None:
    masks, outputs, true = _ground_truth(n_test=21)
    first = select_by_lds({"t": true}, masks, outputs, validation_fraction=0.3, seed=5)
    again = select_by_lds({"t": true}, masks, outputs, validation_fraction=0.3, seed=5)
    other = select_by_lds({"t": true}, masks, outputs, validation_fraction=0.3, seed=6)
    val, held = first.validation_examples, first.held_out_examples
    assert val.numel() == round(0.3 * 21) and held.numel() == 21 - val.numel()
    assert sorted(torch.cat([val, held]).tolist()) == list(range(21))
    assert torch.equal(val, again.validation_examples)
    assert not torch.equal(val, other.validation_examples)


def test_repeated_runs_are_averaged_and_ties_go_to_the_first() -> None:
    masks, outputs, true = _ground_truth(noise=3.0)
    wobble = 5 * torch.randn(outputs.shape, generator=torch.Generator().manual_seed(3)).double()
    runs = torch.stack([outputs + wobble, outputs - wobble], dim=1)  # (M, R, n_test), mean: outputs
    noisy = true + torch.randn(true.shape, generator=torch.Generator().manual_seed(4)).double()
    candidates = {"first": noisy, "second": noisy.clone()}
    choice = select_by_lds(candidates, masks, runs)
    assert choice.best == "first"
    assert choice.validation["first"] == choice.validation["second"]
    on_mean = select_by_lds(candidates, masks, outputs)
    on_first_run = select_by_lds(candidates, masks, runs[:, 0])
    assert choice.validation["first"] == pytest.approx(on_mean.validation["first"], abs=1e-12)
    assert abs(choice.validation["first"] - on_first_run.validation["first"]) > 0.05


def test_candidates_are_ranked_on_the_same_examples() -> None:
    # A candidate that attributes only one validation example (constant predictions, hence no
    # correlation, everywhere else) must not win on that one example against a candidate that
    # predicts every example fairly well.
    masks, outputs, true = _ground_truth(n_test=20, noise=3.0)
    dense = true + torch.randn(true.shape, generator=torch.Generator().manual_seed(5)).double()
    first = select_by_lds({"dense": dense}, masks, outputs, seed=0)
    keep = int(first.validation_examples[0])
    sparse = torch.zeros_like(true)
    sparse[keep] = true[keep]  # perfect on one example, nothing on the others
    choice = select_by_lds({"sparse": sparse, "dense": dense}, masks, outputs, seed=0)
    assert choice.best == "dense"
    assert choice.validation["sparse"] == pytest.approx(
        _reference_lds(true, masks, outputs, torch.tensor([keep]))[0] / 10, abs=1e-12
    )
    assert choice.defined["sparse"] == 0 and choice.defined["dense"] == 10
    assert math.isnan(choice.held_out["sparse"][0])
    assert "0 / 10" in choice.summary()


def test_one_held_out_example_has_no_standard_error() -> None:
    masks, outputs, true = _ground_truth(n_test=4)
    choice = select_by_lds({"t": true}, masks, outputs, validation_fraction=0.75)
    assert choice.held_out_examples.numel() == 1
    assert math.isfinite(choice.held_out["t"][0]) and math.isnan(choice.held_out["t"][1])


def test_bad_input_says_what_to_do() -> None:
    masks, outputs, true = _ground_truth(n_test=3)
    with pytest.raises(ValueError, match="at least one candidate"):
        select_by_lds({}, masks, outputs)
    for fraction in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"in \(0, 1\)"):
            select_by_lds({"t": true}, masks, outputs, validation_fraction=fraction)
    with pytest.raises(ValueError, match="leaves a part empty"):
        select_by_lds({"t": true}, masks, outputs, validation_fraction=0.1)
    with pytest.raises(ValueError, match="candidate 'wide'"):
        select_by_lds({"t": true, "wide": torch.zeros(3, 41)}, masks, outputs)
    with (
        pytest.raises(ValueError, match="no candidate has a defined correlation"),
        pytest.warns(RuntimeWarning),
    ):
        select_by_lds({"flat": torch.zeros(3, 40)}, masks, outputs)


def test_select_by_lds_chooses_a_kglm_setting_on_a_retrained_digits_mlp() -> None:
    # The documented use: a kGLM per setting, attributions of the ground truth's test examples,
    # chosen on half of them and scored on the other half.
    from dataclasses import replace

    from torch.utils.data import TensorDataset

    from captum_ntk import TrNTKAttribution
    from captum_ntk.apps.counterfactual import get_task

    task = replace(get_task("digits-mlp"), n_train=120, n_test=40, epochs=3)
    x_train, y_train, x_test, y_test = task.data
    truth = task.harness().subset_ground_truth(6, 1, seed=0, shared_seeds=True)
    attr = TrNTKAttribution(task.train(torch.arange(120), seed=0), TensorDataset(x_train, y_train))
    candidates = {}
    for alpha in (1e-1, 1e-4):
        attr.fit_surrogate(target="labels", alpha=alpha)
        candidates[f"labels {alpha:g}"] = attr.attribute(x_test, target=y_test)
    choice = select_by_lds(candidates, truth.masks, truth.outputs)
    assert choice.best in candidates
    assert all(math.isfinite(v) for v in choice.validation.values())
    assert all(math.isfinite(lds) and error > 0 for lds, error in choice.held_out.values())
    assert choice.validation_examples.numel() + choice.held_out_examples.numel() == 40


def test_mean_standard_error_ignores_what_is_not_finite() -> None:
    from captum_ntk.apps.reproduce.report import mean_se
    from captum_ntk.metrics.statistics import mean_standard_error

    values = [0.2, None, float("nan"), 0.5, float("inf"), 0.8]
    expected = (0.5, np.std([0.2, 0.5, 0.8], ddof=1) / math.sqrt(3))
    for given in (values, torch.tensor([0.2, math.nan, 0.5, math.inf, 0.8], dtype=torch.float64)):
        mean, se = mean_standard_error(given)
        assert mean == pytest.approx(expected[0], abs=1e-12)
        assert se == pytest.approx(expected[1], abs=1e-12)
    assert mean_se is mean_standard_error  # the reproduce report's helper is this one
    one = mean_standard_error([0.3])
    assert one[0] == 0.3 and math.isnan(one[1])
    assert all(math.isnan(v) for v in mean_standard_error([None, float("nan")]))
