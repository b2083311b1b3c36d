r"""Peer data-attribution methods for ``attribution_quality.py``, all in Captum's orientation.

- :func:`trak_scores`: TRAK's estimator (Park et al. 2023, ``trak`` package defaults) written
  here with torch.func: per model, projected gradients ``phi`` of the margin
  ``log(p / (1 - p))`` of the correct class (Rademacher JL, K dims), then
  ``phi_z (Phi^T Phi)^{-1} Phi^T``; summed over models and multiplied by the mean over models of
  ``1 - p_i`` (TRAK's ``out_to_loss`` term), as ``trak.TRAKer`` does.
- :func:`grad_dot_scores`: gradient dot product of the cross-entropy losses at the final model.
- :func:`tracin_cp_scores`: Captum's ``TracInCP`` over checkpoints saved during training.
- :func:`representer_scores`: representer points (Yeh et al. 2018) on the last Linear layer:
  ``alpha_{i, y_z} <f_i, f_z>`` with ``alpha_i = onehot(y_i) - softmax(x_i)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap


def _params(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in model.named_parameters()}


def _per_example_grads(model: nn.Module, x: Tensor, y: Tensor, kind: str) -> Tensor:
    """(n, P) gradients of the margin (``kind="margin"``) or the cross-entropy loss."""
    params = _params(model)

    def value(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        logits = functional_call(model, p, (xi[None],))[0]
        if kind == "loss":
            return F.cross_entropy(logits[None], yi[None])
        rest = logits.scatter(0, yi[None], -torch.inf)
        return logits.gather(0, yi[None])[0] - torch.logsumexp(rest, dim=0)

    out = []
    for s in range(0, len(x), 256):
        g = vmap(grad(value), in_dims=(None, 0, 0))(params, x[s : s + 256], y[s : s + 256])
        out.append(torch.cat([g[k].flatten(1) for k in params], dim=1))
    return torch.cat(out)


def _rademacher(num_params: int, dim: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (num_params, dim), generator=generator).float() * 2 - 1
    return signs / math.sqrt(dim)


def trak_scores(
    models: Sequence[nn.Module],
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    projection_dim: int = 512,
    seed: int = 0,
) -> Tensor:
    r"""TRAK scores of an ensemble of independently trained models.

    Returns:
        Tensor: ``(n_test, n_train)`` float64.
    """
    total = None
    out_to_loss = torch.zeros(len(x_train), dtype=torch.float64)
    for index, model in enumerate(models):
        model = model.eval()
        train_grads = _per_example_grads(model, x_train, y_train, "margin")
        test_grads = _per_example_grads(model, x_test, y_test, "margin")
        projection = _rademacher(train_grads.shape[1], projection_dim, seed + index)
        phi = (train_grads @ projection).double()
        phi_test = (test_grads @ projection).double()
        gram = phi.T @ phi
        gram.diagonal().add_(1e-10 * float(gram.diagonal().mean()))
        scores = phi_test @ torch.linalg.solve(gram, phi.T)
        total = scores if total is None else total + scores
        with torch.no_grad():
            probs = torch.softmax(model(x_train).double(), dim=1)
        out_to_loss += 1 - probs.gather(1, y_train[:, None])[:, 0]
    return total * (out_to_loss / len(models))[None, :]


def grad_dot_scores(model: nn.Module, x_train, y_train, x_test, y_test) -> Tensor:
    """``<grad loss(z), grad loss(x_i)>`` at the final model, (n_test, n_train) float64."""
    model = model.eval()
    train = _per_example_grads(model, x_train, y_train, "loss").double()
    test = _per_example_grads(model, x_test, y_test, "loss").double()
    return test @ train.T


def tracin_cp_scores(
    model: nn.Module, checkpoints: Sequence[str], x_train, y_train, x_test, y_test
) -> Tensor:
    """Captum's ``TracInCP`` over ``checkpoints`` (state-dict files), (n_test, n_train)."""
    from captum.influence import TracInCP
    from torch.utils.data import TensorDataset

    def load(model: nn.Module, path: str) -> float:
        model.load_state_dict(torch.load(path))
        return 1.0  # constant learning rate (Adam's effective step is not modelled)

    tracin = TracInCP(
        model,
        TensorDataset(x_train, y_train),
        checkpoints=list(checkpoints),
        checkpoints_load_func=load,
        loss_fn=nn.CrossEntropyLoss(reduction="sum"),
        batch_size=256,
        sample_wise_grads_per_batch=True,
    )
    return tracin.influence((x_test, y_test)).double()


def representer_scores(model: nn.Module, last: nn.Linear, x_train, y_train, x_test, y_test):
    """Representer points on the last Linear layer ``last``, (n_test, n_train) float64."""
    captured: list[Tensor] = []
    handle = last.register_forward_hook(lambda m, i, o: captured.append(i[0].detach()))
    try:
        with torch.no_grad():
            train_logits = model(x_train)
            model(x_test)
    finally:
        handle.remove()
    f_train, f_test = captured[0].double(), captured[1].double()
    residual = F.one_hot(y_train, train_logits.shape[1]).double() - torch.softmax(
        train_logits.double(), dim=1
    )
    return (f_test @ f_train.T) * residual.T[y_test]
