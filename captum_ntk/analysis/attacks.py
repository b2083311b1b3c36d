r"""FGSM and PGD through any differentiable predictor, and their transfer to a network.

Implemented directly in torch (not ``captum.robust``, whose default loss ``-log(output)`` is NaN
on raw kernel outputs and whose FGSM skips coordinates with gradient <= 1e-6). Every attack
maximises a per-example objective (``attack_objective``) within an l_inf or l_2 ball of radius
``epsilon`` around the inputs, optionally clipped to a box ``clip = (low, high)``.

Losses (outputs (n,) / (n, 1) of a binary predictor, class 1 when > 0, or (n, C) scores):

- ``"ce"``: cross-entropy of the (n, C) outputs as logits.
- ``"bce"``: binary cross-entropy of the (n,) outputs as logits, labels 0/1.
- ``"margin"``: minus the margin ``z_y - max_{j != y} z_j`` ((2y - 1) z for one output);
  scale-free, the sensible choice for kernel regressors whose outputs are not logits.

Targeted attacks pass the target classes as ``labels`` and minimise the loss towards them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._validation import check_labels, predicted_labels

__all__ = ["TransferReport", "accuracy", "attack_objective", "fgsm", "pgd", "transfer_report"]

ForwardFn = Callable[[Tensor], Tensor]
_LOSSES = ("ce", "bce", "margin")
_NORMS = ("linf", "l2")


def _binary(outputs: Tensor) -> bool:
    return outputs.dim() == 1 or (outputs.dim() == 2 and outputs.shape[1] == 1)


def _check_label_range(outputs: Tensor, labels: Tensor) -> None:
    """Labels must be 0/1 for one output per example, in [0, C) for (n, C) outputs."""
    classes = 2 if _binary(outputs) else outputs.shape[-1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        kind = "one output per example (labels 0/1)" if _binary(outputs) else f"{classes} outputs"
        raise ValueError(
            f"labels must lie in [0, {classes}) for a predictor with {kind}, got values in "
            f"[{int(labels.min())}, {int(labels.max())}]."
        )


def attack_objective(
    outputs: Tensor, labels: Tensor, loss: str = "margin", targeted: bool = False
) -> Tensor:
    r"""Per-example objective an attack maximises.

    Args:
        outputs (Tensor): (n,), (n, 1) or (n, C) raw outputs.
        labels (Tensor): (n,) true classes (untargeted) or target classes (targeted).
        loss (str): ``"ce"``, ``"bce"`` or ``"margin"``. Default: ``"margin"``.
        targeted (bool): minimise the loss towards ``labels`` instead. Default: False.

    Returns:
        Tensor: (n,) objective (the loss, or minus the loss when targeted).
    """
    if loss not in _LOSSES:
        raise ValueError(f"loss must be one of {_LOSSES}, got {loss!r}.")
    labels = labels.long()
    _check_label_range(outputs, labels)
    if _binary(outputs):
        z = outputs.reshape(-1)
        if loss == "ce":
            raise ValueError("loss='ce' needs (n, C) outputs, C > 1; use 'bce' or 'margin'.")
        if loss == "bce":
            value = F.binary_cross_entropy_with_logits(z, labels.to(z.dtype), reduction="none")
        else:
            value = -(2.0 * labels.to(z.dtype) - 1.0) * z
    else:
        if loss == "bce":
            raise ValueError("loss='bce' needs one output per example; use 'ce' or 'margin'.")
        if loss == "ce":
            value = F.cross_entropy(outputs, labels, reduction="none")
        else:
            true = outputs.gather(1, labels[:, None]).squeeze(1)
            others = outputs.scatter(1, labels[:, None], float("-inf")).amax(1)
            value = others - true
    return -value if targeted else value


def accuracy(outputs: Tensor, labels: Tensor) -> float:
    r"""Share of ``predicted_labels(outputs) == labels`` (outputs (n,) / (n, C)).

    Raises:
        ValueError: for labels outside [0, C) (0/1 for one output per example).
    """
    _check_label_range(outputs, labels.long())
    return float((predicted_labels(outputs.detach()).cpu() == labels.long().cpu()).double().mean())


def _check_attack(epsilon: float, norm: str, clip: tuple[float, float] | None) -> None:
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}.")
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}.")
    if clip is not None and not clip[0] < clip[1]:
        raise ValueError(f"clip must be (low, high) with low < high, got {clip}.")


def _gradient(forward_func: ForwardFn, x: Tensor, labels: Tensor, loss: str, targeted: bool):
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        objective = attack_objective(forward_func(x), labels, loss, targeted)
        if not objective.requires_grad:
            raise RuntimeError(
                "The predictor's outputs carry no gradient to the inputs: its kernel is not "
                "differentiable in x (e.g. ModelKernel / kernel_matrix). Use EmpiricalNTK, "
                "ReLUNTK, RBFKernel or linear_kernel."
            )
        (grad,) = torch.autograd.grad(objective.sum(), x)
    return grad, objective.detach()


def _ascent(grad: Tensor, norm: str) -> Tensor:
    """Unit-norm steepest-ascent direction per example (sign for l_inf)."""
    if norm == "linf":
        return grad.sign()
    flat = grad.reshape(grad.shape[0], -1)
    length = flat.norm(dim=1).clamp_min(torch.finfo(grad.dtype).tiny)
    return (flat / length[:, None]).reshape(grad.shape)


def _project(delta: Tensor, epsilon: float, norm: str) -> Tensor:
    if norm == "linf":
        return delta.clamp(-epsilon, epsilon)
    flat = delta.reshape(delta.shape[0], -1)
    length = flat.norm(dim=1, keepdim=True)
    factor = torch.where(
        length > epsilon, epsilon / length.clamp_min(1e-30), torch.ones_like(length)
    )
    return (flat * factor).reshape(delta.shape)


def _clip(x: Tensor, clip: tuple[float, float] | None) -> Tensor:
    return x if clip is None else x.clamp(clip[0], clip[1])


def fgsm(
    forward_func: ForwardFn,
    inputs: Tensor,
    labels: Tensor,
    epsilon: float,
    *,
    norm: str = "linf",
    loss: str = "margin",
    targeted: bool = False,
    clip: tuple[float, float] | None = None,
) -> Tensor:
    r"""Fast gradient (sign) method: one step of length ``epsilon`` along the ascent direction.

    l_inf: ``x + epsilon sign(grad)``; l_2: ``x + epsilon grad / |grad|_2`` (per example).

    Args:
        forward_func (callable): differentiable predictor, (n, ...) -> (n,) or (n, C).
        inputs (Tensor): (n, ...) clean inputs.
        labels (Tensor): (n,) true (or, with ``targeted``, target) classes.
        epsilon (float): radius of the perturbation ball.
        norm (str): ``"linf"`` or ``"l2"``. Default: ``"linf"``.
        loss (str): ``"ce"``, ``"bce"`` or ``"margin"``. Default: ``"margin"``.
        targeted (bool): move towards ``labels``. Default: False.
        clip (tuple, optional): (low, high) box for the adversarial inputs. Default: None.

    Returns:
        Tensor: (n, ...) adversarial inputs (detached).
    """
    _check_attack(epsilon, norm, clip)
    labels = check_labels(labels, inputs.shape[0])
    grad, _ = _gradient(forward_func, inputs, labels, loss, targeted)
    return _clip(inputs.detach() + epsilon * _ascent(grad, norm), clip).detach()


def _random_start(x: Tensor, epsilon: float, norm: str, generator: torch.Generator) -> Tensor:
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    if norm == "linf":
        return (2 * noise - 1) * epsilon
    direction = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    radius = epsilon * noise.reshape(x.shape[0], -1)[:, :1] ** (1.0 / x[0].numel())
    return _ascent(direction, "l2") * radius.reshape(-1, *([1] * (x.dim() - 1)))


def pgd(
    forward_func: ForwardFn,
    inputs: Tensor,
    labels: Tensor,
    epsilon: float,
    *,
    step_size: float | None = None,
    steps: int = 10,
    norm: str = "linf",
    loss: str = "margin",
    targeted: bool = False,
    random_start: bool = False,
    clip: tuple[float, float] | None = None,
    seed: int = 0,
) -> Tensor:
    r"""Projected gradient descent (ascent on the objective), keeping each example's best iterate.

    Each step moves ``step_size`` along the ascent direction (sign for l_inf, normalised gradient
    for l_2), projects onto the ``epsilon`` ball around the clean input and clips to the box.
    The returned input is the iterate with the highest objective per example (the start
    included), so with ``random_start=False`` and ``step_size=epsilon`` PGD is never weaker than
    FGSM.

    Args:
        forward_func, inputs, labels, epsilon, norm, loss, targeted, clip: as :func:`fgsm`.
        step_size (float, optional): step length. Default: ``2.5 epsilon / steps``.
        steps (int): iterations. Default: 10.
        random_start (bool): start from a uniform point of the ball. Default: False.
        seed (int): seed of the random start. Default: 0.

    Returns:
        Tensor: (n, ...) adversarial inputs (detached).
    """
    _check_attack(epsilon, norm, clip)
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}.")
    labels = check_labels(labels, inputs.shape[0])
    if step_size is not None and not step_size > 0:
        raise ValueError(f"step_size must be > 0 (or None), got {step_size}.")
    step = 2.5 * epsilon / steps if step_size is None else float(step_size)
    clean = inputs.detach()
    delta = torch.zeros_like(clean)
    if random_start:
        delta = _random_start(clean, epsilon, norm, torch.Generator().manual_seed(seed))
    x = _clip(clean + delta, clip)
    best, best_value = x.clone(), None
    for _ in range(steps):
        grad, value = _gradient(forward_func, x, labels, loss, targeted)
        best, best_value = _keep_best(best, best_value, x, value)
        delta = _project(x + step * _ascent(grad, norm) - clean, epsilon, norm)
        x = _clip(clean + delta, clip)
    with torch.no_grad():
        value = attack_objective(forward_func(x), labels, loss, targeted)
    best, _ = _keep_best(best, best_value, x, value)
    return best.detach()


def _keep_best(best: Tensor, best_value: Tensor | None, x: Tensor, value: Tensor):
    if best_value is None:
        return x.clone(), value
    better = value > best_value
    mask = better.reshape(-1, *([1] * (x.dim() - 1)))
    return torch.where(mask, x, best), torch.where(better, value, best_value)


@dataclass
class TransferReport:
    r"""Accuracies of a kernel predictor and a network on clean, adversarial and noisy inputs.

    The adversarial inputs are crafted on the kernel predictor only; ``noise_network`` is the
    network's accuracy under random perturbations of the same size (the control).
    """

    clean_kernel: float
    clean_network: float
    adversarial_kernel: float
    adversarial_network: float
    noise_network: float
    epsilon: float

    def as_dict(self) -> dict[str, float]:
        """The report as a dict of floats."""
        return asdict(self)


def transfer_report(
    kernel_predictor: ForwardFn,
    network: ForwardFn,
    inputs: Tensor,
    labels: Tensor,
    epsilon: float,
    *,
    attack: str = "pgd",
    seed: int = 0,
    return_inputs: bool = False,
    **attack_kwargs,
) -> TransferReport | tuple[TransferReport, Tensor]:
    r"""Attacks the kernel predictor and evaluates the adversarial inputs on the network.

    Args:
        kernel_predictor (callable): differentiable predictor (e.g. a :class:`KernelRegressor`).
        network (callable): the finite network (``nn.Module`` in eval mode), never differentiated.
        inputs (Tensor): (n, ...) clean inputs. labels (Tensor): (n,) true classes.
        epsilon (float): attack radius.
        attack (str): ``"pgd"`` or ``"fgsm"``. Default: ``"pgd"``.
        seed (int): seed of the random-noise control (and of PGD's random start).
        return_inputs (bool): also return the adversarial inputs. Default: False.
        **attack_kwargs: ``norm``, ``loss``, ``clip``, ``steps``, ``step_size``, ... of the attack.

    Returns:
        TransferReport (and the (n, ...) adversarial inputs with ``return_inputs``).
    """
    if attack not in ("pgd", "fgsm"):
        raise ValueError(f"attack must be 'pgd' or 'fgsm', got {attack!r}.")
    labels = check_labels(labels, inputs.shape[0])
    if attack == "pgd":
        adversarial = pgd(kernel_predictor, inputs, labels, epsilon, seed=seed, **attack_kwargs)
    else:
        adversarial = fgsm(kernel_predictor, inputs, labels, epsilon, **attack_kwargs)
    norm = attack_kwargs.get("norm", "linf")
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(inputs.shape, generator=generator, dtype=inputs.dtype).to(inputs.device)
    noisy = _clip(inputs + epsilon * _ascent(noise, norm), attack_kwargs.get("clip"))
    with torch.no_grad():
        report = TransferReport(
            clean_kernel=accuracy(kernel_predictor(inputs), labels),
            clean_network=accuracy(network(inputs), labels),
            adversarial_kernel=accuracy(kernel_predictor(adversarial), labels),
            adversarial_network=accuracy(network(adversarial), labels),
            noise_network=accuracy(network(noisy), labels),
            epsilon=float(epsilon),
        )
    return (report, adversarial) if return_inputs else report
