r"""``reproduce --store DIR``: a row's trained networks and kernels on disk, reused by a rerun.

Layout: ``DIR/seed{s}/network-{key}.pt`` (the trained state_dict) and
``DIR/seed{s}/{kernel}-{key}.pt`` (the train and test kernel matrices), plus ``features/`` for the
feature stores of projected kernels. Each key is a SHA-256 of what the file depends on, so a rerun
with other data, another recipe or another network state computes (and stores) anew instead of
reusing a stale file:

- network: the row, the training recipe, the seed and the data (inputs and labels, by content);
- kernels: the network's parameters (by content), the kernel and its options, and the data.

Files are written atomically (a temporary file, then a rename), so an interrupted run leaves no
partial file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...engine.fingerprint import model_fingerprint
from .data import RowData
from .training import TrainSettings

__all__ = ["RowStore", "data_key"]


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tensor_digest(value: Any, sha: Any) -> None:
    if isinstance(value, Mapping):
        for key in sorted(value):
            sha.update(str(key).encode())
            _tensor_digest(value[key], sha)
    elif isinstance(value, Tensor):
        t = value.detach().cpu().contiguous()
        sha.update(f"{t.dtype}{tuple(t.shape)}".encode())
        sha.update(t.view(torch.uint8).numpy().tobytes())


def data_key(data: RowData) -> str:
    """A content digest of a row's splits (inputs and labels)."""
    sha = hashlib.sha256()
    for value in (data.x_train, data.y_train, data.x_test, data.y_test):
        _tensor_digest(value, sha)
    return sha.hexdigest()[:16]


def _save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class RowStore:
    r"""The trained networks and kernels of one row's runs.

    Args:
        root (Path): ``--store DIR``.
        row (str): the row's name.
        data (RowData): the row's data (its content is part of every key).
    """

    def __init__(self, root: Path, row: str, data: RowData) -> None:
        self.root = Path(root)
        self.row = row
        self.data = data_key(data)
        #: what was reused, for the report's notes
        self.reused: list[str] = []

    def network(
        self, seed: int, settings: TrainSettings, model: nn.Module, train: Callable[[], None]
    ) -> bool:
        r"""Loads the trained state of ``model`` if stored, else runs ``train()`` and stores it.

        Returns:
            bool: whether the network was loaded.
        """
        key = _digest(self.row, asdict(settings), seed, self.data)
        path = self.root / f"seed{seed}" / f"network-{key}.pt"
        if path.is_file():
            model.load_state_dict(torch.load(path, map_location="cpu"))
            self.reused.append(f"seed {seed} network ({path})")
            return True
        train()
        _save_atomic({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
        return False

    def kernels(
        self,
        seed: int,
        kernel: str,
        options: Mapping[str, Any],
        model: nn.Module,
        compute: Callable[[], tuple[Tensor, Tensor]],
    ) -> tuple[Tensor, Tensor]:
        r"""The (train, test) kernel matrices of ``model``: loaded if stored, else computed and
        stored."""
        fingerprint = model_fingerprint(model, content=True)
        key = _digest(kernel, dict(options), fingerprint, self.data)
        path = self.root / f"seed{seed}" / f"{kernel}-{key}.pt"
        if path.is_file():
            stored = torch.load(path, map_location="cpu")
            self.reused.append(f"seed {seed} {kernel} kernels ({path})")
            return stored["train"], stored["test"]
        train, test = compute()
        _save_atomic({"train": train.detach().cpu(), "test": test.detach().cpu()}, path)
        return train, test

    def lds_dir(self, seed: int, settings: TrainSettings) -> Path:
        """The retraining cache of the LDS ground truth, keyed like the network (row, recipe,
        data), so another recipe or other data never reads stale retrainings."""
        key = _digest(self.row, asdict(settings), self.data)
        return self.root / "lds" / key / f"seed{seed}"

    def features(self, seed: int, kernel: str) -> Path:
        """The feature-store folder of a projected kernel (reused by its attribution class)."""
        return self.root / "features" / f"seed{seed}" / kernel
