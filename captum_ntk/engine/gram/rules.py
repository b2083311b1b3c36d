r"""Per-layer rules: what to record from a layer call, and how its parameters' gradients follow.

A rule covers one module's selected parameters. During a batched forward pass it records the
module's input (``capture``); after the batched backward passes it receives the gradients of the
logits with respect to the module's output, ``delta`` of shape (K, B, *output), and returns the
module's features for the block (``finish``): either a :class:`GramPiece` (inputs and output
gradients, contracted pairwise later) or materialised per-example gradients (B, K, p).

| module | input recorded | Gram form | materialised |
|---|---|---|---|
| Linear | (B, 1, T, d_in) over T leading positions | yes | sum_t delta_t a_t^T |
| Conv1d / Conv2d | unfolded patches (B, g, T, C_in/g k) | yes | through the patches |
| Embedding | token ids (B, T) | token matches | never (vocabulary-sized) |
| LayerNorm, GroupNorm, RMSNorm, BatchNorm (eval) | the input | no | vjp of the module |
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from .contract import GramPiece

_NORMS: tuple[type, ...] = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
if hasattr(nn, "RMSNorm"):
    _NORMS = _NORMS + (nn.RMSNorm,)


def _first_input(args: tuple, kwargs: dict) -> Tensor | None:
    x = args[0] if args else kwargs.get("input")
    return x if isinstance(x, Tensor) else None


class LayerRule:
    r"""Base rule. ``param_names`` are the full names of the module's selected parameters in the
    order their gradients are flattened (weight before bias)."""

    #: whether the Gram form is available
    gram_capable = True

    def __init__(self, name: str, module: nn.Module, param_names: list[str], bias: bool) -> None:
        self.name = name
        self.module = module
        self.param_names = param_names
        self.bias = bias
        self.use_gram = False

    def capture(self, args: tuple, kwargs: dict) -> Any:
        """The recorded input of one call, or None if the call is not of a supported form."""
        raise NotImplementedError

    def batch_size(self, captured: Any) -> int:
        """B as seen by the module (dimension 0 of its input)."""
        return int(captured[0].shape[0]) if isinstance(captured, tuple) else int(captured.shape[0])

    def finish(self, captured: Any, delta: Tensor) -> GramPiece | Tensor:
        """The block's features from the input and the output gradients (K, B, *output)."""
        raise NotImplementedError

    def weighted_grad(self, captured: Any, delta: Tensor, weights: Tensor) -> Tensor:
        """``sum_{b,k} weights[b, k] grad_b^k`` flattened, (p,), for the consistency check."""
        raise NotImplementedError

    def materialised(self, captured: Any, delta: Tensor) -> list[Tensor]:
        """Per-example gradients (B, K, p_i), one per name of ``param_names``, each flattened
        as its parameter."""
        raise NotImplementedError

    def costs(self, captured: Any, num_logits: int) -> tuple[float, float]:
        """Multiply-adds per pair of examples: (Gram form, materialised gradients)."""
        raise NotImplementedError


