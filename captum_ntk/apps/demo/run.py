r"""``captum-ntk demo``: trains the digits models and evaluates every kernel's kGLM."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from ...attribution import NTKAttribution
from ...engine.parameters import num_parameters
from ..datasets import load_digits_tensors
from ..models import train_classifier
from .config import (
    ALL_KERNELS,
    BINARY_TEST_FRACTION,
    DEMO_MODELS,
    FIGURE_KERNEL,
    PROJECTED_KERNELS,
    DemoConfig,
    DemoModel,
    choose_projection_dim,
)
from .evaluate import Data, comparison_targets, entk_timing, evaluate_kernel, fit_and_score
from .figures import model_figures, plot_alpha_selection
from .report import QUICK_NOTE, build_report
from .table import format_table, jsonable

__all__ = ["run_demo"]

Log = Callable[[str], None]


def _num_digits(classes: Sequence[int]) -> int:
    from sklearn.datasets import load_digits

    return int(np.isin(load_digits().target, list(classes)).sum())


def load_data(spec: DemoModel, config: DemoConfig) -> Data:
    """The train / test digits of one demo model (the two-class subset holds out 40%)."""
    if spec.classes is None:
        n_total = _num_digits(range(10))
        if config.n_train + config.n_test > n_total:
            raise ValueError(
                f"n_train + n_test = {config.n_train + config.n_test} exceeds the {n_total} "
                "digits of sklearn's load_digits."
            )
        return load_digits_tensors(
            train_size=config.n_train, test_size=config.n_test, seed=config.seed, image=spec.image
        )
    n_total = _num_digits(spec.classes)
    n_test = min(config.n_test, int(BINARY_TEST_FRACTION * n_total))
    n_train = min(config.n_train, n_total - n_test)
    return load_digits_tensors(
        classes=spec.classes,
        train_size=n_train,
        test_size=n_test,
        seed=config.seed,
        image=spec.image,
    )


def network_predictions(model: nn.Module, x: Tensor) -> Tensor:
    """The network's predicted classes (``logit > 0`` for one logit)."""
    with torch.no_grad():
        logits = model(x)
    if logits.dim() == 1 or logits.shape[1] == 1:
        return (logits.reshape(-1) > 0).long()
    return logits.argmax(dim=1)


def _select_models(config: DemoConfig) -> list[DemoModel]:
    unknown = [k for k in config.kernels if k not in ALL_KERNELS and k != "entk"]
    if unknown:
        raise ValueError(
            f"Unknown kernel(s) {unknown}; choose from {list(ALL_KERNELS) + ['entk']}."
        )
    pair = tuple(int(d) for d in config.binary_classes)
    if len(pair) != 2 or len(set(pair)) != 2 or not all(0 <= d <= 9 for d in pair):
        raise ValueError(f"binary_classes must be two different digits, got {pair}.")
    config.resolved_target()  # an unknown target fails at the first fit; check names early
    specs = [
        s
        if s.classes is None
        else replace(s, classes=pair, description=f"{s.description}, digits {pair[0]} vs {pair[1]}")
        for s in DEMO_MODELS
        if config.models is None or s.name in config.models
    ]
    if not specs:
        raise ValueError(f"No demo model selected; choose from {[s.name for s in DEMO_MODELS]}.")
    return specs


def _train(spec: DemoModel, data: Data, config: DemoConfig, log: Log) -> tuple[nn.Module, dict]:
    x_train, y_train, x_test, y_test = data
    model = spec.build(config.seed)
    start = time.perf_counter()
    train_classifier(
        model,
        x_train,
        y_train,
        epochs=spec.epochs,
        lr=spec.lr,
        seed=config.seed,
        show_progress=config.show_progress,
    )
    seconds = time.perf_counter() - start
    acc = float((network_predictions(model, x_test) == y_test).double().mean())
    num_params = num_parameters(model)
    projection_dim = choose_projection_dim(config.projection_dim, num_params)
    if projection_dim != config.projection_dim and any(
        k in PROJECTED_KERNELS for k in config.kernels
    ):
        log(
            f"[{spec.name}] projection_dim {config.projection_dim} is not below P = {num_params}: "
            f"using {projection_dim} instead."
        )
    log(
        f"[{spec.name}] P = {num_params}, {len(y_train)} train / {len(y_test)} test digits, "
        f"test accuracy {acc:.3f} (trained in {seconds:.1f} s)"
    )
    info = {
        "description": spec.description,
        "num_parameters": num_params,
        "projection_dim": projection_dim,
        "n_train": len(y_train),
        "n_test": len(y_test),
        "acc_nn": acc,
        "train_seconds": seconds,
        "epochs": spec.epochs,
        "lr": spec.lr,
    }
    return model, info


