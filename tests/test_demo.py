"""The digits demo end to end (``--quick``), its CLI, and the models / datasets / plots it uses."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch.utils.data import TensorDataset

from captum_ntk import TrNTKAttribution
from captum_ntk.apps import cli
from captum_ntk.apps.datasets import load_digits_tensors
from captum_ntk.apps.demo import (
    DEMO_MODELS,
    PAPER_TARGET,
    DemoConfig,
    choose_projection_dim,
    collect_warnings,
    format_table,
    kernel_attributions,
    make_config,
    run_demo,
)
from captum_ntk.apps.demo.report import PAPER_TAU
from captum_ntk.apps.models import DigitsCNN, DigitsMLP, train_classifier
from captum_ntk.apps.plots import (
    plot_class_attribution,
    plot_exemplars,
    predicted_class_attributions,
)
from captum_ntk.attribution.surrogate_methods import DEFAULT_TARGET, SURROGATE_TARGETS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MODEL_NAMES = [spec.name for spec in DEMO_MODELS]


# ------------------------------------------------------------------------------------ demo
QUICK_KERNELS = ("trntk", "ck")


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, str]:
    out = tmp_path_factory.mktemp("demo") / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = cli.main(
            ["demo", "--quick", "--kernels", ",".join(QUICK_KERNELS), "--output", str(out)]
            + ["--no-progress"]
        )
    return status, out, printed.getvalue()


def test_demo_quick_writes_outputs(quick_demo: tuple[int, Path, str]) -> None:
    status, out, _ = quick_demo
    assert status == 0
    assert (out / "report.md").is_file()
    assert (out / "results.json").is_file()
    for name in MODEL_NAMES:
        for kind in ("class_attribution", "proponents", "opponents", "similar", "alpha_selection"):
            png = out / f"{name}_{kind}.png"
            assert png.is_file(), png
            assert png.read_bytes()[:8] == PNG_MAGIC


def test_demo_quick_says_not_representative(quick_demo: tuple[int, Path, str]) -> None:
    _, out, printed = quick_demo
    assert "not representative" in printed.lower()
    assert "not representative" in (out / "report.md").read_text().lower()
    results = json.loads((out / "results.json").read_text())
    assert any("not representative" in note.lower() for note in results["notes"])


def test_demo_quick_table(quick_demo: tuple[int, Path, str]) -> None:
    _, out, _ = quick_demo
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert [(r["model"], r["kernel"]) for r in rows] == [
        (m, k) for m in MODEL_NAMES for k in QUICK_KERNELS
    ]
    for row in rows:
        info = results["models"][row["model"]]
        # the network's accuracy, measured by faithfulness() and by the demo's own forward pass
        assert row["acc_nn"] == pytest.approx(info["acc_nn"], abs=1e-12), row
        assert row["target"] == results["config"]["target"]
        assert row["alpha"] in results_alpha_grid(row), row  # alpha="auto" picks a grid value
        # R_miss is undefined (null) when neither model errs
        assert row["r_miss"] is None or 0.0 <= row["r_miss"] <= 1.0, row
    for name, info in results["models"].items():
        assert info["projection_dim"] < info["num_parameters"], name
    assert results["config"]["quick"] is True
    assert results["config"]["n_train"] == 200
    report = (out / "report.md").read_text()
    for row in rows:
        assert f"| {row['model']} | {row['kernel']} | {row['tau']:.3f} |" in report
    assert "![mlp_class_attribution.png](mlp_class_attribution.png)" in report
    assert "![mlp_alpha_selection.png](mlp_alpha_selection.png)" in report


def results_alpha_grid(row: dict) -> list[float]:
    assert row["alpha_grid"] is not None, "alpha='auto' must report its cross-validation curve"
    grid = row["alpha_grid"]
    assert len(grid["alphas"]) == len(grid["mean_tau"]) == len(grid["std_tau"]) >= 2
    return grid["alphas"]


def test_demo_compares_label_fitted_and_distilled(quick_demo: tuple[int, Path, str]) -> None:
    _, out, _ = quick_demo
    results = json.loads((out / "results.json").read_text())
    comparison = results["comparison"]
    assert [(c["model"], c["target"]) for c in comparison] == [
        (m, t) for m in MODEL_NAMES for t in (results["config"]["target"], PAPER_TARGET)
    ]
    report = (out / "report.md").read_text()
    for c in comparison:
        assert f"| {c['model']} | `{c['target']}` | {c['tau']:.3f} |" in report
    assert "paper" in report and "--target labels" in report


def _floats(value: object) -> list[float]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [f for v in value.values() for f in _floats(v)]
    if isinstance(value, list):
        return [f for v in value for f in _floats(v)]
    return []


def test_demo_report_numbers_are_measured(quick_demo: tuple[int, Path, str]) -> None:
    """Every decimal number in report.md is a value of this run's results.json, rounded."""
    _, out, _ = quick_demo
    measured = _floats(json.loads((out / "results.json").read_text()))
    measured.append(PAPER_TAU)  # the paper's threshold, named as such in the report
    report = (out / "report.md").read_text()
    numbers = re.findall(r"(?<![\w.])[-+]?\d+\.\d+(?:e[-+]?\d+)?", report)
    assert len(numbers) > 50
    for token in numbers:
        decimals = len(token.split(".")[1].split("e")[0])
        value = float(token)
        assert any(abs(abs(value) - abs(m)) <= 0.51 * 10**-decimals for m in measured), token


