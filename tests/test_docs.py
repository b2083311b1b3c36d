"""Every ```python block of README.md and docs/*.md runs.

The blocks of one file run in order in one namespace, which starts from a small fixture defining
the names the prose assumes: ``model`` (a trained digits MLP with P > 10240 parameters, so the
paper's ``projection_dim=10240`` is valid), ``x_train``, ``y_train``, ``x_test``, ``y_test`` and
the datasets ``train_set`` / ``test_set`` with ``train_labels``. Blocks run in a temporary working directory.
A block preceded by the line ``<!-- no-test -->`` is skipped (for commands that need a GPU or
several processes); use it sparingly. Blocks that import ``transformers`` (or the Hugging Face
integration) are skipped when it is not installed.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parent.parent
NO_TEST = "<!-- no-test -->"
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_NEEDS_HF = ("integrations import huggingface", "import transformers", "from transformers")


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """The ```python blocks of a markdown text.

    Args:
        text (str): markdown.

    Returns:
        list of (line, code, skipped): the 1-based line of each opening fence, the block's
        code and whether the last non-blank line before the fence is ``<!-- no-test -->``.
    """
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        skipped = bool(before) and before[-1].strip() == NO_TEST
        line = text.count("\n", 0, match.start()) + 1
        blocks.append((line, match.group(1), skipped))
    return blocks


def documents() -> list[Path]:
    """README.md and docs/*.md that hold at least one ```python block."""
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [p for p in paths if python_blocks(p.read_text(encoding="utf-8"))]


@pytest.fixture(scope="module")
def digits_namespace() -> dict[str, Any]:
    """The names the documentation's snippets assume, built from captum_ntk.apps."""
    from captum_ntk.apps.datasets import load_digits_tensors
    from captum_ntk.apps.models import DigitsMLP, train_classifier

    x_train, y_train, x_test, y_test = load_digits_tensors(train_size=200, test_size=50, seed=0)
    model = DigitsMLP(hidden=128, num_outputs=10, seed=0)  # P = 26,122 > 10240
    train_classifier(model, x_train, y_train, epochs=10, lr=1e-3, seed=0)
    return {
        "model": model,
        "x_train": x_train,
        "y_train": y_train,
        "x_test": x_test,
        "y_test": y_test,
        "train_set": TensorDataset(x_train, y_train),
        "test_set": TensorDataset(x_test, y_test),
        "train_labels": y_train,
    }


def test_python_blocks_parser() -> None:
    text = (
        "intro\n```python\na = 1\n```\n\n<!-- no-test -->\n\n```python\nraise SystemExit\n```\n"
        "```bash\nls\n```\n```python\nb = a + 1\n```\n"
    )
    blocks = python_blocks(text)
    assert [(line, skipped) for line, _, skipped in blocks] == [(2, False), (8, True), (14, False)]
    assert [code for _, code, _ in blocks] == ["a = 1\n", "raise SystemExit\n", "b = a + 1\n"]


def test_documents_found() -> None:
    names = [p.name for p in documents()]
    assert "README.md" in names


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_document_snippets_run(
    path: Path,
    digits_namespace: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)  # snippets may write files (stores, figures)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    blocks = python_blocks(path.read_text(encoding="utf-8"))
    if any(hint in code for _, code, skipped in blocks if not skipped for hint in _NEEDS_HF):
        pytest.importorskip("transformers")
    namespace: dict[str, Any] = {"__name__": "__doc_snippet__", **digits_namespace}
    namespace["model"] = copy.deepcopy(digits_namespace["model"])  # a file may modify it
    torch.manual_seed(0)
    ran = 0
    for line, code, skipped in blocks:
        if skipped:
            continue
        where = f"{path.relative_to(ROOT)}:{line}"
        try:
            exec(compile(code, where, "exec"), namespace)  # noqa: S102 - our own documentation
        except Exception as error:  # pragma: no cover - the failure message is the point
            raise AssertionError(f"the ```python block at {where} failed: {error!r}") from error
        ran += 1
    assert ran > 0 or all(skipped for _, _, skipped in blocks)
