r"""Training loops of the reproduced rows (the losses and optimisers of the authors' scripts).

Losses: ``"mse_sigmoid"`` (MSE between sigmoid(logit) and the 0/1 label: the MNIST2 MLP and
CNN), ``"mse"`` (MSE between the raw logit and the label: FMNIST2), ``"bce"``
(BCEWithLogits: CIFAR2), ``"ce"`` (cross-entropy: the 10-class and text models).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

__all__ = ["TrainSettings", "loss_value", "train_model"]


@dataclass(frozen=True)
class TrainSettings:
    r"""How a row's network is trained.

    Args:
        optimizer (str): ``"sgd"`` or ``"adam"``.
        lr (float): learning rate.
        epochs (int): passes over the training set.
        batch_size (int): mini-batch size.
        loss (str): ``"mse_sigmoid"``, ``"mse"``, ``"bce"`` or ``"ce"``.
        momentum (float): SGD momentum. Default: 0.
        weight_decay (float): L2 weight decay. Default: 0.
        cosine (bool): cosine learning-rate schedule over the epochs. Default: False.
        augment (bool): random crop (padding 4) and horizontal flip of 32x32 images.
                Default: False.
    """

    optimizer: str
    lr: float
    epochs: int
    batch_size: int
    loss: str
    momentum: float = 0.0
    weight_decay: float = 0.0
    cosine: bool = False
    augment: bool = False


def loss_value(logits: Tensor, labels: Tensor, loss: str) -> Tensor:
    r"""The training loss of a batch.

    Args:
        logits (Tensor): (B, C) or (B, 1) logits.
        labels (Tensor): (B,) integer labels.
        loss (str): see the module docstring.

    Returns:
        Tensor: the scalar loss.
    """
    if loss == "ce":
        return F.cross_entropy(logits, labels.long())
    score, target = logits.reshape(-1), labels.to(logits.dtype)
    if loss == "mse_sigmoid":
        return F.mse_loss(torch.sigmoid(score), target)
    if loss == "mse":
        return F.mse_loss(score, target)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(score, target)
    raise ValueError(f"unknown loss {loss!r}; choose mse_sigmoid, mse, bce or ce.")


def _augment(x: Tensor, generator: torch.Generator) -> Tensor:
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    n = x.shape[0]
    dx = torch.randint(0, 9, (n,), generator=generator).tolist()
    dy = torch.randint(0, 9, (n,), generator=generator).tolist()
    flip = (torch.rand(n, generator=generator) < 0.5).tolist()
    out = torch.stack([padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32] for i in range(n)])
    return torch.where(torch.tensor(flip, device=x.device)[:, None, None, None], out.flip(3), out)


def _optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
        )
    raise ValueError(f"unknown optimizer {settings.optimizer!r}; choose sgd, adam or adamw.")


def train_model(
    model: nn.Module,
    inputs: Tensor | Mapping[str, Tensor],
    labels: Tensor,
    settings: TrainSettings,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    show_progress: bool = True,
    forward: Callable[[nn.Module, Any], Tensor] | None = None,
) -> list[float]:
    r"""Trains ``model`` in place and leaves it in eval mode.

    Args:
        model (nn.Module): the network (moved to ``device``).
        inputs (Tensor or Mapping): (N, ...) inputs, or a mapping of (N, ...) tensors (text).
        labels (Tensor): (N,) integer labels.
        settings (TrainSettings): optimiser, loss, epochs, ...
        seed (int): seed of the shuffling and augmentation. Default: 0.
        device (torch.device or str): where to train. Default: ``"cpu"``.
        show_progress (bool): tqdm bar over epochs with the loss and an ETA. Default: True.
        forward (Callable, optional): ``forward(model, batch) -> logits``. Default:
                ``model(batch)`` for a Tensor, ``model(**batch).logits`` for a mapping.

    Returns:
        list of float: the mean training loss of each epoch.
    """
    model.to(device)
    n = len(labels)
    generator = torch.Generator().manual_seed(seed)
    optimizer = _optimizer(model, settings)
    steps = settings.epochs * max(1, -(-n // settings.batch_size))
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
        if settings.cosine
        else None
    )
    forward = forward or _default_forward
    history: list[float] = []
    model.train()
    bar = tqdm(range(settings.epochs), desc="training", disable=not show_progress, leave=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in bar:
            order = torch.randperm(n, generator=generator)
            total = 0.0
            for start in range(0, n, settings.batch_size):
                idx = order[start : start + settings.batch_size]
                if len(idx) < 2 and _has_batchnorm(model):
                    continue
                batch = _select(inputs, idx, device)
                if settings.augment:
                    batch = _augment(batch, generator)
                loss = loss_value(forward(model, batch), labels[idx].to(device), settings.loss)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if schedule is not None:
                    schedule.step()
                total += float(loss.detach()) * len(idx)
            history.append(total / max(n, 1))
            bar.set_postfix(loss=f"{history[-1]:.4f}")
    model.eval()
    return history


def _default_forward(model: nn.Module, batch: Any) -> Tensor:
    if isinstance(batch, Mapping):
        out = model(**batch)
        return out.logits if hasattr(out, "logits") else out
    return model(batch)


def _select(inputs: Tensor | Mapping[str, Tensor], idx: Tensor, device: Any) -> Any:
    if isinstance(inputs, Mapping):
        return {k: v[idx].to(device) for k, v in inputs.items()}
    return inputs[idx].to(device)


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
