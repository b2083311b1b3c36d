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
    assert results["row"] == "mlp-mnist2" and len(results["rows"]) == 2
    assert [r["seed"] for r in results["rows"]] == [0, 1]
    assert all(r["num_parameters"] == 98_801 for r in results["rows"])
    (summary,) = results["summary"]
    assert summary["kernel"] == "trntk" and summary["paper_tau"] == 0.708
    taus = np.array([r["tau"] for r in results["rows"]])
    assert all(-1 <= t <= 1 for t in taus)
    assert math.isclose(summary["tau_mean"], taus.mean(), rel_tol=1e-12)
    assert math.isclose(summary["tau_se"], taus.std(ddof=1) / math.sqrt(2), rel_tol=1e-9)
    for r in results["rows"]:
        assert math.isclose(r["tad"], r["acc_kglm"] - r["acc_nn"], abs_tol=1e-12)
    assert any("subset" in note for note in results["notes"])
    assert any("1e-3 to 1e-2" in note for note in results["notes"])

    report = (out / "report.md").read_text()
    assert "| MLP (MNIST2) | trntk | 2 |" in report and "0.708" in report
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
