r"""Built-in retraining tasks for counterfactual evaluation (LDS, removal tests) on the digits.

A task fixes the data split, the architecture and the training recipe, and provides a picklable
``train_fn(train_indices, seed) -> model`` for :class:`~captum_ntk.metrics.RetrainingHarness`:

::

    task = get_task("digits-mlp")          # 900 train / 300 test, 64-48-48-10 MLP, Adam 30 epochs
    model = task.train(torch.arange(task.num_train), seed=0)
    harness = task.harness(cache_dir="lds/digits-mlp")
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ...metrics import RetrainingHarness, margin_output
from ..datasets import load_digits_tensors
from ..models import DigitsCNN, DigitsMLP, train_classifier

__all__ = ["TASKS", "RetrainingTask", "get_task"]


@dataclass
class RetrainingTask:
    r"""A dataset split, an architecture and a training recipe.

    Attributes:
        name (str): registry name.
        architecture (str): ``"mlp"`` (``DigitsMLP(hidden)``) or ``"cnn"`` (``DigitsCNN()``).
        hidden (int): MLP width. n_train, n_test (int): split sizes. split_seed (int): split seed.
        epochs, lr, batch_size: the recipe of :func:`~captum_ntk.apps.models.train_classifier`.
        threads (int): torch threads per training (0 leaves the setting alone).
    """

    name: str
    architecture: str = "mlp"
    hidden: int = 48
    n_train: int = 900
    n_test: int = 300
    split_seed: int = 0
    epochs: int = 30
    lr: float = 1e-2
    batch_size: int = 64
    threads: int = 0
    _data: tuple[Tensor, Tensor, Tensor, Tensor] | None = field(default=None, repr=False)

    @property
    def data(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x_train, y_train, x_test, y_test)``, loaded once."""
        if self._data is None:
            self._data = load_digits_tensors(
                train_size=self.n_train,
                test_size=self.n_test,
                seed=self.split_seed,
                image=self.architecture == "cnn",
            )
        return self._data

    @property
    def num_train(self) -> int:
        return self.n_train

    def make_model(self, seed: int) -> nn.Module:
        """A freshly initialised model (initialisation seeded by ``seed``)."""
        if self.architecture == "cnn":
            return DigitsCNN(num_outputs=10, seed=seed)
        return DigitsMLP(hidden=self.hidden, num_outputs=10, seed=seed)

    def train(self, train_indices: Tensor, seed: int) -> nn.Module:
        r"""Trains a fresh model on ``x_train[train_indices]``; deterministic given its arguments.

        Args:
            train_indices (Tensor): ``(n,)`` training examples to use.
            seed (int): seed of the initialisation and of the mini-batch order.

        Returns:
            nn.Module: the trained model in eval mode.
        """
        if self.threads:
            torch.set_num_threads(self.threads)
        x, y, _, _ = self.data
        index = torch.as_tensor(train_indices, dtype=torch.int64)
        model = self.make_model(seed)
        return train_classifier(
            model,
            x[index],
            y[index],
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            seed=seed,
        )

    __call__ = train

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_data"] = None  # reloaded by each worker
        return state

    def harness(
        self,
        cache_dir: str | os.PathLike | None = None,
        *,
        num_workers: int = 0,
        show_progress: bool = False,
    ) -> RetrainingHarness:
        """A :class:`RetrainingHarness` of this task measuring the test margins (logsumexp)."""
        _, _, x_test, y_test = self.data
        return RetrainingHarness(
            self,
            margin_output(x_test, y_test),
            self.num_train,
            cache_dir=cache_dir,
            num_workers=num_workers,
            show_progress=show_progress,
        )


#: The built-in tasks (one registry): the digits MLP of the LDS issue and a digits CNN.
TASKS: dict[str, RetrainingTask] = {
    "digits-mlp": RetrainingTask("digits-mlp", architecture="mlp", hidden=48),
    "digits-cnn": RetrainingTask("digits-cnn", architecture="cnn"),
}


def get_task(name: str) -> RetrainingTask:
    """A fresh copy of the built-in task ``name`` (see :data:`TASKS`)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    template = TASKS[name]
    return RetrainingTask(**{k: v for k, v in template.__dict__.items() if k != "_data"})
