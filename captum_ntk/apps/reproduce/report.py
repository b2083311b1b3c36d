r"""Aggregation over seeds and the outputs of a reproduced row: console table, report.md, JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..demo.table import jsonable

__all__ = ["aggregate", "format_summary", "jsonable", "write_outputs"]

_METRICS = ("tau", "tad", "r_miss", "acc_nn", "acc_kglm", "r2_linear")


def _mean_se(values: list[float]) -> tuple[float, float]:
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if finite.size == 0:
        return math.nan, math.nan
    se = float(finite.std(ddof=1) / math.sqrt(finite.size)) if finite.size > 1 else math.nan
    return float(finite.mean()), se


def aggregate(rows: list[dict[str, Any]], paper: dict[str, float]) -> list[dict[str, Any]]:
    r"""Mean and standard error over seeds of each kernel's metrics.

    Args:
        rows (list of dict): one dict per (seed, kernel) with the keys of ``_METRICS``.
        paper (dict): kernel -> the paper's tau_K.

    Returns:
        list of dict: per kernel ``{"kernel", "n_seeds", "paper_tau", "<metric>_mean",
        "<metric>_se"}``; the standard error is nan for a single seed.
    """
    summary = []
    for kernel in dict.fromkeys(r["kernel"] for r in rows):
        mine = [r for r in rows if r["kernel"] == kernel]
        entry: dict[str, Any] = {
            "kernel": kernel,
            "n_seeds": len(mine),
            "paper_tau": paper.get(kernel),
        }
        for metric in _METRICS:
            entry[f"{metric}_mean"], entry[f"{metric}_se"] = _mean_se([r[metric] for r in mine])
        summary.append(entry)
    return summary


def _pm(mean: float, se: float, fmt: str) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return fmt.format(mean) + (f" ± {se:.3f}" if math.isfinite(se) else "")


def format_summary(title: str, summary: list[dict[str, Any]], markdown: bool = False) -> str:
    r"""The row beside the paper's value: tau_K, TAD, R_miss as mean ± standard error."""
    header = ["row", "kernel", "seeds", "tau_K", "paper tau_K", "TAD", "R_miss", "acc NN", "R2 lin"]
    body = []
    for s in summary:
        paper = s["paper_tau"]
        body.append(
            [
                title,
                s["kernel"],
                str(s["n_seeds"]),
                _pm(s["tau_mean"], s["tau_se"], "{:.3f}"),
                f"{paper:.3f}" if paper is not None else "not recorded",
                _pm(s["tad_mean"], s["tad_se"], "{:+.3f}"),
                _pm(s["r_miss_mean"], s["r_miss_se"], "{:.3f}"),
                _pm(s["acc_nn_mean"], s["acc_nn_se"], "{:.3f}"),
                _pm(s["r2_linear_mean"], s["r2_linear_se"], "{:.3f}"),
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])
    widths = [max(len(h), *(len(c[i]) for c in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) for cells in body]
    return "\n".join(lines)


def _report(results: dict[str, Any], text_lines: list[str]) -> str:
    cfg = results["config"]
    lines = [
        f"# Reproduction of {results['title']} (Engel et al., arXiv 2305.14585)",
        "",
        format_summary(results["title"], results["summary"], markdown=True),
        "",
        "tau_K: Kendall tau between the network's and the kGLM's probability of the correct "
        "class on the test set; TAD = acc(kGLM) - acc(NN); R_miss: misclassification "
        "coincidence; R2 lin: held-out R^2 of a linear map from kGLM to network logits "
        "(Appendix L). ± is the standard error over seeds.",
        "",
        f"Data: {cfg['data_root']} ({results['n_train']} train / {results['n_test']} test). "
        f"Seeds {cfg['seeds']}, device {cfg['device']}, total {results['total_seconds']:.1f} s.",
        "",
        "## Settings and deviations",
        "",
        *[f"- {note}" for note in results["notes"]],
        "",
        "## Per seed",
        "",
        "| seed | kernel | tau_K | TAD | R_miss | acc NN | acc kGLM | time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['seed']} | {r['kernel']} | {r['tau']:.3f} | {r['tad']:+.3f} | "
            f"{_num(r['r_miss'])} | {r['acc_nn']:.3f} | {r['acc_kglm']:.3f} | {r['seconds']:.1f} |"
        )
    if text_lines:
        lines += ["", "## Proponents (trNTK kGLM, seed 0)", "", *text_lines]
    if results["figures"]:
        lines += ["", "## Figures (seed 0)", ""]
        lines += [f"![{f}]({f})\n" for f in results["figures"]]
    return "\n".join(lines) + "\n"


def _num(value: Any) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def write_outputs(results: dict[str, Any], out: Path, text_lines: list[str]) -> None:
    r"""Writes ``results.json`` and ``report.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(jsonable(results), indent=2))
    (out / "report.md").write_text(_report(results, text_lines))
