r"""Per-example gradients without ``vmap``: one forward pass per example, one backward per logit.

``torch.func.vmap`` cannot differentiate every module per example: ``nn.LSTM`` / ``nn.GRU`` /
``nn.RNN`` (their fused kernels write into unbatched buffers) and ``nn.PReLU`` under
``vmap(jacrev)`` fail inside torch with shape errors. For models holding such a module,
:class:`~captum_ntk.engine.model.ModelFunction` computes its per-example Jacobians here instead,
with plain ``torch.autograd.grad`` on one-example forward passes: exact (it is the reference
loop the tests compare against), B forward and B x C backward passes per block, so slower. The
model is chosen automatically, with one warning naming the module (or vmap's error when an
unlisted module fails).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

#: Module types torch.func cannot differentiate per example (checked on torch 2.2 - 2.13).
VMAP_UNSAFE = (nn.RNNBase, nn.PReLU)


class VmapFallbackWarning(UserWarning):
    """Per-example gradients are computed with an autograd loop because vmap cannot."""


def vmap_unsafe_modules(model: nn.Module) -> list[str]:
    r"""Names (with types) of the modules of ``model`` that torch.func cannot vmap over.

    A listed module counts whether or not its parameters are selected: the forward pass runs
    through it under vmap either way.

    Args:
        model (nn.Module): the model.

    Returns:
        list[str]: e.g. ``["rnn (LSTM)"]``.
    """
    return [
        f"{name or '<root>'} ({type(m).__name__})"
        for name, m in model.named_modules()
        if isinstance(m, VMAP_UNSAFE)
    ]


def warn_fallback(reason: str) -> None:
    """The one warning a model function gives when it leaves vmap."""
    warnings.warn(
        f"torch.func.vmap cannot differentiate this model per example ({reason}); its "
        "per-example gradients are computed by torch.autograd, one forward pass per example "
        "and one backward pass per logit: exact, but slower than the vmapped path.",
        VmapFallbackWarning,
        stacklevel=3,
    )


def looped_jacobian(
    logits_of: Callable[[dict[str, Tensor], int], Tensor],
    params: dict[str, Tensor],
    num_examples: int,
    rows: Callable[[Tensor], Tensor],
) -> list[Tensor]:
    r"""Per-example Jacobians by autograd, one piece per parameter.

    Args:
        logits_of (callable): ``(params, i) -> logits`` of example ``i`` alone, shape (C,).
        params (dict[str, Tensor]): the parameters to differentiate (detached leaves are made).
        num_examples (int): B.
        rows (callable): ``logits (C,) -> (C',)`` the scalar outputs to differentiate (a class
                range, or their sum as one row).

    Returns:
        list[Tensor]: shapes (B, C', p_i) in the order of ``params``.
    """
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    tensors = list(leaves.values())
    pieces: list[Tensor] | None = None
    with torch.enable_grad():
        for i in range(num_examples):
            out = rows(logits_of(leaves, i))
            if pieces is None:
                pieces = [
                    torch.zeros(
                        num_examples, out.numel(), t.numel(), dtype=t.dtype, device=t.device
                    )
                    for t in tensors
                ]
            for c in range(out.numel()):
                grads = torch.autograd.grad(
                    out[c], tensors, retain_graph=c + 1 < out.numel(), allow_unused=True
                )
                for piece, g in zip(pieces, grads):
                    if g is not None:
                        piece[i, c] = g.reshape(-1)
    if pieces is None:
        return [torch.zeros(0, 0, t.numel(), dtype=t.dtype, device=t.device) for t in tensors]
    return pieces