def test_demo_shows_warnings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A warning raised while fitting / scoring is printed and reported, not swallowed."""
    import captum_ntk.apps.demo.evaluate as evaluate

    real = evaluate.faithfulness

    def warning_faithfulness(*args: object, **kwargs: object) -> dict:
        warnings.warn("demo-test-warning: something to see", RuntimeWarning, stacklevel=2)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "faithfulness", warning_faithfulness)
    lines: list[str] = []
    config = make_config(
        quick=True,
        models=("mlp",),
        kernels=("ck",),
        output=tmp_path,
        plots=False,
        compare=False,
        alpha=1e-3,
        show_progress=False,
    )
    results = run_demo(config, log=lines.append)
    assert any("demo-test-warning" in line for line in lines)
    assert any("demo-test-warning" in w for w in results["rows"][0]["warnings"])
    assert "RuntimeWarning: demo-test-warning" in (tmp_path / "report.md").read_text()


def test_collect_warnings_keeps_repeats() -> None:
    sink: list[str] = []
    with collect_warnings(sink):
        for _ in range(2):
            warnings.warn("same", UserWarning, stacklevel=1)
    assert sink == ["UserWarning: same", "UserWarning: same"]


@pytest.mark.slow
def test_demo_faithfulness_levels(tmp_path: Path) -> None:
    """The levels the README states for the full-size demo (seed 0), with a margin."""
    config = make_config(
        models=("mlp", "mlp-binary"),
        kernels=("trntk", "proj_trntk"),
        output=tmp_path,
        plots=False,
        show_progress=False,
    )
    results = run_demo(config, log=lambda line: None)
    tau = {(r["model"], r["kernel"]): r["tau"] for r in results["rows"]}
    # README: every trNTK / proj-trNTK kGLM of the default (distilled) fit reaches tau_K 0.82
    # on the MLP and 0.74 on the single-logit MLP (alpha="auto" trades a little faithfulness
    # for counterfactual validity, docs/counterfactual.md); the paper's level is 0.7.
    for kernel in ("trntk", "proj_trntk"):
        assert tau[("mlp", kernel)] >= 0.82 - MARGIN, tau
        assert tau[("mlp-binary", kernel)] >= 0.74 - MARGIN, tau
    assert abs(tau[("mlp", "trntk")] - tau[("mlp", "proj_trntk")]) < 0.05
    compared = {(c["model"], c["target"]): c["tau"] for c in results["comparison"]}
    # README: the distilled kGLM is more faithful than the label-fitted one (the paper's)
    target = results["config"]["target"]
    for model in ("mlp", "mlp-binary"):
        assert compared[(model, target)] > compared[(model, PAPER_TARGET)], compared
    assert compared[("mlp", PAPER_TARGET)] >= 0.7 - MARGIN  # the paper's level, label-fitted


MARGIN = 0.03


def test_cli_help_subprocess() -> None:
    script = shutil.which("captum-ntk") or str(Path(sys.executable).parent / "captum-ntk")
    command = [script] if Path(script).exists() else [sys.executable, "-m", "captum_ntk.apps.cli"]
    done = subprocess.run(
        [*command, "demo", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    for option in (
        "--output",
        "--n-train",
        "--n-test",
        "--projection-dim",
        "--seed",
        "--kernels",
        "--target",
        "--alpha",
        "--threads",
        "--quick",
        "--no-plots",
    ):
        assert option in done.stdout


def test_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as error:
        cli.main(["demo", "--kernels", "trntk,nonsense"])
    assert error.value.code == 2
    assert "nonsense" in capsys.readouterr().err
    for bad in (["--alpha", "-1"], ["--alpha", "often"], ["--target", "soft"]):
        with pytest.raises(SystemExit):
            cli.main(["demo", *bad])
    with pytest.raises(SystemExit):
        cli.main([])  # a subcommand is required


def test_cli_demo_options_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import captum_ntk.apps.demo as demo

    seen: list[DemoConfig] = []
    monkeypatch.setattr(demo, "run_demo", lambda config: seen.append(config))
    assert cli.main(["demo", "--target", "labels", "--alpha", "auto", "--threads", "0"]) == 0
    assert cli.main(["demo", "--alpha", "1e-3", "--threads", "1", "--no-compare"]) == 0
    assert seen[0].target == PAPER_TARGET and seen[0].alpha == "auto"
    assert seen[0].threads is None  # torch's default: the fastest on an idle machine
    assert seen[0].compare is True
    assert seen[1].alpha == 1e-3 and seen[1].threads == 1 and seen[1].compare is False
    assert seen[1].resolved_target() == DEFAULT_TARGET
    assert set(cli._TARGETS) == set(SURROGATE_TARGETS)


def test_demo_default_threads_are_torchs() -> None:
    assert DemoConfig().threads is None


def test_demo_helpers() -> None:
    assert choose_projection_dim(1024, 8970) == 1024
    assert choose_projection_dim(10240, 8970) == 4096
    assert choose_projection_dim(8970, 8970) < 8970
    rows = [
        {
            "model": "m",
            "kernel": "trntk",
            "tau": 0.5,
            "tad": 0.0,
            "r_miss": float("nan"),
            "acc_nn": 1.0,
            "acc_kglm": 1.0,
            "alpha": 1e-3,
            "seconds": 0.1,
            "converged": False,
        }
    ]
    markdown = format_table(rows, markdown=True)
    assert "| m | trntk* | 0.500 | +0.000 | n/a | 1.000 | 1.000 | 1e-03 |" in markdown
    assert "tau_K" in format_table(rows)


def test_kernel_attributions_sum_to_the_kglm_logits() -> None:
    """Eq. 3's defining property, in float64, and the same numbers as attribute()."""
    x_train, y_train, x_test, _ = load_digits_tensors(train_size=60, test_size=10, seed=1)
    model = train_classifier(DigitsMLP(hidden=16, seed=1), x_train, y_train, epochs=2, seed=1)
    model = model.double()
    x_train, x_test = x_train.double(), x_test.double()
    attr = TrNTKAttribution(model, TensorDataset(x_train, y_train))
    glm = attr.fit_surrogate(alpha=1e-3)
    test_kernel = attr.influence(x_test)
    actual = kernel_attributions(test_kernel, glm)
    assert actual.shape == (10, 10, 60)
    torch.testing.assert_close(
        actual.sum(-1), glm.decision_function(test_kernel), rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(actual, attr.attribute(x_test))


# ------------------------------------------------------------------------------------ models
@pytest.mark.parametrize("num_outputs", [10, 1])
def test_model_shapes(num_outputs: int) -> None:
    images = torch.rand(5, 1, 8, 8)
    mlp, cnn = DigitsMLP(num_outputs=num_outputs), DigitsCNN(num_outputs=num_outputs).eval()
    assert mlp(images.flatten(1)).shape == (5, num_outputs)
    assert mlp(images).shape == (5, num_outputs)
    assert cnn(images).shape == (5, num_outputs)
    assert cnn(images.flatten(1)).shape == (5, num_outputs)
    assert cnn.embedding(images).shape == (5, 32 * 16)


def test_models_are_seeded() -> None:
    state = torch.random.get_rng_state()
    a, b, c = DigitsCNN(seed=3), DigitsCNN(seed=3), DigitsCNN(seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    with pytest.raises(ValueError):
        DigitsMLP(num_outputs=0)


def test_train_classifier_deterministic_and_learns() -> None:
    x_train, y_train, x_test, y_test = load_digits_tensors(train_size=300, test_size=100)
    runs = [
        train_classifier(DigitsMLP(seed=0), x_train, y_train, epochs=5, lr=1e-2, seed=0)
        for _ in range(2)
    ]
    assert not runs[0].training
    for pa, pb in zip(runs[0].parameters(), runs[1].parameters(), strict=True):
        assert torch.equal(pa, pb)
    with torch.no_grad():
        accuracy = (runs[0](x_test).argmax(1) == y_test).double().mean()
    assert accuracy > 0.8


def test_train_classifier_single_logit_and_batchnorm() -> None:
    x_train, y_train, x_test, y_test = load_digits_tensors(classes=(0, 1), image=True, seed=2)
    model = train_classifier(DigitsCNN(num_outputs=1), x_train, y_train, epochs=3, lr=1e-2)
    assert not model.training and not model.bn1.training
    with torch.no_grad():
        predictions = (model(x_test)[:, 0] > 0).long()
    assert (predictions == y_test).double().mean() > 0.9


# ------------------------------------------------------------------------------------ data
def test_load_digits_shapes_and_scaling() -> None:
    x_train, y_train, x_test, y_test = load_digits_tensors(test_size=0.25, seed=0)
    assert x_train.shape[1:] == (64,) and x_test.shape[1:] == (64,)
    assert len(x_train) + len(x_test) == 1797
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert float(x_train.min()) >= 0.0 and float(x_train.max()) == 1.0
    images = load_digits_tensors(train_size=100, test_size=50, image=True)
    assert images[0].shape == (100, 1, 8, 8) and images[2].shape == (50, 1, 8, 8)
    assert set(y_test.tolist()) == set(range(10))


def test_load_digits_is_stratified() -> None:
    _, y_train, _, y_test = load_digits_tensors(train_size=1000, test_size=500, seed=5)
    train_share = torch.bincount(y_train, minlength=10).double() / len(y_train)
    test_share = torch.bincount(y_test, minlength=10).double() / len(y_test)
    assert torch.allclose(train_share, test_share, atol=0.005)


def test_load_digits_two_classes() -> None:
    from sklearn.datasets import load_digits

    x_train, y_train, x_test, y_test = load_digits_tensors(classes=(3, 8), test_size=0.3)
    assert set(y_train.tolist()) == {0, 1} and set(y_test.tolist()) == {0, 1}
    raw = load_digits()
    n_pair = int(np.isin(raw.target, [3, 8]).sum())
    assert len(y_train) + len(y_test) == n_pair
    threes = torch.from_numpy(raw.data[raw.target == 3].astype(np.float32) / 16)
    # label 0 is digit 3: every training image labelled 0 is one of the 3s
    first_zero = x_train[y_train == 0][0]
    assert bool((threes == first_zero).all(dim=1).any())
    _, y_digits, _, _ = load_digits_tensors(classes=(3, 8), binary_labels=False)
    assert set(y_digits.tolist()) == {3, 8}
    with pytest.raises(ValueError):
        load_digits_tensors(classes=(3,))
    with pytest.raises(ValueError):
        load_digits_tensors(classes=(3, 12))


# ------------------------------------------------------------------------------------ plots
def test_plot_class_attribution(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    attributions = torch.randn(6, 10, 40, generator=generator)
    train_labels = torch.arange(40) % 10
    test_pred = torch.tensor([0, 1, 2, 3, 4, 9])
    path = tmp_path / "fig2.png"
    fig = plot_class_attribution(attributions, train_labels, test_pred, title="t", path=path)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3  # heat map, distribution, colour bar
    assert path.read_bytes()[:8] == PNG_MAGIC
    binary = plot_class_attribution(
        torch.randn(4, 1, 12, generator=generator),
        torch.arange(12) % 2,
        torch.tensor([0, 1, 1, 0]),
        class_names=["3", "8"],
    )
    assert isinstance(binary, Figure)
    with pytest.raises(ValueError):
        plot_class_attribution(attributions, train_labels[:5], test_pred)


def test_predicted_class_attributions_single_logit_sign() -> None:
    attributions = torch.tensor([[[1.0, -2.0]], [[1.0, -2.0]]])  # (2, 1, 2)
    toward = predicted_class_attributions(attributions, torch.tensor([1, 0]))
    torch.testing.assert_close(
        toward, torch.tensor([[1.0, -2.0], [-1.0, 2.0]], dtype=torch.float64)
    )
    multi = torch.arange(12.0).reshape(2, 3, 2)
    torch.testing.assert_close(
        predicted_class_attributions(multi, torch.tensor([2, 0])),
        torch.tensor([[4.0, 5.0], [6.0, 7.0]], dtype=torch.float64),
    )


def test_plot_exemplars(tmp_path: Path) -> None:
    train_images = torch.rand(20, 64)
    test_images = torch.rand(3, 1, 8, 8)
    indices = torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [19, 18, 17, 16, 15]])
    scores = torch.rand(3, 5)
    path = tmp_path / "sub" / "top5.png"
    fig = plot_exemplars(
        test_images,
        train_images,
        indices,
        scores,
        test_labels=torch.tensor([1, 2, 3]),
        test_pred=torch.tensor([1, 2, 4]),
        train_labels=torch.arange(20) % 10,
        title="top-5",
        path=path,
    )
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3 * 6
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError):
        plot_exemplars(test_images, train_images, indices[:, :2], scores)
    with pytest.raises(ValueError):
        plot_exemplars(test_images, train_images, indices + 10, scores)