class AffineRule(LayerRule):
    r"""Linear, Conv1d and Conv2d: weight (out, in/g, *k) and optional bias (out,)."""

    #: the weight is stored (in, out) (GPT-2's ``Conv1D``) instead of (out, in)
    transposed = False

    def _patches(self, x: Tensor) -> Tensor | None:
        """The input as (B, g, T, x): positions T, per-group input vectors x."""
        m = self.module
        if isinstance(m, nn.Linear) or self.transposed:
            if x.dim() < 2:
                return None
            return x.detach().reshape(x.shape[0], 1, -1, x.shape[-1]).clone()
        if x.dim() not in (3, 4) or x.dim() != m.weight.dim():
            return None
        x4 = x.detach() if x.dim() == 4 else x.detach().unsqueeze(2)
        one = (1,) if x.dim() == 3 else ()
        cols = F.unfold(
            x4,
            kernel_size=one + tuple(m.kernel_size),
            dilation=one + tuple(m.dilation),
            padding=(0,) * len(one) + tuple(m.padding),
            stride=one + tuple(m.stride),
        )
        b, g = x.shape[0], m.groups
        return cols.reshape(b, g, cols.shape[1] // g, cols.shape[2]).transpose(2, 3).contiguous()

    def capture(self, args: tuple, kwargs: dict) -> Tensor | None:
        x = _first_input(args, kwargs)
        return None if x is None else self._patches(x)

    def _delta(self, delta: Tensor) -> Tensor:
        """(K, B, *output) -> (B, K, g, T, o)."""
        k, b = delta.shape[:2]
        if isinstance(self.module, nn.Linear) or self.transposed:
            return delta.reshape(k, b, 1, -1, delta.shape[-1]).permute(1, 0, 2, 3, 4)
        g = self.module.groups
        d = delta.reshape(k, b, g, delta.shape[2] // g, -1)
        return d.permute(1, 0, 2, 4, 3)

    def finish(self, captured: Tensor, delta: Tensor) -> GramPiece | Tensor:
        d = self._delta(delta)
        b, k, g, t, o = d.shape
        if self.use_gram:
            flat = d.permute(0, 2, 3, 1, 4).reshape(b, g, t, k * o)
            return GramPiece(captured, flat, k, self.bias)
        return torch.cat(self.materialised(captured, delta), dim=2)

    def materialised(self, captured: Tensor, delta: Tensor) -> list[Tensor]:
        """Weight (B, K, g o x) and bias (B, K, g o) gradients, never concatenated."""
        d = self._delta(delta)
        b, k, g, t, o = d.shape
        if t == 1:  # an outer product per example: one broadcast multiply
            weight = d[:, :, :, 0, :, None] * captured[:, None, :, 0, None, :]
        else:
            weight = torch.einsum("bgtx,bkgto->bkgox", captured, d)
        if self.transposed:  # stored (in, out): the gradient in the parameter's own layout
            weight = weight.transpose(-1, -2)
        parts = [weight.reshape(b, k, -1)]
        if self.bias:
            parts.append(d.sum(3).reshape(b, k, -1))
        return parts

    def weighted_grad(self, captured: Tensor, delta: Tensor, weights: Tensor) -> Tensor:
        d = self._delta(delta)
        layout = "gxo" if self.transposed else "gox"
        parts = [torch.einsum(f"bgtx,bkgto,bk->{layout}", captured, d, weights).reshape(-1)]
        if self.bias:
            parts.append(torch.einsum("bkgto,bk->go", d, weights).reshape(-1))
        return torch.cat(parts)

    def costs(self, captured: Tensor, num_logits: int) -> tuple[float, float]:
        _, g, t, x = captured.shape
        out = self.module.weight.shape[1 if self.transposed else 0] // g
        return g * t * t * (x + num_logits * out), g * num_logits * out * x


class TransposedAffineRule(AffineRule):
    r"""GPT-2's ``transformers.pytorch_utils.Conv1D``: ``y = x W + b`` with W stored (in, out),
    a Linear layer whose weight gradient is laid out transposed."""

    transposed = True


def is_transposed_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a Conv1D of transformers (checked by shape, not by import)."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(getattr(module, "nf", None), int)
        and isinstance(weight, Tensor)
        and weight.dim() == 2
        and weight.shape[1] == module.nf
    )


class EmbeddingRule(LayerRule):
    r"""Embedding: ``<g_i, g_j> = sum_{t,s} [tok_it == tok_js] <delta_it, delta_js>``."""

    def capture(self, args: tuple, kwargs: dict) -> tuple[Tensor, Tensor] | None:
        tokens = _first_input(args, kwargs)
        if tokens is None or tokens.dim() < 1:
            return None
        tokens = tokens.detach().reshape(tokens.shape[0], -1).clone()
        pad = self.module.padding_idx
        valid = tokens != pad if pad is not None else torch.ones_like(tokens, dtype=torch.bool)
        return tokens, valid

    def _delta(self, delta: Tensor) -> Tensor:
        k, b = delta.shape[:2]
        return delta.reshape(k, b, -1, delta.shape[-1]).permute(1, 0, 2, 3)  # (B, K, T, d)

    def finish(self, captured: tuple[Tensor, Tensor], delta: Tensor) -> GramPiece:
        d = self._delta(delta)
        b, k, t, o = d.shape
        flat = d.permute(0, 2, 1, 3).reshape(b, 1, t, k * o)
        return GramPiece(captured[0], flat, k, False, captured[1])

    def materialised(self, captured: tuple[Tensor, Tensor], delta: Tensor) -> list[Tensor]:
        """[(B, K, V d)]: per example, the rows of its tokens (the rest zero), row-major."""
        tokens, valid = captured
        d = self._delta(delta)  # (B, K, T, d)
        b, k, _, o = d.shape
        v = self.module.weight.shape[0]
        rows, cols = valid.nonzero(as_tuple=True)
        index = (rows[:, None] * k + torch.arange(k, device=d.device)) * v
        index = index + tokens[rows, cols][:, None]  # (n, K) rows of the (B K V, d) output
        out = d.new_zeros(b * k * v, o)
        out.index_add_(0, index.reshape(-1), d[rows, :, cols].reshape(-1, o))
        return [out.reshape(b, k, v * o)]

    def weighted_grad(self, captured: tuple[Tensor, Tensor], delta: Tensor, weights: Tensor):
        tokens, valid = captured
        rows = torch.einsum("bktd,bk->btd", self._delta(delta), weights)
        out = torch.zeros_like(self.module.weight, dtype=rows.dtype, device=rows.device)
        return out.index_add_(0, tokens[valid], rows[valid]).reshape(-1)

    def costs(self, captured: tuple[Tensor, Tensor], num_logits: int) -> tuple[float, float]:
        t = captured[0].shape[1]
        return t * t * (1 + num_logits * self.module.weight.shape[1]), math.inf


class VjpRule(LayerRule):
    r"""Normalisation layers (few parameters): per-example gradients through the module's vjp.

    Args:
        tensors (dict): the module's own parameters and buffers by local name, as the engine
                evaluates them (compute device and dtype).
        selected (list[str]): local names of the selected parameters (same order as
                ``param_names``).
    """

    gram_capable = False

    def __init__(self, name, module, param_names, tensors: dict, selected: list[str]) -> None:
        super().__init__(name, module, param_names, False)
        self.tensors = tensors
        self.selected = selected

    def capture(self, args: tuple, kwargs: dict) -> Tensor | None:
        x = _first_input(args, kwargs)
        if x is None or len(args) > 1 or kwargs or x.dim() < 2:
            return None
        return x.detach().clone()

    def _per_example(self, x: Tensor, delta: Tensor) -> Tensor:
        fixed = {n: t for n, t in self.tensors.items() if n not in self.selected}
        params = {n: self.tensors[n] for n in self.selected}

        def one(xb: Tensor, db: Tensor) -> dict[str, Tensor]:
            def call(p: dict[str, Tensor]) -> Tensor:
                return functional_call(self.module, {**fixed, **p}, (xb.unsqueeze(0),))[0]

            _, pullback = vjp(call, params)
            return vmap(pullback)(db)[0]

        grads = vmap(one, in_dims=(0, 1))(x, delta)
        b, k = x.shape[0], delta.shape[0]
        return torch.cat([grads[n].reshape(b, k, -1) for n in self.selected], dim=2)

    def finish(self, captured: Tensor, delta: Tensor) -> Tensor:
        return self._per_example(captured, delta)

    def materialised(self, captured: Tensor, delta: Tensor) -> list[Tensor]:
        sizes = [self.tensors[n].numel() for n in self.selected]
        return list(self._per_example(captured, delta).split(sizes, dim=2))

    def weighted_grad(self, captured: Tensor, delta: Tensor, weights: Tensor) -> Tensor:
        return torch.einsum("bkp,bk->p", self._per_example(captured, delta), weights)

    def costs(self, captured: Tensor, num_logits: int) -> tuple[float, float]:
        return math.inf, 0.0


def make_rule(
    name: str, module: nn.Module, selected: dict[str, str], tensors: dict[str, Tensor]
) -> LayerRule | None:
    r"""The rule for ``module``, or None if its type or configuration is not covered.

    Args:
        name (str): the module's name.
        module (nn.Module): the module.
        selected (dict[str, str]): local name -> full name of its selected parameters.
        tensors (dict[str, Tensor]): the module's parameters and buffers by local name.
    """
    local = set(selected)
    if isinstance(module, _NORMS):
        if not local <= {"weight", "bias"}:
            return None
        order = [n for n in ("weight", "bias") if n in local]
        return VjpRule(name, module, [selected[n] for n in order], tensors, order)
    if "weight" not in local or not local <= {"weight", "bias"}:
        return None
    bias = "bias" in local
    names = [selected["weight"]] + ([selected["bias"]] if bias else [])
    if isinstance(module, nn.Linear):
        return AffineRule(name, module, names, bias)
    if is_transposed_linear(module):
        return TransposedAffineRule(name, module, names, bias)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            return None
        return AffineRule(name, module, names, bias)
    if isinstance(module, nn.Embedding) and not bias:
        if module.max_norm is not None or module.scale_grad_by_freq or module.sparse:
            return None
        return EmbeddingRule(name, module, names, False)
    return None
