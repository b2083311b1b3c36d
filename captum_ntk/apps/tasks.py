r"""Small, seeded, CPU-fast classification tasks on scikit-learn's digits, for tests and demos.

Each task returns a :class:`Task`: a trained model in eval mode and its train / test tensors.

* :func:`near_separable_task`: digits 0 vs 1 (near-separable), a deep BatchNorm CNN with one
  logit trained to a confident fit (> 99 % test accuracy, median |training logit| ~8):
  the setting where the paper's label-fitted kGLM stops tracking the network;
* :func:`digits_task`: the 10-class MLP or CNN of :mod:`captum_ntk.apps.models`, or the
  single-logit MLP on digits 3 vs 8.

::

    task = near_separable_task(seed=0)
    attr = TrNTKAttribution(task.model, TensorDataset(task.x_train, task.y_train))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .datasets import load_digits_tensors
from .models import DigitsCNN, DigitsMLP, train_classifier

__all__ = ["SeparableCNN", "Task", "digits_task", "near_separable_task"]

#: Digits of the near-separable binary task (label 0 = digit 0, label 1 = digit 1).
NEAR_SEPARABLE_CLASSES = (0, 1)


@dataclass
class Task:
    r"""A trained classifier and its data.

    Attributes:
        name (str): short name.
        model (nn.Module): trained, in eval mode, float32.
        x_train (Tensor): ``(N, 1, 8, 8)`` or ``(N, 64)`` float32 inputs in [0, 1].
        y_train (Tensor): ``(N,)`` int64 labels (0/1 for one-logit models).
        x_test (Tensor): ``(n, ...)`` test inputs.
        y_test (Tensor): ``(n,)`` test labels.
        description (str): one line saying what the task is.
    """

    name: str
    model: nn.Module
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    description: str

    def accuracy(self) -> float:
        """Test accuracy of the model (one logit: ``logit > 0`` predicts class 1)."""
        with torch.no_grad():
            logits = self.model(self.x_test)
        if logits.dim() == 1 or logits.shape[1] == 1:
            predicted = (logits.reshape(-1) > 0).long()
        else:
            predicted = logits.argmax(dim=1)
        return float((predicted == self.y_test).double().mean())


class SeparableCNN(nn.Module):
    r"""A deep, narrow BatchNorm CNN for 1 x 8 x 8 digits.

    ``depth`` blocks ``conv3x3(width) -> BatchNorm -> ReLU`` (``padding=1``), a 2 x 2 max-pool
    after the first half, then ``Linear(16 width, num_outputs)``. With the defaults (depth 6,
    width 16, one logit): 12 conv/BatchNorm layers plus the head, 12,257 parameters.

    Args:
        depth (int): number of conv-BN-ReLU blocks (>= 2). Default: 6.
        width (int): channels of every conv. Default: 16.
        num_outputs (int): logits. Default: 1.
        seed (int): seed of the initialisation (the global RNG is left untouched). Default: 0.

    Shapes:
        input: (B, 1, 8, 8) or (B, 64). output: (B, num_outputs).
    """

    def __init__(
        self, depth: int = 6, width: int = 16, num_outputs: int = 1, *, seed: int = 0
    ) -> None:
        super().__init__()
        if depth < 2 or width < 1 or num_outputs < 1:
            raise ValueError(
                f"need depth >= 2, width >= 1, num_outputs >= 1; got {depth}, {width}, "
                f"{num_outputs}"
            )
        self.pool_after = depth // 2
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.convs = nn.ModuleList(
                nn.Conv2d(1 if i == 0 else width, width, 3, padding=1) for i in range(depth)
            )
            self.norms = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(depth))
            self.fc = nn.Linear(width * 16, num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        r"""Logits.

        Args:
            x (Tensor): (B, 1, 8, 8) or (B, 64) pixels.

        Returns:
            Tensor: (B, num_outputs) logits.
        """
        h = x.reshape(x.shape[0], 1, 8, 8)
        for index, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            h = F.relu(norm(conv(h)))
            if index + 1 == self.pool_after:
                h = F.max_pool2d(h, 2)
        return self.fc(h.flatten(1))


def near_separable_task(
    seed: int = 0, *, epochs: int = 15, lr: float = 3e-3, test_size: float = 0.5
) -> Task:
    r"""Digits 0 vs 1 with a confident one-logit BatchNorm CNN (:class:`SeparableCNN`).

    The two digits are nearly linearly separable; the network reaches > 99 % test accuracy
    with large training logits. Deterministic for a given ``seed`` on the CPU (split,
    initialisation, shuffling); trains in a few seconds on one CPU core.

    Args:
        seed (int): seed of the split, the initialisation and the training. Default: 0.
        epochs (int): Adam epochs. Default: 15.
        lr (float): Adam learning rate. Default: 3e-3.
        test_size (float): fraction held out for testing. Default: 0.5.

    Returns:
        Task: ``model`` (eval mode, logits (B, 1)), ``x_*`` (N, 1, 8, 8), ``y_*`` in {0, 1}
        (about 180 train and 180 test digits).
    """
    x_train, y_train, x_test, y_test = load_digits_tensors(
        classes=NEAR_SEPARABLE_CLASSES, test_size=test_size, seed=seed, image=True
    )
    model = SeparableCNN(seed=seed)
    train_classifier(model, x_train, y_train, epochs=epochs, lr=lr, batch_size=32, seed=seed)
    return Task(
        "near-separable",
        model,
        x_train,
        y_train,
        x_test,
        y_test,
        "digits 0 vs 1, SeparableCNN (6 conv-BN-ReLU blocks, one logit)",
    )


def digits_task(kind: str = "mlp", seed: int = 0, *, n_train: int = 500) -> Task:
    r"""The demo's digits models: ``"mlp"``, ``"cnn"`` (10 classes) or ``"mlp-binary"``.

    Same architectures and training settings as ``captum-ntk demo``: ``DigitsMLP(64)`` (Adam
    1e-3, 30 epochs), ``DigitsCNN`` (3e-4, 30 epochs), and the one-logit ``DigitsMLP`` on
    digits 3 vs 8 (3e-4, 60 epochs).

    Args:
        kind (str): ``"mlp"``, ``"cnn"`` or ``"mlp-binary"``. Default: ``"mlp"``.
        seed (int): seed of the split, initialisation and training. Default: 0.
        n_train (int): training digits (at most 60 % of the binary subset). Default: 500.

    Returns:
        Task: the trained model and its data.
    """
    if kind == "mlp-binary":
        data = load_digits_tensors(classes=(3, 8), test_size=0.4, seed=seed)
        x_train, y_train = data[0][:n_train], data[1][:n_train]
        model = DigitsMLP(hidden=64, num_outputs=1, seed=seed)
        train_classifier(model, x_train, y_train, epochs=60, lr=3e-4, seed=seed)
        return Task(kind, model, x_train, y_train, data[2], data[3], "DigitsMLP, 3 vs 8")
    if kind not in ("mlp", "cnn"):
        raise ValueError(f"kind must be 'mlp', 'cnn' or 'mlp-binary', got {kind!r}")
    image = kind == "cnn"
    x_train, y_train, x_test, y_test = load_digits_tensors(
        train_size=n_train, test_size=0.25, seed=seed, image=image
    )
    if image:
        model: nn.Module = DigitsCNN(num_outputs=10, seed=seed)
        lr = 3e-4
    else:
        model, lr = DigitsMLP(hidden=64, num_outputs=10, seed=seed), 1e-3
    train_classifier(model, x_train, y_train, epochs=30, lr=lr, seed=seed)
    return Task(kind, model, x_train, y_train, x_test, y_test, f"Digits{kind.upper()}, 10 classes")