def _run_model(spec: DemoModel, config: DemoConfig, log: Log, out: dict[str, Any]) -> None:
    """Trains one model and appends its rows, comparison, figures and eNTK timing to ``out``."""
    data = load_data(spec, config)
    model, info = _train(spec, data, config, log)
    out["models"][spec.name] = info
    kernels = [k for k in config.kernels if k != "entk"]
    bar = tqdm(kernels, desc=f"{spec.name} kernels", disable=not config.show_progress, leave=False)
    for kernel in bar:
        bar.set_postfix(kernel=kernel)
        row, attr, test_kernel, glm = evaluate_kernel(
            spec.name, kernel, model, data, info["projection_dim"], config, log
        )
        out["rows"].append(row)
        log(
            f"[{spec.name}] {kernel:<10} tau_K {row['tau']:.3f}  TAD {row['tad']:+.3f}  "
            f"alpha {row['alpha']:.0e}  ({row['seconds']:.1f} s)"
        )
        if kernel != FIGURE_KERNEL:
            continue
        if config.compare:
            _compare(spec, attr, model, data, test_kernel, row, config, log, out)
        if config.plots:
            test_pred = network_predictions(model, data[2])
            out["figures"][spec.name] = model_figures(
                spec, attr, test_kernel, glm, data, test_pred, config
            )
    if "entk" in config.kernels:
        out["entk"][spec.name] = entk_timing(model, data)


def _compare(
    spec: DemoModel,
    attr: NTKAttribution,
    model: nn.Module,
    data: Data,
    test_kernel: Tensor,
    row: dict[str, Any],
    config: DemoConfig,
    log: Log,
    out: dict[str, Any],
) -> None:
    """Label-fitted vs distilled kGLMs on the figure kernel, and the alpha-selection plot."""
    first, other = comparison_targets(config)
    fitted = [{"model": spec.name, **{k: row[k] for k in row if k not in ("model", "kernel")}}]
    scores, _ = fit_and_score(attr, model, data, test_kernel, other, config)
    for message in scores["warnings"]:
        log(f"[{spec.name}] {FIGURE_KERNEL} target={other}: warning: {message}")
    fitted.append({"model": spec.name, **scores})
    log(
        f"[{spec.name}] {FIGURE_KERNEL} tau_K: target={first} {fitted[0]['tau']:.3f}, "
        f"target={other} {scores['tau']:.3f}"
    )
    out["comparison"] += fitted
    if config.plots and any(f["alpha_grid"] is not None for f in fitted):
        name = f"{spec.name}_alpha_selection.png"
        plot_alpha_selection(
            fitted,
            f"{spec.name}: {FIGURE_KERNEL} kGLM, {config.n_train} training digits, "
            "cross-validated faithfulness",
            config.output / name,
        )
        out["alpha_plots"][spec.name] = name


def run_demo(config: DemoConfig, log: Log | None = None) -> dict[str, Any]:
    r"""Runs the demo and writes its outputs into ``config.output``.

    Args:
        config (DemoConfig): the settings.
        log (Callable[[str], None], optional): where progress lines, warnings and the table
                go. Default: ``tqdm.write`` (print without breaking progress bars).

    Returns:
        dict: the content of ``results.json``: ``config``, ``models`` (per-model information),
        ``rows`` (one dict per model and kernel: tau, tad, r_miss, acc_nn, acc_kglm, alpha,
        seconds, warnings, ...), ``comparison`` (label-fitted vs distilled kGLMs on the trNTK),
        ``figures``, ``alpha_plots``, ``entk``, ``total_seconds`` and ``notes``.
    """
    log = log if log is not None else tqdm.write
    specs = _select_models(config)
    if config.quick:
        log(QUICK_NOTE)
    start, threads = time.perf_counter(), torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        config.output.mkdir(parents=True, exist_ok=True)
        out: dict[str, Any] = {
            "models": {},
            "rows": [],
            "comparison": [],
            "figures": {},
            "alpha_plots": {},
            "entk": {},
        }
        for spec in specs:
            _run_model(spec, config, log, out)
        total = time.perf_counter() - start
        results = {
            "config": {
                **asdict(config),
                "target": config.resolved_target(),
                "torch_threads": torch.get_num_threads(),
            },
            **out,
            "total_seconds": total,
            "notes": [QUICK_NOTE] if config.quick else [],
        }
        (config.output / "results.json").write_text(json.dumps(jsonable(results), indent=2))
        report = build_report(
            config,
            out["rows"],
            out["models"],
            out["figures"],
            out["entk"],
            total,
            out["comparison"],
            out["alpha_plots"],
        )
        (config.output / "report.md").write_text(report)
        log("\n" + format_table(out["rows"]) + "\n")
        if config.quick:
            log(QUICK_NOTE)
        log(f"Wrote {config.output / 'report.md'} and results.json ({total:.1f} s in all).")
        return results
    finally:
        torch.set_num_threads(threads)
