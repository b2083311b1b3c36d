"""LDS, the retraining harness and the removal test (captum_ntk.metrics)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from scipy import stats

from captum_ntk.metrics import (
    RetrainingHarness,
    correct_class_margin,
    datamodel_predictions,
    draw_subsets,
    linear_datamodeling_score,
    margin_output,
    removal_test,
)

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from counterfactual_helpers import AdditiveTask, make_tau, read_outputs  # noqa: E402
from test_distributed import _free_port  # noqa: E402


# --------------------------------------------------------------------------- LDS
def test_lds_equals_direct_spearman_loop():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(5, 30))
    masks = rng.random((25, 30)) < 0.5
    outputs = rng.normal(size=(25, 5)) + masks.astype(float) @ scores.T * 0.3
    lds, per = linear_datamodeling_score(scores, masks, outputs, return_per_example=True)
    direct = []
    for z in range(5):
        g = [scores[z][masks[m]].sum() for m in range(25)]
        direct.append(stats.spearmanr(g, outputs[:, z]).statistic)
    np.testing.assert_allclose(per.numpy(), direct, rtol=0, atol=1e-12)
    assert abs(lds - np.mean(direct)) < 1e-12
    assert 0.0 < lds < 1.0  # noisy: neither perfect nor absent


def test_lds_is_one_on_a_known_linear_ground_truth_and_minus_one_reversed():
    tau = make_tau()
    harness = RetrainingHarness(AdditiveTask(tau), read_outputs, 40)
    truth = harness.subset_ground_truth(num_subsets=30, runs=1, seed=1)
    assert linear_datamodeling_score(tau, truth.masks, truth.outputs) == pytest.approx(
        1.0, abs=1e-12
    )
    assert linear_datamodeling_score(-tau, truth.masks, truth.outputs) == pytest.approx(
        -1.0, abs=1e-12
    )
    # a monotone transform of the outputs keeps the rank correlation at 1
    assert linear_datamodeling_score(tau, truth.masks, truth.outputs.pow(3)) == pytest.approx(1.0)
    # uninformative scores give an LDS near 0, far from 1
    noise = make_tau(seed=7)
    assert abs(linear_datamodeling_score(noise, truth.masks, truth.outputs)) < 0.5


def test_lds_averages_runs_and_ignores_affine_changes_of_the_scores():
    rng = np.random.default_rng(1)
    scores = torch.from_numpy(rng.normal(size=(4, 20)))
    masks = torch.from_numpy(rng.random((12, 20)) < 0.5)
    runs = torch.from_numpy(rng.normal(size=(12, 3, 4)))
    assert linear_datamodeling_score(scores, masks, runs) == linear_datamodeling_score(
        scores, masks, runs.mean(dim=1)
    )
    # fixed-size subsets: a constant added to every score, or a positive scale, changes nothing
    sized = draw_subsets(20, 12, 0.5, seed=0)
    a = linear_datamodeling_score(scores, sized, runs)
    assert linear_datamodeling_score(2.5 * scores + 4.0, sized, runs) == pytest.approx(a, abs=1e-12)


def test_lds_is_nan_safe():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(3, 10))
    masks = rng.random((8, 10)) < 0.5
    outputs = rng.normal(size=(8, 3))
    outputs[:, 1] = 0.5  # constant outputs: no correlation for example 1
    lds, per = linear_datamodeling_score(scores, masks, outputs, return_per_example=True)
    assert torch.isnan(per[1]) and not torch.isnan(per[0]) and not torch.isnan(per[2])
    assert lds == pytest.approx(float((per[0] + per[2]) / 2))
    with pytest.warns(RuntimeWarning, match="NaN"):
        assert np.isnan(linear_datamodeling_score(scores, masks, np.ones((8, 3))))


def test_lds_input_errors_say_what_to_do():
    scores = torch.zeros(3, 10)
    with pytest.raises(ValueError, match="transpose"):
        linear_datamodeling_score(scores.T, torch.ones(5, 10, dtype=torch.bool), torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"\(M, n_test\)"):
        linear_datamodeling_score(scores, torch.ones(5, 10, dtype=torch.bool), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="0 and 1"):
        linear_datamodeling_score(scores, torch.full((5, 10), 2.0), torch.zeros(5, 3))
    bad = scores.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        linear_datamodeling_score(bad, torch.ones(5, 10, dtype=torch.bool), torch.zeros(5, 3))


def test_draw_subsets_is_seeded_sized_and_extensible():
    a = draw_subsets(50, 6, 0.3, seed=4)
    assert a.shape == (6, 50) and bool((a.sum(1) == 15).all())
    assert torch.equal(a, draw_subsets(50, 6, 0.3, seed=4))
    assert torch.equal(a[:4], draw_subsets(50, 4, 0.3, seed=4))  # more subsets extend
    assert not torch.equal(a, draw_subsets(50, 6, 0.3, seed=5))
    pred = datamodel_predictions(torch.ones(2, 50), a)
    assert torch.equal(pred, torch.full((6, 2), 15.0, dtype=torch.float64))


def test_logsumexp_margin():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    got = correct_class_margin(logits, labels, others="logsumexp")
    expect = torch.tensor([2.0 - np.log(np.exp(0.0) + np.exp(-1.0)), 1.0 - np.log(1 + np.exp(3.0))])
    torch.testing.assert_close(got, expect.double(), rtol=0, atol=1e-14)
    assert torch.equal(correct_class_margin(logits, labels), torch.tensor([2.0, -2.0]).double())


# --------------------------------------------------------------------------- harness
def test_shared_seeds_remove_seed_noise_from_the_ground_truth():
    """Common random numbers: the seed's noise is the same offset in every subset, so the
    LDS of the true additive scores is 1 however loud it is; independent seeds drown it."""
    tau = make_tau()
    harness = RetrainingHarness(AdditiveTask(tau, noise=30.0), read_outputs, 40)
    shared = harness.subset_ground_truth(num_subsets=30, runs=2, seed=1, shared_seeds=True)
    assert torch.equal(shared.seeds, torch.tensor([[1_000_004, 1_000_005]] * 30))
    assert torch.equal(shared.masks, draw_subsets(40, 30, 0.5, 1))
    assert linear_datamodeling_score(tau, shared.masks, shared.outputs) == pytest.approx(1.0)
    assert shared.run_agreement() == pytest.approx(1.0)
    independent = harness.subset_ground_truth(num_subsets=30, runs=2, seed=1)
    assert len(set(independent.seeds.flatten().tolist())) == 60
    assert torch.equal(independent.masks, shared.masks)
    assert linear_datamodeling_score(tau, independent.masks, independent.outputs) < 0.6
    # the noise floor: one run barely predicts the other on the same subsets
    agreement = independent.run_agreement()
    assert -0.4 < agreement < 0.4
    one_run = harness.subset_ground_truth(num_subsets=5, runs=1, seed=1, shared_seeds=True)
    assert np.isnan(one_run.run_agreement())
    # three runs: the mean over the three pairs of the mean per-example Spearman correlation
    three = harness.subset_ground_truth(num_subsets=12, runs=3, seed=2)
    runs = three.run_outputs.numpy()
    pairs = [(0, 1), (0, 2), (1, 2)]
    direct = np.mean([
        np.mean([stats.spearmanr(runs[:, a, z], runs[:, b, z]).statistic for z in range(6)])
        for a, b in pairs
    ])  # fmt: skip
    assert three.run_agreement() == pytest.approx(direct, abs=1e-12)


def test_harness_resumes_bit_identically_after_an_interruption(tmp_path):
    tau = make_tau()
    reference = RetrainingHarness(AdditiveTask(tau, noise=0.3), read_outputs, 40)
    expected = reference.subset_ground_truth(num_subsets=9, runs=2, seed=5)

    failing = AdditiveTask(tau, noise=0.3, fail_after=7)
    with pytest.raises(KeyboardInterrupt):
        RetrainingHarness(failing, read_outputs, 40, cache_dir=tmp_path).subset_ground_truth(
            num_subsets=9, runs=2, seed=5
        )
    assert len(list(tmp_path.glob("*.json"))) == 7 + 1  # 7 jobs + harness.json
    resumed_task = AdditiveTask(tau, noise=0.3)
    resumed = RetrainingHarness(resumed_task, read_outputs, 40, cache_dir=tmp_path)
    truth = resumed.subset_ground_truth(num_subsets=9, runs=2, seed=5)
    assert resumed_task.calls == 18 - 7  # only the missing jobs ran
    assert torch.equal(truth.run_outputs, expected.run_outputs)
    assert torch.equal(truth.masks, expected.masks) and torch.equal(truth.seeds, expected.seeds)


def test_harness_cache_belongs_to_one_task(tmp_path):
    RetrainingHarness(AdditiveTask(make_tau()), read_outputs, 40, cache_dir=tmp_path).retrain(
        [(torch.arange(10), 0)]
    )
    with pytest.raises(ValueError, match="another cache_dir"):
        RetrainingHarness(AdditiveTask(make_tau()), read_outputs, 41, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"\[0, 40\)"):
        RetrainingHarness(AdditiveTask(make_tau()), read_outputs, 40).retrain(
            [(torch.tensor([40]), 0)]
        )


def test_harness_worker_processes_equal_one_process(tmp_path):
    tau = make_tau()
    single = RetrainingHarness(AdditiveTask(tau, noise=0.2), read_outputs, 40)
    pooled = RetrainingHarness(AdditiveTask(tau, noise=0.2), read_outputs, 40, num_workers=2)
    a = single.subset_ground_truth(num_subsets=5, runs=2, seed=2)
    b = pooled.subset_ground_truth(num_subsets=5, runs=2, seed=2)
    assert torch.equal(a.run_outputs, b.run_outputs)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")
def test_harness_spreads_jobs_over_distributed_ranks(tmp_path):
    port = str(_free_port())
    out = tmp_path / "rank0.pt"
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            OMP_NUM_THREADS="1",
        )
        cmd = [sys.executable, str(HERE / "counterfactual_helpers.py"), str(out)]
        procs.append(subprocess.Popen(cmd, env=env))
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    result = torch.load(out)
    assert result["calls"] == 14  # each of the 7 x 2 jobs ran on exactly one rank
    expected = RetrainingHarness(AdditiveTask(make_tau(), noise=0.1), read_outputs, 40)
    truth = expected.subset_ground_truth(num_subsets=7, runs=2, seed=3)
    assert torch.equal(result["outputs"], truth.run_outputs)


def test_margin_output_on_a_real_model():
    model = torch.nn.Linear(4, 3).double()
    x = torch.randn(7, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    out = margin_output(x, y, batch_size=3)(model)
    with torch.no_grad():
        expect = correct_class_margin(model(x), y, others="logsumexp")
    assert torch.equal(out, expect)


# --------------------------------------------------------------------------- removal test
def test_removal_test_is_exact_on_additive_outputs_and_its_control_seeded(tmp_path):
    tau = make_tau()
    harness = RetrainingHarness(AdditiveTask(tau), read_outputs, 40, cache_dir=tmp_path)
    result = removal_test(tau, harness, k=5, test_indices=[0, 2, 4], seed=1)
    for position, z in enumerate([0, 2, 4]):
        top = torch.topk(tau[z], 5).values.sum()
        assert float(result.full[position] - result.top_removed[position]) == pytest.approx(
            float(top)
        )
    # the top-k of the true attribution is the largest possible drop: beats k random removals
    assert result.drop_top > result.drop_random
    again = removal_test(tau, harness, k=5, test_indices=[0, 2, 4], seed=1)
    assert torch.equal(again.random_removed, result.random_removed)
    other = removal_test(tau, harness, k=5, test_indices=[0, 2, 4], seed=2)
    assert not torch.equal(other.random_removed, result.random_removed)
    summary = result.summary()
    assert set(summary) == {
        "k",
        "drop_top",
        "drop_random",
        "flip_fraction_top",
        "flip_fraction_random",
    }
    assert 0.0 <= summary["flip_fraction_top"] <= 1.0


def test_removal_test_counts_flips():
    scores = torch.ones(2, 10, dtype=torch.float64)
    scores[0, :3] = 5.0  # example 0's top 3 proponents: training examples 0, 1, 2
    effects = torch.full((2, 10), -1.0, dtype=torch.float64)
    effects[0, :3] = 3.0  # example 0: full output 3 * 3 - 7 = 2 > 0; without 0, 1, 2: -7
    harness = RetrainingHarness(AdditiveTask(effects), read_outputs, 10)
    result = removal_test(scores, harness, k=3)
    assert result.full.tolist() == [2.0, -10.0]
    assert result.top_removed[0] == -7.0
    assert result.flip_fraction_top == 1.0  # example 1 (negative output) is not counted
    random_kept = 2.0 - float(
        effects[0][torch.isin(torch.arange(10), _random_set(0, 0, 10, 3))].sum()
    )
    assert result.random_removed[0] == random_kept
    assert result.flip_fraction_random == float(random_kept <= 0)
    with pytest.raises(ValueError, match="k must"):
        removal_test(scores, harness, k=10)
    with pytest.raises(ValueError, match="n_train = 10"):
        removal_test(scores[:, :5], harness, k=2)


def _random_set(seed: int, row: int, n: int, k: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + row)
    return torch.randperm(n, generator=generator)[:k]


# --------------------------------------------------------------------------- built-in tasks
def test_builtin_tasks_train_deterministically_and_pickle():
    import pickle

    from captum_ntk.apps.counterfactual import TASKS, get_task

    assert set(TASKS) == {"digits-mlp", "digits-cnn"}
    for name in TASKS:
        task = get_task(name)
        task.epochs = 2
        a = task.train(torch.arange(0, 120, 2), seed=3)
        copy = pickle.loads(pickle.dumps(task))
        assert copy._data is None  # workers reload the data instead of receiving it
        b = copy.train(torch.arange(0, 120, 2), seed=3)
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q)
        out = task.harness().retrain([(torch.arange(50), 1)])
        assert out.shape == (1, task.n_test) and out.dtype == torch.float64
    with pytest.raises(ValueError, match="digits-mlp"):
        get_task("mnist")


# --------------------------------------------------------------------------- alpha selection
def _near_interpolation_problem():
    from captum_ntk.apps.datasets import load_digits_tensors

    x, y, _, _ = load_digits_tensors(train_size=300, test_size=100, seed=1)
    x = x.double()
    kernel = torch.exp(-(torch.cdist(x, x) ** 2) / 8.0)
    logits = torch.nn.functional.one_hot(y, 10).double() * 4 + 0.3 * torch.randn(
        300, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    return kernel, logits, y


def test_alpha_auto_adds_counterfactual_consistency_to_faithfulness():
    from captum_ntk.surrogate import KernelGLM
    from captum_ntk.surrogate.consistency import select_alpha

    kernel, logits, y = _near_interpolation_problem()
    tau_only = KernelGLM(loss="squared", consistency_weight=0).fit(kernel, logits, labels=y)
    assert "consistency" not in tau_only.cv_results_
    cv = tau_only.cv_results_
    assert tau_only.alpha_ == float(cv["alphas"][int(np.nanargmax(cv["mean_tau"]))])
    both = KernelGLM(loss="squared").fit(kernel, logits, labels=y)
    res = both.cv_results_
    assert res["consistency"].shape == res["mean_tau"].shape
    total = res["mean_tau"] + 0.5 * res["consistency"]
    total = np.where(res["consistency"] < 0.5 * res["consistency"].max(), -np.inf, total)
    best = int(np.argmax(total))
    tau_se = res["std_tau"][best] / np.sqrt(res["fold_tau"].shape[1])
    error = np.hypot(tau_se, 0.5 * res["consistency_se"][best])
    assert both.alpha_ == float(res["alphas"][np.nonzero(total >= total[best] - error)[0][0]])
    assert np.all(res["consistency_se"] > 0) and np.all(res["consistency_se"] < 0.1)
    # the consistency falls as alpha falls (the near-interpolating end predicts no refit)
    assert res["consistency"][0] > res["consistency"][-1]
    assert both.alpha_ >= tau_only.alpha_
    # the rule: NaN consistency counts tau only; within one standard error the larger alpha wins
    flat = {
        "mean_tau": np.array([0.5, 0.6]),
        "std_tau": np.zeros(2),
        "fold_tau": np.zeros((2, 4)),
        "consistency_se": np.zeros(2),
    }
    assert select_alpha([1.0, 0.1], dict(flat, consistency=np.array([0.4, np.nan])), 0.5) == 1.0
    assert select_alpha([1.0, 0.1], dict(flat, consistency=np.array([0.1, np.nan])), 0.5) == 0.1
    noisy = dict(flat, std_tau=np.array([0.0, 0.2]), consistency=np.array([0.1, np.nan]))
    assert select_alpha([1.0, 0.1], noisy, 0.5) == 1.0  # SE 0.1 at the best alpha
    # the floor: an alpha whose consistency is under half the grid's best is not eligible,
    # however faithful (here 0.9 + 0.5 * 0.15 would beat 0.5 + 0.5 * 0.4)
    collapse = dict(flat, mean_tau=np.array([0.5, 0.9]), consistency=np.array([0.4, 0.15]))
    assert select_alpha([1.0, 0.1], collapse, 0.5) == 1.0
    assert select_alpha([1.0, 0.1], dict(collapse, consistency=np.array([0.4, 0.25])), 0.5) == 0.1
    with pytest.raises(ValueError, match="consistency_weight"):
        KernelGLM(loss="squared", consistency_weight=-1).fit(kernel, logits, labels=y)


def test_counterfactual_consistency_is_exact_for_an_additive_surrogate():
    """A 'kGLM' whose refit margins are exactly additive in its attributions scores 1."""
    from captum_ntk.surrogate.consistency import counterfactual_consistency

    n = 40
    kernel = torch.rand(n, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    weights = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def fit(train, alpha):  # fixed per-example weights: refit logits are the subset sums
        coef = torch.stack([torch.zeros(train.numel()), weights[train]]).double()
        return coef, torch.zeros(2, dtype=torch.float64)

    correct = torch.ones(n, dtype=torch.int64)
    held = torch.arange(0, n, 5)
    scores, errors = counterfactual_consistency(
        kernel, fit, correct, held, [1.0, 0.1], num_subsets=12
    )
    # margin = logit_1 - logsumexp(logit_0) = sum of the attributions (logit_0 = 0)
    np.testing.assert_allclose(scores, [1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(errors, [0.0, 0.0], atol=1e-12)


# --------------------------------------------------------------------------- CLI
def test_evaluate_cli_prints_tau_and_lds(tmp_path, capsys):
    from captum_ntk.apps.cli import main

    code = main(
        [
            "evaluate",
            "--task",
            "digits-mlp",
            "--subsets",
            "4",
            "--runs",
            "1",
            "--kernels",
            "trntk",
            "--cache",
            str(tmp_path),
            "--json",
            str(tmp_path / "rows.json"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| trntk |" in out and "LDS" in out and "| margin NTK x1 |" in out
    import json

    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert -1 <= rows[1]["lds"] <= 1
    row = rows[0]
    assert -1 <= row["lds"] <= 1 and 0 < row["tau"] <= 1 and row["cancellation"] >= 1
    assert len(list((tmp_path / "digits-mlp").glob("*.json"))) == 4 + 1
    assert main(["evaluate", "--kernels", "nope", "--cache", str(tmp_path)]) == 2
    # the removal test on one test digit, for the kernel row and the margin-NTK row
    again = ["evaluate", "--subsets", "4", "--runs", "1", "--kernels", "trntk", "--cache"]
    again += [str(tmp_path), "--json", str(tmp_path / "rows.json"), "--removal-examples", "1"]
    assert main(again) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    for row in rows:
        assert set(row["removal"]) == {
            "k",
            "drop_top",
            "drop_random",
            "flip_fraction_top",
            "flip_fraction_random",
        }
