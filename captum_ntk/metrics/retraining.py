r"""Retraining ground truth for counterfactual evaluation (LDS, removal tests).

The user supplies how to train and what to measure:

- ``train_fn(train_indices, seed) -> model``: trains a fresh model on the training examples
  ``train_indices`` (a sorted ``(n,)`` int64 tensor) with the given seed;
- ``output_fn(model) -> Tensor``: ``(n_test,)`` outputs of the trained model on the test set,
  e.g. :func:`margin_output`, the correct-class margin
  :math:`\mathrm{logit}_y - \log\sum_{c \neq y} \exp \mathrm{logit}_c` of TRAK and dattri.

:class:`RetrainingHarness` runs such retrainings ("jobs": a training subset and a seed). Each
finished job is written atomically to ``cache_dir`` under a digest of its indices and seed, so
an interrupted run resumes where it stopped and gives bit-identical results (outputs are stored
as float64 JSON numbers, which round-trip exactly). Jobs can be spread over ``num_workers``
processes (``torch.multiprocessing``, spawn: ``train_fn`` and ``output_fn`` must be picklable,
e.g. module-level functions or ``functools.partial`` of them) or, under an initialised
``torch.distributed`` process group, over its ranks (job ``j`` runs on rank ``j % world_size``,
and every rank receives every output).

::

    harness = RetrainingHarness(train_fn, margin_output(x_test, y_test), num_train=900,
                                cache_dir="lds_cache", show_progress=True)
    truth = harness.subset_ground_truth(num_subsets=200, runs=4, seed=0)
    lds = linear_datamodeling_score(scores, truth.masks, truth.outputs)
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from ..store.atomic import read_json, write_json_atomic
from ..surrogate.consistency import columnwise_spearman
from .datamodels import draw_subsets
from .scores import correct_class_margin

__all__ = ["RetrainingHarness", "SubsetGroundTruth", "margin_output"]

TrainFn = Callable[[Tensor, int], nn.Module]
OutputFn = Callable[[nn.Module], Tensor]


class _MarginOutput:
    """Picklable ``output_fn``: the correct-class margin of a model on fixed test data."""

    def __init__(self, inputs: Tensor, labels: Tensor, others: str, batch_size: int) -> None:
        self.inputs, self.labels = inputs, labels
        self.others, self.batch_size = others, batch_size

    def __call__(self, model: nn.Module) -> Tensor:
        device = next(model.parameters()).device
        with torch.no_grad():
            logits = torch.cat(
                [
                    model(self.inputs[s : s + self.batch_size].to(device)).detach().cpu()
                    for s in range(0, len(self.inputs), self.batch_size)
                ]
            )
        return correct_class_margin(logits, self.labels, others=self.others)


def margin_output(
    test_inputs: Tensor, test_labels: Tensor, *, others: str = "logsumexp", batch_size: int = 512
) -> OutputFn:
    r"""An ``output_fn`` giving each test example's correct-class margin (float64).

    Args:
        test_inputs (Tensor): ``(n_test, ...)`` inputs of ``model(inputs)``.
        test_labels (Tensor): ``(n_test,)`` labels.
        others (str): ``"logsumexp"`` (TRAK's margin, :math:`\mathrm{logit}_y -
                    \log\sum_{c\neq y} e^{\mathrm{logit}_c}`) or ``"max"``. Default:
                    ``"logsumexp"``.
        batch_size (int): forward batch size. Default: 512.

    Returns:
        Callable: ``output_fn(model) -> (n_test,)`` float64 margins (picklable).
    """
    if len(test_inputs) != len(test_labels):
        raise ValueError(f"{len(test_inputs)} test inputs but {len(test_labels)} labels")
    return _MarginOutput(test_inputs, torch.as_tensor(test_labels).long(), others, batch_size)


@dataclass
class SubsetGroundTruth:
    r"""Outputs of models retrained on random subsets: the ground truth of the LDS.

    Attributes:
        masks (Tensor): ``(M, N)`` bool training subsets.
        run_outputs (Tensor): ``(M, R, n_test)`` float64 outputs, ``R`` retrainings per subset.
        seeds (Tensor): ``(M, R)`` int64 training seeds.
    """

    masks: Tensor
    run_outputs: Tensor
    seeds: Tensor

    @property
    def outputs(self) -> Tensor:
        """``(M, n_test)`` outputs averaged over the retrainings of each subset."""
        return self.run_outputs.mean(dim=1)

    def run_agreement(self) -> float:
        r"""How well one retraining's outputs predict another's on the same subsets: the mean
        over test examples (and over pairs of runs) of their Spearman correlation over the M
        subsets. The noise floor of the ground truth: with independent seeds per subset, a
        network that is 99% accurate on an easy task can give about 0 (the seed, not the
        subset, moves its margins), and no attribution can then score an LDS above noise.

        Returns:
            float: the agreement in ``[-1, 1]``; NaN with one run per subset.
        """
        runs = self.run_outputs.shape[1]
        pairs = [(a, b) for a in range(runs) for b in range(a + 1, runs)]
        if not pairs:
            return math.nan
        values = [
            np.nanmean(
                columnwise_spearman(self.run_outputs[:, a].numpy(), self.run_outputs[:, b].numpy())
            )
            for a, b in pairs
        ]
        return float(np.mean(values))


def _job_key(indices: Tensor, seed: int) -> str:
    digest = hashlib.sha256(indices.to(torch.int64).contiguous().numpy().tobytes())
    digest.update(f"|{int(seed)}".encode())
    return digest.hexdigest()[:32]


def _run_job(train_fn: TrainFn, output_fn: OutputFn, indices: Tensor, seed: int) -> list[float]:
    model = train_fn(indices, seed)
    outputs = torch.as_tensor(output_fn(model)).detach().to("cpu", torch.float64).reshape(-1)
    if not bool(torch.isfinite(outputs).all()):
        raise ValueError(f"output_fn returned NaN/inf for the model trained with seed {seed}")
    return outputs.tolist()


def _pool_job(args: tuple[TrainFn, OutputFn, Tensor, int, int]) -> tuple[int, list[float]]:
    train_fn, output_fn, indices, seed, position = args
    return position, _run_job(train_fn, output_fn, indices, seed)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


class RetrainingHarness:
    r"""Retrains models on training subsets and records their test outputs, resumably.

    Args:
        train_fn (Callable): ``train_fn(train_indices, seed) -> nn.Module``. It must be
                    deterministic given its arguments for a resumed run to equal an
                    uninterrupted one.
        output_fn (Callable): ``output_fn(model) -> (n_test,)`` outputs (see
                    :func:`margin_output`).
        num_train (int): training set size N.
        cache_dir (str or PathLike, optional): directory of finished jobs (created). It belongs
                    to one ``(train_fn, output_fn)`` pair: its ``harness.json`` records N and
                    n_test and a mismatch raises. Default: None, no cache.
        num_workers (int): processes for the retrainings (0: this process). Default: 0.
        show_progress (bool): tqdm bar over retrainings. Default: False.
    """

    def __init__(
        self,
        train_fn: TrainFn,
        output_fn: OutputFn,
        num_train: int,
        *,
        cache_dir: str | os.PathLike | None = None,
        num_workers: int = 0,
        show_progress: bool = False,
    ) -> None:
        if int(num_train) < 1:
            raise ValueError(f"num_train must be >= 1, got {num_train}")
        if int(num_workers) < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.train_fn, self.output_fn = train_fn, output_fn
        self.num_train, self.num_workers = int(num_train), int(num_workers)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.show_progress = show_progress
        self.num_test: int | None = None
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            meta = self.cache_dir / "harness.json"
            if meta.exists():
                recorded = read_json(meta)
                if recorded["num_train"] != self.num_train:
                    raise ValueError(
                        f"cache_dir {self.cache_dir} holds retrainings of a training set of "
                        f"{recorded['num_train']} examples, not {self.num_train}: use another "
                        "cache_dir for another task"
                    )
                self.num_test = recorded.get("num_test")

    # ------------------------------------------------------------------ jobs
    def retrain(self, jobs: Sequence[tuple[Tensor, int]], desc: str = "retraining") -> Tensor:
        r"""Runs (or reads from the cache) one retraining per job.

        Args:
            jobs (sequence): ``(train_indices, seed)`` pairs; indices are sorted and
                    deduplicated (the training set is a set).
            desc (str): progress-bar label.

        Returns:
            Tensor: ``(len(jobs), n_test)`` float64 outputs, in job order.
        """
        normalised = [(self._indices(indices), int(seed)) for indices, seed in jobs]
        results: dict[int, list[float]] = {}
        pending = []
        for position, (indices, seed) in enumerate(normalised):
            cached = self._read(indices, seed)
            if cached is not None:
                results[position] = cached
            else:
                pending.append(position)
        rank, size = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
        mine = [p for j, p in enumerate(pending) if j % size == rank]
        bar = tqdm(total=len(mine), desc=desc, disable=not self.show_progress, leave=False)
        for position, outputs in self._execute(normalised, mine):
            self._write(*normalised[position], outputs)
            results[position] = outputs
            bar.update(1)
        bar.close()
        if size > 1:
            gathered: list[dict[int, list[float]] | None] = [None] * size
            dist.all_gather_object(gathered, {p: results[p] for p in mine})
            for part in gathered:
                results.update(part or {})
        widths = {len(v) for v in results.values()}
        if len(widths) > 1:
            raise ValueError(f"output_fn returned outputs of different lengths {sorted(widths)}")
        return torch.tensor([results[p] for p in range(len(normalised))], dtype=torch.float64)

    def _execute(self, jobs: list[tuple[Tensor, int]], positions: list[int]):
        if self.num_workers == 0 or len(positions) <= 1:
            for position in positions:
                indices, seed = jobs[position]
                yield position, _run_job(self.train_fn, self.output_fn, indices, seed)
            return
        context = torch.multiprocessing.get_context("spawn")
        threads = max(1, torch.get_num_threads() // self.num_workers)
        tasks = [(self.train_fn, self.output_fn, *jobs[p], p) for p in positions]
        with context.Pool(self.num_workers, initializer=_init_worker, initargs=(threads,)) as pool:
            yield from pool.imap_unordered(_pool_job, tasks)

    def _indices(self, indices: Tensor | Sequence[int]) -> Tensor:
        tensor = torch.unique(torch.as_tensor(indices, dtype=torch.int64).reshape(-1))
        if tensor.numel() and (int(tensor[0]) < 0 or int(tensor[-1]) >= self.num_train):
            raise ValueError(f"training indices must lie in [0, {self.num_train})")
        return tensor

    def _read(self, indices: Tensor, seed: int) -> list[float] | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / f"{_job_key(indices, seed)}.json"
        return read_json(path)["outputs"] if path.exists() else None

    def _write(self, indices: Tensor, seed: int, outputs: list[float]) -> None:
        if self.num_test is None:
            self.num_test = len(outputs)
            if self.cache_dir is not None:
                write_json_atomic(
                    self.cache_dir / "harness.json",
                    {"num_train": self.num_train, "num_test": self.num_test},
                )
        if len(outputs) != self.num_test:
            raise ValueError(
                f"output_fn returned {len(outputs)} outputs; this harness (or its cache_dir) "
                f"holds {self.num_test} per model"
            )
        if self.cache_dir is not None:
            payload = {"seed": seed, "num_indices": int(indices.numel()), "outputs": outputs}
            write_json_atomic(self.cache_dir / f"{_job_key(indices, seed)}.json", payload)

    # ------------------------------------------------------------------ ground truths
    def subset_ground_truth(
        self,
        num_subsets: int = 100,
        runs: int = 1,
        *,
        subset_fraction: float = 0.5,
        seed: int = 0,
        shared_seeds: bool = False,
    ) -> SubsetGroundTruth:
        r"""Retrains on ``num_subsets`` random subsets, ``runs`` times each: the LDS ground truth.

        Subsets come from :func:`~captum_ntk.metrics.datamodels.draw_subsets`; retraining
        ``r`` of subset ``m`` uses seed ``seed * 1_000_003 + m * runs + r + 1`` (TRAK's
        protocol: every retraining its own seed), or with ``shared_seeds`` seed
        ``seed * 1_000_003 + r + 1`` for every subset (common random numbers: run ``r`` of every
        subset starts from the same initialisation and draws its batches from the same random
        stream, so the outputs differ by the subset and not by the seed). Shared seeds measure
        how one training run responds to its data, and keep an LDS measurable where seed noise
        swamps the subset's effect (:meth:`SubsetGroundTruth.run_agreement` near 0).

        Args:
            num_subsets (int): M. Default: 100.
            runs (int): retrainings per subset R (different seeds). Default: 1.
            subset_fraction (float): fraction of the training set per subset. Default: 0.5.
            seed (int): seed of the subsets and of the retrainings. Default: 0.
            shared_seeds (bool): run ``r`` of every subset uses the same seed. Default: False.

        Returns:
            SubsetGroundTruth: masks ``(M, N)``, outputs ``(M, R, n_test)``, seeds ``(M, R)``.
        """
        if int(runs) < 1:
            raise ValueError(f"runs must be >= 1, got {runs}")
        masks = draw_subsets(self.num_train, num_subsets, subset_fraction, seed)
        if shared_seeds:
            seeds = seed * 1_000_003 + torch.arange(runs).repeat(num_subsets, 1) + 1
        else:
            seeds = seed * 1_000_003 + torch.arange(num_subsets * runs).reshape(num_subsets, runs)
            seeds = seeds + 1
        jobs = [
            (torch.nonzero(masks[m])[:, 0], int(seeds[m, r]))
            for m in range(num_subsets)
            for r in range(runs)
        ]
        outputs = self.retrain(jobs, desc="LDS subsets")
        return SubsetGroundTruth(masks, outputs.reshape(num_subsets, runs, -1), seeds)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()
