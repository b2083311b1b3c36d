r"""The demo's faithfulness table (text and markdown) and JSON conversion."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["format_table", "jsonable"]

_COLUMNS = (
    ("model", "model", "{}"),
    ("kernel", "kernel", "{}"),
    ("tau", "tau_K", "{:.3f}"),
    ("tad", "TAD", "{:+.3f}"),
    ("r_miss", "R_miss", "{:.3f}"),
    ("acc_nn", "acc NN", "{:.3f}"),
    ("acc_kglm", "acc kGLM", "{:.3f}"),
    ("alpha", "alpha", "{:.0e}"),
    ("seconds", "time (s)", "{:.1f}"),
)


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = fmt.format(value)
    if key == "kernel" and not row.get("converged", True):
        text += "*"
    return text


def format_table(rows: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    r"""The faithfulness table (one row per model and kernel) as text or markdown.

    Args:
        rows (sequence of dict): rows with keys model, kernel, tau, tad, r_miss, acc_nn,
                acc_kglm, seconds and optionally alpha (a missing value prints ``n/a``) and
                converged (a kGLM that hit max_iter gets a ``*``).
        markdown (bool): a GitHub markdown table instead of aligned text.

    Returns:
        str: the table.
    """
    header = [title for _, title, _ in _COLUMNS]
    body = [[_cell(row, key, fmt) for key, _, fmt in _COLUMNS] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max([len(h), *(len(cells[i]) for cells in body)]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) for cells in body]
    return "\n".join(lines)


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as None, tuples as lists, paths and arrays converted."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
