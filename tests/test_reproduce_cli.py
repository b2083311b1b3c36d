"""End to end: ``captum-ntk reproduce mlp-mnist2`` on small synthetic IDX files (CPU, seconds)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from captum_ntk.apps.cli import main
from captum_ntk.apps.reproduce.loaders import load_idx_dataset
from captum_ntk.apps.reproduce.synthetic import write_idx_dataset


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    write_idx_dataset(root / "raw", n_train=500, n_test=200, gz=True, seed=0)
    return root


def test_mlp_mnist2_end_to_end(mnist_root, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "reproduce",
        "mlp-mnist2",
        "--data-root",
        str(mnist_root),
        "--n-train",
        "120",
        "--n-test",
        "60",
        "--epochs",
        "3",
        "--seeds",
        "2",
        "--out",
        str(out),
        "--no-progress",
        "--no-estimate",
        "--threads",
        "1",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "MLP (MNIST2)" in printed and "0.708" in printed

    results = json.loads((out / "results.json").read_text())
    data = load_idx_dataset(mnist_root)
    n_zero = int((data.y_train == 0).sum())
    assert results["n_train"] == min(60, n_zero) + min(60, int((data.y_train == 1).sum()))
    # two seeds x two surrogates (the paper's kGLM and the library's default), side by side
    assert results["row"] == "mlp-mnist2" and len(results["rows"]) == 4
    assert [(r["seed"], r["surrogate"]) for r in results["rows"]] == [
        (0, "paper"), (0, "default"), (1, "paper"), (1, "default")
    ]  # fmt: skip
    assert all(r["num_parameters"] == 98_801 for r in results["rows"])
    paper_row, default_row = results["summary"]
    assert (paper_row["kernel"], paper_row["surrogate"]) == ("trntk", "paper")
    assert (default_row["kernel"], default_row["surrogate"]) == ("trntk", "default")
    assert paper_row["paper_tau"] == 0.708
    for surrogate, summary in (("paper", paper_row), ("default", default_row)):
        mine = [r for r in results["rows"] if r["surrogate"] == surrogate]
        for key in ("tau", "tau_paper"):
            values = np.array([r[key] for r in mine])
            assert all(-1 <= t <= 1 for t in values)
            assert math.isclose(summary[f"{key}_mean"], values.mean(), rel_tol=1e-12)
            assert math.isclose(
                summary[f"{key}_se"], values.std(ddof=1) / math.sqrt(2), rel_tol=1e-9
            )
    for r in results["rows"]:
        assert math.isclose(r["tad"], r["acc_kglm"] - r["acc_nn"], abs_tol=1e-12)
    assert any("subset" in note for note in results["notes"])

    report = (out / "report.md").read_text()
    assert "| MLP (MNIST2) | trntk | paper | 2 |" in report and "0.708" in report
    assert "| MLP (MNIST2) | trntk | default | 2 |" in report
    assert "reduced setting" in report  # --n-train / --epochs: no verdict against the paper
    for figure in results["figures"]:
        assert (out / figure).stat().st_size > 1000 and f"]({figure})" in report
    assert "mlp-mnist2_linearization.png" in results["figures"]


def test_wrong_data_root_names_the_expected_file(tmp_path, capsys):
    code = main(["reproduce", "cnn-mnist2", "--data-root", str(tmp_path), "--no-progress"])
    assert code == 2
    error = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in error and str(tmp_path / "raw") in error


def test_cifar_row_points_at_the_pickles(tmp_path, capsys):
    assert main(["reproduce", "cnn-cifar2", "--data-root", str(tmp_path), "--no-progress"]) == 2
    assert "data_batch_1" in capsys.readouterr().err


def test_unknown_row_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "vgg-imagenet", "--data-root", "."])
    assert "invalid choice" in capsys.readouterr().err


def test_store_reuses_networks_and_kernels(mnist_root, tmp_path, capsys):
    store = tmp_path / "store"
    argv = [
        "reproduce", "mlp-mnist2", "--data-root", str(mnist_root), "--n-train", "60",
        "--n-test", "30", "--epochs", "2", "--out", str(tmp_path / "a"), "--store", str(store),
        "--no-progress", "--no-estimate", "--no-plots", "--threads", "1",
    ]  # fmt: skip
    assert main(argv) == 0
    first = json.loads((tmp_path / "a" / "results.json").read_text())
    assert sorted(p.name.split("-")[0] for p in (store / "seed0").iterdir()) == [
        "network", "trntk"
    ]  # fmt: skip
    argv[argv.index(str(tmp_path / "a"))] = str(tmp_path / "b")
    assert main(argv) == 0
    second = json.loads((tmp_path / "b" / "results.json").read_text())
    assert any("reused from --store" in n and "network" in n for n in second["notes"])
    for a, b in zip(first["rows"], second["rows"], strict=True):
        assert a["tau_paper"] == b["tau_paper"] and a["tau"] == b["tau"]
    # other data: nothing reused, new files
    argv[argv.index("60")] = "40"
    argv[argv.index(str(tmp_path / "b"))] = str(tmp_path / "c")
    assert main(argv) == 0
    third = json.loads((tmp_path / "c" / "results.json").read_text())
    assert not any("reused from --store" in n for n in third["notes"])
    assert len(list((store / "seed0").iterdir())) == 4


def test_quick_runs_the_rows_whose_data_it_finds(tmp_path, capsys, monkeypatch):
    from captum_ntk.apps.reproduce import quick

    root = tmp_path / "data"
    write_idx_dataset(root / "MNIST" / "raw", n_train=200, n_test=80, gz=False, seed=1)
    tiny = quick.QuickSize(40, 20, 1)
    monkeypatch.setattr(quick, "QUICK_ROWS", {name: tiny for name in quick.QUICK_ROWS})
    argv = ["reproduce", "--quick", "--data-root", str(root), "--out", str(tmp_path / "q"),
            "--no-progress", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "cnn-fmnist2: skipped, no fmnist files" in printed
    assert "cnn-cifar2: skipped, no cifar10 files" in printed
    assert "MLP (MNIST2)" in printed and "CNN (MNIST2)" in printed
    assert "reduced sizes (not the paper's)" in printed
    for row in ("mlp-mnist2", "cnn-mnist2"):
        results = json.loads((tmp_path / "q" / row / "results.json").read_text())
        assert results["n_train"] <= 40 and {r["surrogate"] for r in results["rows"]} == {
            "paper", "default"
        }  # fmt: skip
    assert main(["reproduce", "--data-root", str(root)]) == 2
    assert "pass --quick" in capsys.readouterr().err


def test_lds_of_both_surrogates_against_retrained_networks(mnist_root, tmp_path):
    store = tmp_path / "store"
    argv = [
        "reproduce", "mlp-mnist2", "--data-root", str(mnist_root), "--n-train", "40",
        "--n-test", "20", "--epochs", "2", "--out", str(tmp_path / "a"), "--store", str(store),
        "--lds-subsets", "6", "--no-progress", "--no-estimate", "--no-plots", "--threads", "1",
    ]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    lds = [r["lds"] for r in results["rows"]]
    assert len(lds) == 2 and all(-1 <= v <= 1 for v in lds)
    paper, default = results["rows"]
    assert paper["lds_protocol"] == default["lds_protocol"] == "6 subsets x 2 runs, shared seeds"
    assert (paper["lds_gap"], paper["lds_gap_error"]) == (0.0, 0.0)
    assert 0 < default["lds_error"] < 1 and 0 < default["lds_gap_error"] < 1
    assert -1 <= paper["lds_agreement"] <= 1 and paper["lds_agreement"] == default["lds_agreement"]
    (cache,) = (store / "lds").iterdir()  # keyed by row, recipe and data
    assert len(list((cache / "seed0").glob("*.json"))) >= 12  # cached retrainings, 6 x 2
    report = (tmp_path / "a" / "report.md").read_text()
    assert "## Counterfactual validity (LDS)" in report and "run agreement" in report
    # a rerun reads the cached ground truth: same LDS
    argv[argv.index(str(tmp_path / "a"))] = str(tmp_path / "b")
    assert main(argv) == 0
    again = json.loads((tmp_path / "b" / "results.json").read_text())
    assert [r["lds"] for r in again["rows"]] == lds
    # another recipe retrains its own ground truth (no stale retrainings of the 2-epoch one)
    argv[argv.index("2")] = "3"
    argv[argv.index(str(tmp_path / "b"))] = str(tmp_path / "c")
    assert main(argv) == 0
    assert len(list((store / "lds").iterdir())) == 2
    # TRAK's protocol: one run per subset, each with its own seed
    argv[argv.index(str(tmp_path / "c"))] = str(tmp_path / "d")
    assert main([*argv, "--lds-seeds", "independent", "--lds-runs", "1"]) == 0
    rows = json.loads((tmp_path / "d" / "results.json").read_text())["rows"]
    assert rows[0]["lds_protocol"] == "6 subsets x 1 runs, independent seeds"
    assert rows[0]["lds_agreement"] is None or math.isnan(rows[0]["lds_agreement"])


def test_lds_seed_choices_of_the_cli_are_the_module_s():
    from captum_ntk.apps.cli import build_parser
    from captum_ntk.apps.reproduce.lds import LDS_SEEDS

    parser = build_parser()
    sub = next(a for a in parser._subparsers._group_actions[0].choices["reproduce"]._actions
               if a.dest == "lds_seeds")  # fmt: skip
    assert tuple(sub.choices) == LDS_SEEDS


def test_correct_class_scores_follow_the_one_logit_sign():
    from types import SimpleNamespace

    import torch

    from captum_ntk.apps.reproduce.lds import correct_class_scores

    kernel = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
    one = SimpleNamespace(glm=SimpleNamespace(coef_=torch.tensor([[1.0, -1.0, 2.0]])),
                          test_kernel=kernel)  # fmt: skip
    scores = correct_class_scores(one, torch.tensor([1, 0]))
    assert torch.equal(
        scores, torch.tensor([[1.0, -2.0, 6.0], [-4.0, 5.0, -12.0]], dtype=torch.float64)
    )
    two = SimpleNamespace(glm=SimpleNamespace(coef_=torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])),
                          test_kernel=kernel)  # fmt: skip
    assert torch.equal(
        correct_class_scores(two, torch.tensor([1, 0]))[0],
        torch.tensor([0.0, 2.0, 0.0], dtype=torch.float64),
    )


def test_memory_gb_reaches_the_estimate_and_the_kernels(mnist_root, tmp_path, monkeypatch):
    # --memory-gb sets the kernels' block budget and the estimate's (else the device default).
    from captum_ntk.apps.reproduce import evaluate, runner

    seen: dict[str, list] = {"estimate": [], "attribution": []}
    real_estimate, real_attribution = runner.estimate_seconds, evaluate._attribution

    def estimate(model, data, settings, device, memory_limit=None, batch_size=64):
        seen["estimate"].append(memory_limit)
        return real_estimate(model, data, settings, device, memory_limit, batch_size)

    def attribution(*args, **kwargs):
        attr = real_attribution(*args, **kwargs)
        seen["attribution"].append(attr.memory_limit)
        return attr

    monkeypatch.setattr(runner, "estimate_seconds", estimate)
    monkeypatch.setattr(evaluate, "_attribution", attribution)
    argv = ["reproduce", "mlp-mnist2", "--data-root", str(mnist_root), "--n-train", "40",
            "--n-test", "20", "--epochs", "1", "--kernels", "trntk", "--surrogates", "paper",
            "--no-plots", "--no-progress", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main([*argv, "--memory-gb", "0.5"]) == 0
    assert seen == {"estimate": [2**29], "attribution": [2**29]}
    seen = {"estimate": [], "attribution": []}
    assert main(argv) == 0
    assert seen == {"estimate": [None], "attribution": [2 << 30]}  # the CPU default
    with pytest.raises(SystemExit):
        main([*argv, "--memory-gb", "0"])
