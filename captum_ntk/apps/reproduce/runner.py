r"""``captum-ntk reproduce ROW``: train (or load) the paper's network, fit kGLMs, compare.

::

    config = ReproduceConfig("mlp-mnist2", data_root=Path("~/data/MNIST"), seeds=3)
    results = run_reproduce(config)   # writes report.md, results.json and figures
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ...engine.parameters import num_parameters
from ...kernels import kernel_names
from .data import RowData, load_row_data
from .estimate import estimate_seconds, format_duration
from .evaluate import (
    PROJECTED,
    SURROGATES,
    KernelResult,
    class_one_logits,
    evaluate_kernel,
    test_logits,
)
from .lds import LdsMeasurement, row_lds
from .report import aggregate, format_lds, format_summary, write_outputs
from .rows import PAPER_ALPHA, RowSpec, get_row
from .store import RowStore
from .training import TrainSettings, train_model

__all__ = ["ReproduceConfig", "run_reproduce"]

KERNEL_CHOICES = kernel_names(attributable=True)  # every kernel with a kGLM, from the registry
#: An estimated CPU time above this is announced with a suggestion.
HEAVY_SECONDS = 600.0


@dataclass
class ReproduceConfig:
    r"""Settings of :func:`run_reproduce` (the ``reproduce`` subcommand's options).

    Args:
        row (str): the row name (see :data:`~captum_ntk.apps.reproduce.rows.ROWS`).
        data_root (Path): folder with the data set's distributed files.
        seeds (int): networks trained with seeds 0..seeds-1. Default: 1.
        kernels (tuple of str, optional): kernels; default: the row's.
        device (str): ``"cpu"`` or ``"cuda"``. Default: ``"cpu"``.
        n_train / n_test (int, optional): subset sizes; default: the paper's.
        checkpoint (Path, optional): a state_dict to load instead of training; ``{seed}`` in
                the path is replaced by the seed.
        out (Path, optional): output folder. Default: ``reproduce_output/<row>``.
        store (Path, optional): kernel store folder (used where ``kernel_matrix`` supports it).
        epochs (int, optional) / lr (float, optional): override the row's training recipe.
        alpha (float): kGLM L2 strength. Default: 1e-4 (the authors' scripts).
        projection_dim (int): K of proj_trntk / proj_pntk. Default: 10240 (the paper's).
        batch_size (int): examples per kernel block. Default: 64.
        memory_limit (int, optional): bytes of the kernels' blocks (``--memory-gb``), for the
                estimate too. Default: the device's budget (2 GiB on a CPU).
        surrogates (tuple of str): "paper" and / or "default" (side by side, see
                :data:`captum_ntk.apps.reproduce.evaluate.SURROGATES`).
        lds_subsets (int): M > 0 adds the LDS of the first kernel's surrogates against M
                retrained networks (:mod:`captum_ntk.apps.reproduce.lds`). Default: 0 (off).
        lds_runs (int): retrainings per subset. Default: 2.
        lds_seeds (str): "shared" (default) or "independent" seeds for the retrainings.
        workers (int): processes for the LDS retrainings (0: this one). Default: 0.
        model_path (Path, optional): local Hugging Face folder of the text rows.
        plots (bool): write figures. show_progress (bool): tqdm bars. estimate (bool): time a
                few examples first and announce the expected duration.
    """

    row: str
    data_root: Path
    seeds: int = 1
    kernels: tuple[str, ...] | None = None
    device: str = "cpu"
    n_train: int | None = None
    n_test: int | None = None
    checkpoint: Path | None = None
    out: Path | None = None
    store: Path | None = None
    epochs: int | None = None
    lr: float | None = None
    alpha: float = PAPER_ALPHA
    projection_dim: int = 10240
    batch_size: int = 64
    memory_limit: int | None = None
    surrogates: tuple[str, ...] = SURROGATES
    lds_subsets: int = 0
    lds_runs: int = 2
    lds_seeds: str = "shared"
    workers: int = 0
    model_path: Path | None = None
    plots: bool = True
    show_progress: bool = True
    estimate: bool = True


def _network(spec: RowSpec, config: ReproduceConfig, seed: int) -> tuple[nn.Module, Any]:
    if spec.build is not None:
        return spec.build(seed), None
    from ...integrations.huggingface import load_sequence_classifier, minilm_path

    path = config.model_path or minilm_path()
    model, tokenizer = load_sequence_classifier(path, num_labels=2, seed=seed)
    return model, tokenizer


def _notes(spec: RowSpec, config: ReproduceConfig, data: RowData) -> list[str]:
    notes = list(spec.notes)
    if config.epochs is not None or config.lr is not None:
        notes.append(
            f"training recipe overridden: epochs {config.epochs or spec.train.epochs}, lr "
            f"{config.lr or spec.train.lr} (the row's: {spec.train.epochs}, {spec.train.lr})"
        )
    if config.n_train is not None or config.n_test is not None:
        notes.append(
            f"subset: {len(data.y_train)} training / {len(data.y_test)} test examples "
            "(--n-train / --n-test), not the paper's sizes"
        )
    if config.checkpoint is not None:
        notes.append(f"network loaded from {config.checkpoint} (not trained here)")
    if config.store is not None:
        notes.append(
            f"--store {config.store}: trained networks and kernel matrices are read from it when "
            "stored for the same data, recipe and network state, else computed and stored"
        )
    notes.append(
        f"kGLM: captum_ntk KernelGLM, alpha {config.alpha:g} (scaled by mean(diag K)^2 for "
        "unnormalised kernels), class_weight balanced, fitted to the training labels"
    )
    return notes


def _trained(
    spec: RowSpec, config: ReproduceConfig, data: RowData, seed: int, row_store: RowStore | None
) -> tuple[nn.Module, float]:
    model, _ = _network(spec, config, seed)
    start = time.perf_counter()
    if config.checkpoint is not None:
        path = Path(str(config.checkpoint).replace("{seed}", str(seed)))
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist.")
        model.load_state_dict(torch.load(path, map_location="cpu"))
    else:
        settings = _settings(spec, config)

        def train() -> None:
            train_model(
                model,
                data.x_train,
                data.y_train,
                settings,
                seed=seed,
                device=config.device,
                show_progress=config.show_progress,
            )

        if row_store is None:
            train()
        else:
            row_store.network(seed, settings, model, train)
    return model.to(config.device).eval(), time.perf_counter() - start


def _settings(spec: RowSpec, config: ReproduceConfig) -> TrainSettings:
    """The row's recipe with the run's --epochs / --lr overrides."""
    return replace(
        spec.train,
        epochs=config.epochs if config.epochs is not None else spec.train.epochs,
        lr=config.lr if config.lr is not None else spec.train.lr,
    )


def _predictions(logits: torch.Tensor) -> torch.Tensor:
    """Predicted classes from (n, C) logits, or from one logit per example (its sign)."""
    return (logits.reshape(-1) > 0).long() if logits.shape[-1] == 1 else logits.argmax(dim=1)


def _announce(spec: RowSpec, config: ReproduceConfig, data: RowData, log: Callable) -> dict:
    probe, _ = _network(spec, config, 10_000)
    settings = replace(spec.train, epochs=config.epochs or spec.train.epochs)
    guess = estimate_seconds(
        probe, data, settings, config.device, config.memory_limit, config.batch_size
    )
    n_kernels = len(config.kernels or spec.kernels)
    total = config.seeds * (guess["train"] + n_kernels * guess["kernel"])
    line = (
        f"[{spec.name}] estimated time on {config.device}: ~{format_duration(total)} "
        f"(training {format_duration(guess['train'])} and exact trNTK "
        f"{format_duration(guess['kernel'])} per seed, from timing a few examples)"
    )
    log(line)
    if total > HEAVY_SECONDS and config.device == "cpu":
        log(
            f"[{spec.name}] this is heavy for a CPU: use --device cuda, or a subset such as "
            "--n-train 1000 --n-test 500 (and fewer --seeds)."
        )
    return {**guess, "total_all_seeds": total}


def _seed_run(
    spec, config, data, seed, kernels, out, log, row_store
) -> tuple[list[dict], list[str], list[str]]:
    model, train_seconds = _trained(spec, config, data, seed, row_store)
    logits = test_logits(model, data, config.device)  # one forward pass of the test set
    pred = _predictions(logits)
    chance = float(torch.bincount(data.y_test).max()) / len(data.y_test)
    accuracy = float((pred == data.y_test).double().mean())
    if accuracy <= chance + 0.05:
        log(
            f"[{spec.name}] warning: seed {seed} network test accuracy {accuracy:.3f} is near "
            f"chance ({chance:.3f}): it did not train; try more --epochs or another --lr."
        )
    rows, figures, text_lines = [], [], []
    for kernel in tqdm(
        kernels, desc=f"seed {seed} kernels", disable=not config.show_progress, leave=False
    ):
        results: list[KernelResult] = evaluate_kernel(
            kernel,
            model,
            data,
            alpha=config.alpha,
            seed=seed,
            device=config.device,
            batch_size=config.batch_size,
            projection_dim=_projection_dim(config, model),
            row_store=row_store,
            surrogates=config.surrogates,
            class_one=class_one_logits(logits),
            show_progress=config.show_progress,
            memory_limit=config.memory_limit,
        )
        lds = LdsMeasurement([math.nan] * len(results))
        if config.lds_subsets > 0 and kernel == kernels[0]:
            settings = _settings(spec, config)
            cache = None if row_store is None else row_store.lds_dir(seed, settings)
            lds = row_lds(spec, settings, data, results, config.lds_subsets, seed=seed,
                          runs=config.lds_runs, seeds=config.lds_seeds, device=config.device,
                          cache_dir=cache, workers=config.workers, log=log)  # fmt: skip
        for i, result in enumerate(results):
            row = {
                "seed": seed,
                "train_seconds": train_seconds,
                "num_parameters": num_parameters(model),
                **result.row,
                "lds": lds.values[i],
            }
            if lds.errors:
                row.update(
                    lds_error=lds.errors[i],
                    lds_gap=lds.gaps[i][0],
                    lds_gap_error=lds.gaps[i][1],
                    lds_agreement=lds.agreement,
                    lds_protocol=lds.protocol,
                )
            rows.append(row)
            log(
                f"[{spec.name}] seed {seed} {kernel:<10} {row['surrogate']:<8} tau_K (paper "
                f"protocol) {row['tau_paper']:.3f}  tau_K (correct class) {row['tau']:.3f}  TAD "
                f"{row['tad']:+.3f}  R_miss {_fmt(row['r_miss'])}  acc NN {row['acc_nn']:.3f}  LDS "
                f"{_fmt(row['lds'])}"
            )
        if seed == 0 and kernel == kernels[0] and config.plots:
            from .figures import row_figures, text_exemplars

            result = results[0]
            figures = row_figures(spec.name, result, data, pred, spec.class_names, out)
            if data.is_text:
                text_lines = text_exemplars(result, data, pred)
    return rows, figures, text_lines


def _fmt(value: float) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def _projection_dim(config: ReproduceConfig, model: nn.Module) -> int:
    from ..demo import choose_projection_dim

    return choose_projection_dim(config.projection_dim, num_parameters(model))


def run_reproduce(config: ReproduceConfig, log: Callable[[str], None] | None = None) -> dict:
    r"""Runs one row and writes ``report.md``, ``results.json`` and figures.

    Args:
        config (ReproduceConfig): the settings.
        log (Callable, optional): where progress lines go. Default: ``tqdm.write``.

    Returns:
        dict: the content of ``results.json`` (``summary``: per kernel mean and standard error
        over seeds beside the paper's value; ``rows``: per seed and kernel; ``notes``; ...).
    """
    log = log or tqdm.write
    spec = get_row(config.row)
    kernels = tuple(config.kernels or spec.kernels)
    unknown = [k for k in kernels if k not in KERNEL_CHOICES]
    if unknown or config.seeds < 1:
        raise ValueError(
            f"unknown kernel(s) {unknown} (choose from {KERNEL_CHOICES}) or seeds < 1."
        )
    out = Path(config.out or Path("reproduce_output") / spec.name)
    start = time.perf_counter()
    tokenizer = _network(spec, config, 0)[1] if spec.build is None else None
    data = load_row_data(spec, config.data_root, config.n_train, config.n_test, tokenizer)
    notes = _notes(spec, config, data)
    for note in notes:
        log(f"[{spec.name}] note: {note}")
    estimate = _announce(spec, config, data, log) if config.estimate else None
    row_store = None if config.store is None else RowStore(config.store, spec.name, data)
    rows, figures, text_lines = [], [], []
    for seed in tqdm(
        range(config.seeds), desc=f"{spec.name} seeds", disable=not config.show_progress
    ):
        seed_rows, seed_figures, seed_text = _seed_run(
            spec, config, data, seed, kernels, out, log, row_store
        )
        rows += seed_rows
        figures, text_lines = figures or seed_figures, text_lines or seed_text
    if row_store is not None and row_store.reused:
        notes.append("reused from --store: " + "; ".join(row_store.reused))
    summary = aggregate(rows, spec.paper)
    reduced = any(v is not None for v in (config.n_train, config.n_test, config.epochs, config.lr))
    for entry in summary:  # not the paper's setting: no verdict against its value
        entry["reduced"] = reduced
    results = {
        "row": spec.name,
        "title": spec.title,
        "summary": summary,
        "rows": rows,
        "notes": notes,
        "figures": figures,
        "estimate_seconds": estimate,
        "n_train": len(data.y_train),
        "n_test": len(data.y_test),
        "config": {**asdict(config), "kernels": list(kernels)},
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "projected_kernels_k": {k: config.projection_dim for k in kernels if k in PROJECTED},
        "total_seconds": time.perf_counter() - start,
    }
    write_outputs(results, out, text_lines)
    log("")
    log(format_summary(spec.title, summary))
    for line in format_lds(rows):
        log(line)
    log(f"\nWrote {out / 'report.md'} and results.json.")
    return results
