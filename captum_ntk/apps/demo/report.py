r"""The demo's ``report.md``: every number in it is measured in the run that writes it."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from typing import Any

import torch

from .config import FIGURE_KERNEL, PAPER_TARGET, DemoConfig
from .table import format_table

__all__ = ["QUICK_NOTE", "build_report"]

#: Printed and written by ``--quick`` runs.
QUICK_NOTE = (
    "--quick: reduced sizes for a smoke test; these numbers are NOT representative of the "
    "full demo (run `captum-ntk demo` without --quick)."
)
#: The paper's level of faithfulness for every model it studies (Engel et al., Table 2).
PAPER_TAU = 0.7


def _header(config: DemoConfig, total: float) -> list[str]:
    target = config.resolved_target()
    paper = " (the paper's kGLM, Eq. 1)" if target == PAPER_TARGET else ""
    lines = ["# captum_ntk demo: kGLM surrogates of small digit classifiers", ""]
    if config.quick:
        lines += [f"**{QUICK_NOTE}**", ""]
    lines += [
        "Faithfulness of kernel surrogates (kGLM) to the networks on scikit-learn's 8x8 digits, "
        "in the style of Table 2 of Engel et al. tau_K: Kendall tau between the network's and "
        "the kGLM's probability of the correct class on the test set; TAD = acc(kGLM) - "
        "acc(NN); R_miss: misclassification coincidence rate (n/a when neither model errs); "
        "alpha: the kGLM's L2 strength relative to the kernel's scale. `*` after a kernel: the "
        "kGLM reached max_iter before converging.",
        "",
        f"kGLM target: `{target}`{paper}; alpha: `{config.alpha}`"
        + (
            " (chosen per kernel by held-out faithfulness plus counterfactual self-consistency"
            " on the training set, docs/counterfactual.md)"
            if config.alpha == "auto"
            else ""
        )
        + f"; class_weight: {config.class_weight}. The paper fits the kGLM to the true labels "
        "(`--target labels`).",
        "",
        f"Settings: n_train={config.n_train}, n_test={config.n_test}, seed={config.seed}, "
        f"torch threads={torch.get_num_threads()}. Total time {total:.1f} s on "
        f"{platform.machine()} ({platform.processor() or 'cpu'}).",
        "",
    ]
    return lines


def _models(models: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "## Models",
        "",
        "| model | description | P | K (projected) | n_train | n_test | test acc | train time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, info in models.items():
        lines.append(
            f"| {name} | {info['description']} | {info['num_parameters']} | "
            f"{info['projection_dim']} | {info['n_train']} | {info['n_test']} | "
            f"{info['acc_nn']:.3f} | {info['train_seconds']:.1f} |"
        )
    return lines + [""]


def _faithfulness(rows: Sequence[dict[str, Any]], models: Sequence[str]) -> list[str]:
    lines = ["## Faithfulness (Table 2 style)", "", format_table(rows, markdown=True), ""]
    counts = []
    for name in models:
        mine = [r for r in rows if r["model"] == name]
        strong = [r for r in mine if r["tau"] is not None and r["tau"] >= PAPER_TAU]
        counts.append(f"{name} {len(strong)}/{len(mine)}")
    lines.append(
        f"kGLMs with tau_K >= {PAPER_TAU} (the level the paper reports for its models): "
        + ", ".join(counts)
        + "."
    )
    return lines + [""]


def _comparison(comparison: Sequence[dict[str, Any]], plots: dict[str, str]) -> list[str]:
    if not comparison:
        return []
    lines = [
        f"## Label-fitted vs distilled kGLM ({FIGURE_KERNEL})",
        "",
        f"The same {FIGURE_KERNEL} train kernel, the kGLM fitted to the true labels (the "
        "paper's choice) and to the network's outputs (distillation); tau_margin: Kendall tau of "
        "the correct-class margins; ties: test pairs tied in either model.",
        "",
        "| model | target | tau_K | tau_margin | ties | TAD | acc kGLM | alpha |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in comparison:
        margin = "n/a" if c.get("tau_margin") is None else f"{c['tau_margin']:.3f}"
        lines.append(
            f"| {c['model']} | `{c['target']}` | {c['tau']:.3f} | {margin} | {c.get('ties')} | "
            f"{c['tad']:+.3f} | {c['acc_kglm']:.3f} | {c['alpha']:.0e} |"
        )
    lines.append("")
    for name, file in plots.items():
        lines += [f"Alpha selection, {name}:", "", f"![{file}]({file})", ""]
    return lines


def _warnings(rows: Sequence[dict[str, Any]], comparison: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["## Warnings raised while computing kernels and fitting kGLMs", ""]
    found = False
    for item in [*rows, *comparison]:
        for message in item.get("warnings", []):
            found = True
            what = item.get("kernel", FIGURE_KERNEL)
            lines.append(f"- {item['model']} / {what} / `{item['target']}`: {message}")
    if not found:
        lines.append("None.")
    return lines + [""]


def build_report(
    config: DemoConfig,
    rows: list[dict[str, Any]],
    models: dict[str, dict[str, Any]],
    figures: dict[str, list[str]],
    entk: dict[str, Any],
    total: float,
    comparison: Sequence[dict[str, Any]] = (),
    alpha_plots: dict[str, str] | None = None,
) -> str:
    r"""The text of ``report.md``.

    Args:
        config (DemoConfig): the settings.
        rows (list of dict): the faithfulness rows.
        models (dict): per-model information (description, P, K, sizes, accuracy, time).
        figures (dict): model -> figure file names.
        entk (dict): model -> eNTK shape and seconds (may be empty).
        total (float): seconds of the whole run.
        comparison (sequence of dict): label-fitted vs distilled kGLMs (one per model and
                target).
        alpha_plots (dict, optional): model -> alpha-selection plot file name.

    Returns:
        str: markdown.
    """
    lines = _header(config, total) + _models(models) + _faithfulness(rows, list(models))
    lines += _comparison(comparison, alpha_plots or {})
    lines += _warnings(rows, comparison)
    if entk:
        lines += [
            "## eNTK",
            "",
            "The eNTK (N1, N2, C, C) has no kGLM; its cost on 8 test digits:",
            "",
        ]
        for name, info in entk.items():
            lines.append(f"- {name}: shape {tuple(info['shape'])}, {info['seconds']:.2f} s")
        lines.append("")
    if figures:
        lines += ["## Figures", ""]
        for name, files in figures.items():
            lines += [f"### {name}", ""]
            for file in files:
                lines += [f"![{file}]({file})", ""]
    return "\n".join(lines).rstrip() + "\n"
