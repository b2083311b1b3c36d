r"""Small classifiers for the 8x8 digits of :func:`captum_ntk.datasets.load_digits_tensors`.

Plain PyTorch, seeded initialisation, and small enough that the exact trace-NTK of ~1000
training points takes seconds on a CPU::

    model = DigitsMLP(hidden=64, num_outputs=10, seed=0)        # inputs (B, 64) or (B, 1, 8, 8)
    model = DigitsCNN(num_outputs=1, seed=0)                     # inputs (B, 1, 8, 8), one logit
    model = train_classifier(model, X_train, y_train, epochs=30, seed=0)  # eval mode

``num_outputs=1`` gives a single-logit binary classifier (sigmoid / BCEWithLogits), the
layout of the paper's MNIST2 / CIFAR2 / FMNIST2 models.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

__all__ = ["DigitsCNN", "DigitsMLP", "train_classifier"]


def _check_outputs(num_outputs: int) -> None:
    if int(num_outputs) != num_outputs or num_outputs < 1:
        raise ValueError(f"num_outputs must be a positive integer, got {num_outputs!r}.")


class DigitsMLP(nn.Module):
    r"""Two-hidden-layer ReLU MLP for flattened 8x8 digits.

    ``64 -> hidden -> hidden -> num_outputs``; P = 64h + h + h^2 + h + (h + 1) C parameters
    (8,970 for h = 64, C = 10).

    Args:
        hidden (int): width of the hidden layers. Default: 64.
        num_outputs (int): number of logits C; 1 for a single-logit binary classifier.
                Default: 10.
        in_features (int): input size. Default: 64 (8 x 8 pixels).
        seed (int): seed of the parameter initialisation (the global RNG is left untouched).
                Default: 0.

    Shapes:
        input: (B, 64) or (B, 1, 8, 8) (flattened). output: (B, num_outputs).
    """

    def __init__(
        self, hidden: int = 64, num_outputs: int = 10, *, in_features: int = 64, seed: int = 0
    ) -> None:
        super().__init__()
        _check_outputs(num_outputs)
        self.num_outputs = int(num_outputs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.fc1 = nn.Linear(in_features, hidden)
            self.fc2 = nn.Linear(hidden, hidden)
            self.fc3 = nn.Linear(hidden, num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        r"""Logits.

        Args:
            x (Tensor): (B, 64) or (B, 1, 8, 8) pixels.

        Returns:
            Tensor: (B, num_outputs) logits.
        """
        h = F.relu(self.fc1(x.flatten(1)))
        h = F.relu(self.fc2(h))
        return self.fc3(h)


class DigitsCNN(nn.Module):
    r"""Small CNN for 1 x 8 x 8 digits: two conv-BatchNorm-ReLU layers, max-pooling, one Linear.

    ``conv(1->c1, 3x3) BN ReLU -> conv(c1->c2, 3x3) BN ReLU -> maxpool 2 -> flatten
    -> Linear(16 c2, num_outputs)``. With the defaults (c1 = 16, c2 = 32) P = 4,896 + 513 C
    parameters (10,026 for C = 10), so the exact trace-NTK of a thousand digits takes seconds on
    a CPU. The widths are chosen for faithfulness: narrower variants, or global average
    pooling before the Linear layer, train further from their tangent kernel and give kGLM
    surrogates with lower Kendall tau (see the demo's report). BatchNorm makes train mode
    batch-dependent: put the model in eval mode (:func:`train_classifier` does) before
    computing kernels.

    Args:
        num_outputs (int): number of logits C; 1 for a single-logit binary classifier.
                Default: 10.
        channels (tuple of int): (c1, c2) conv widths. Default: (16, 32).
        seed (int): seed of the parameter initialisation (the global RNG is left untouched).
                Default: 0.

    Shapes:
        input: (B, 1, 8, 8) or (B, 64) (reshaped). output: (B, num_outputs).
    """

    def __init__(
        self, num_outputs: int = 10, *, channels: tuple[int, int] = (16, 32), seed: int = 0
    ) -> None:
        super().__init__()
        _check_outputs(num_outputs)
        self.num_outputs = int(num_outputs)
        c1, c2 = channels
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(c1)
            self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(c2)
            self.fc = nn.Linear(c2 * 16, num_outputs)

    def embedding(self, x: Tensor) -> Tensor:
        r"""Input of the last Linear layer (the conjugate kernel's embedding).

        Args:
            x (Tensor): (B, 1, 8, 8) or (B, 64) pixels.

        Returns:
            Tensor: (B, 16 c2) pooled, flattened feature maps.
        """
        x = x.reshape(x.shape[0], 1, 8, 8)
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return F.max_pool2d(h, 2).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        r"""Logits.

        Args:
            x (Tensor): (B, 1, 8, 8) or (B, 64) pixels.

        Returns:
            Tensor: (B, num_outputs) logits.
        """
        return self.fc(self.embedding(x))


def train_classifier(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    *,
    epochs: int = 30,
    lr: float = 1e-2,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 0.0,
    show_progress: bool = False,
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    r"""Trains a classifier with Adam and returns it in eval mode.

    Cross-entropy for C > 1 logits; ``BCEWithLogitsLoss`` on the single logit for
    ``num_outputs = 1`` (labels 0/1). Mini-batches are shuffled by a generator seeded with
    ``seed``, so the same call gives the same model (on the CPU).

    Args:
        model (nn.Module): the classifier, returning logits (B, C) or (B, 1) / (B,).
        X (Tensor): (N, ...) training inputs.
        y (Tensor): (N,) integer labels in [0, C) (0/1 for one logit).
        epochs (int): passes over the data. Default: 30.
        lr (float): Adam learning rate. Default: 1e-2.
        batch_size (int): mini-batch size. Default: 64.
        seed (int): seed of the shuffling (and of any randomness in the model).
                Default: 0.
        weight_decay (float): Adam's L2 weight decay. Default: 0.
        show_progress (bool): tqdm bar over epochs showing the loss. Default: False.
        on_epoch_end (Callable, optional): ``on_epoch_end(epoch, model)`` after each epoch
                (1-based), e.g. to save TracIn checkpoints; it must not change the model.

    Returns:
        nn.Module: the same model, trained, in eval mode.
    """
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} examples but y has {len(y)} labels.")
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"epochs must be >= 0 and batch_size >= 1, got {epochs}, {batch_size}.")
    y = y.long()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    bar = tqdm(range(epochs), desc="training", disable=not show_progress, leave=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for epoch in bar:
            order = torch.randperm(len(X), generator=generator)
            total = 0.0
            for start in range(0, len(X), batch_size):
                idx = order[start : start + batch_size]
                if len(idx) < 2 and any(
                    isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
                ):
                    continue  # BatchNorm cannot normalise a batch of one
                logits = model(X[idx])
                loss = _loss(logits, y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
            bar.set_postfix(loss=f"{total / max(len(X), 1):.4f}")
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, model)
    return model.eval()


def _loss(logits: Tensor, y: Tensor) -> Tensor:
    if logits.dim() == 1 or logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits.reshape(-1), y.to(logits.dtype))
    return F.cross_entropy(logits, y)
