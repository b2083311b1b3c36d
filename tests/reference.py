"""Naive reference implementations of every kernel, straight from the definitions (the definitions in the README).

Deliberately slow and simple: one forward per example, one ``torch.autograd.grad`` per logit, float64
throughout, plain einsum contractions. Nothing here calls the engine's internals; the only library
functions used are the public ``captum_ntk.select_parameters`` (for the flattening order of the
projected kernels) and ``captum_ntk.projection_matrix`` (the random matrix itself).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

Inputs = Tensor | tuple[Tensor, ...] | Mapping[str, Tensor]

EXACT_KERNELS = ("entk", "trntk0", "trntk", "pntk0", "pntk")
PROJECTED_KERNELS = ("proj_trntk", "proj_pntk")
FEATURE_KERNELS = ("ck", "embedding")
ALL_KERNELS = EXACT_KERNELS + PROJECTED_KERNELS + FEATURE_KERNELS
NORMALISED_KERNELS = ("trntk", "pntk", "proj_trntk", "proj_pntk", "ck", "embedding")


# --------------------------------------------------------------------------------------------------
# inputs and outputs
# --------------------------------------------------------------------------------------------------
def num_examples(inputs: Inputs) -> int:
    if isinstance(inputs, Tensor):
        return inputs.shape[0]
    if isinstance(inputs, Mapping):
        return next(iter(inputs.values())).shape[0]
    return inputs[0].shape[0]


def example(inputs: Inputs, i: int) -> Inputs:
    """The i-th example as a batch of one, with the same structure."""
    if isinstance(inputs, Tensor):
        return inputs[i : i + 1]
    if isinstance(inputs, Mapping):
        return {key: value[i : i + 1] for key, value in inputs.items()}
    return tuple(t[i : i + 1] for t in inputs)


def cast_inputs(inputs: Inputs, dtype: torch.dtype) -> Inputs:
    """Cast floating-point tensors to ``dtype``; integer / bool tensors are left alone."""

    def cast(t: Tensor) -> Tensor:
        return t.to(dtype) if t.is_floating_point() else t

    if isinstance(inputs, Tensor):
        return cast(inputs)
    if isinstance(inputs, Mapping):
        return {key: cast(value) for key, value in inputs.items()}
    return tuple(cast(t) for t in inputs)


def call_model(model: nn.Module, inputs: Inputs) -> Any:
    if isinstance(inputs, Tensor):
        return model(inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(*inputs)


def logits_of(output: Any) -> Tensor:
    """(B, C) logits from a model output: a (B, C) or (B,) Tensor or an object with ``.logits``."""
    if not isinstance(output, Tensor):
        output = output.logits
    if output.dim() == 1:
        output = output[:, None]
    assert output.dim() == 2, output.shape
    return output


# --------------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------------
def ref_select_parameters(
    model: nn.Module, layers: Sequence[str] | None = None
) -> dict[str, nn.Parameter]:
    """Independent re-statement of the selection rule (to check ``cn.select_parameters``).

    ``layers=None``: all parameters with requires_grad, in ``named_parameters()`` order (ties once).
    Otherwise every parameter of the named modules (and their submodules; frozen ones too, since the
    caller named them), in ``named_parameters()`` order.
    """
    if layers is None:
        return {name: p for name, p in model.named_parameters() if p.requires_grad}
    modules = dict(model.named_modules())
    wanted: set[int] = set()
    for layer in layers:
        wanted.update(id(p) for p in modules[layer].parameters())
    return {name: p for name, p in model.named_parameters() if id(p) in wanted}


def library_parameters(model: nn.Module, layers: Sequence[str] | None = None) -> list[str]:
    """Names of the parameters the library selects, in the library's flattening order."""
    import captum_ntk as cn

    return list(cn.select_parameters(model, layers=layers).keys())


# --------------------------------------------------------------------------------------------------
# per-example, per-logit gradients
# --------------------------------------------------------------------------------------------------
def ref_gradients(model: nn.Module, inputs: Inputs, param_names: Sequence[str]) -> Tensor:
    """G[i, c] = dF^c(x_i)/dθ flattened in ``param_names`` order; shape (N, C, P), float64.

    One forward per example (batch of one) and one ``autograd.grad`` per logit.
    """
    named = dict(model.named_parameters())
    params = [named[name] for name in param_names]
    rows = []
    for i in range(num_examples(inputs)):
        out = logits_of(call_model(model, example(inputs, i)))[0]
        per_class = []
        for c in range(out.shape[0]):
            grads = torch.autograd.grad(out[c], params, retain_graph=True, allow_unused=True)
            flat = [
                torch.zeros(p.numel(), dtype=torch.float64)
                if g is None
                else g.detach().reshape(-1).to(torch.float64)
                for p, g in zip(params, grads, strict=True)
            ]
            per_class.append(torch.cat(flat))
        rows.append(torch.stack(per_class))
    return torch.stack(rows)


# --------------------------------------------------------------------------------------------------
# kernels from gradients / features
# --------------------------------------------------------------------------------------------------
def cosine_normalise(k12: Tensor, d1: Tensor, d2: Tensor) -> Tensor:
    """k12 / sqrt(d1_i d2_j), with 0 wherever d1_i or d2_j is 0."""
    denom = torch.sqrt(d1[:, None] * d2[None, :])
    out = torch.zeros_like(k12)
    ok = denom > 0
    out[ok] = k12[ok] / denom[ok]
    return out


def entk_from_grads(g1: Tensor, g2: Tensor) -> Tensor:
    return torch.einsum("icp,jdp->ijcd", g1, g2)


def trntk0_from_grads(g1: Tensor, g2: Tensor) -> Tensor:
    n1, n2, c = g1.shape[0], g2.shape[0], g1.shape[1]
    out = torch.zeros(n1, n2, dtype=torch.float64)
    for i in range(n1):
        for j in range(n2):
            out[i, j] = sum(torch.dot(g1[i, k], g2[j, k]) for k in range(c))
    return out


def pntk0_from_grads(g1: Tensor, g2: Tensor) -> Tensor:
    c = g1.shape[1]
    s1, s2 = g1.sum(dim=1), g2.sum(dim=1)
    return (s1 @ s2.T) / c


def _self_diag_trntk0(g: Tensor) -> Tensor:
    return torch.einsum("icp,icp->i", g, g)


def _self_diag_pntk0(g: Tensor) -> Tensor:
    s = g.sum(dim=1)
    return torch.einsum("ip,ip->i", s, s) / g.shape[1]


def project(g: Tensor, matrix: Tensor) -> Tensor:
    """Projected features: (N, C, P) -> (N, C, K), ``matrix @ g / sqrt(K)`` for every class."""
    k = matrix.shape[0]
    return torch.einsum("kp,icp->ick", matrix.to(torch.float64), g) / math.sqrt(k)


def kernel_from_grads(g1: Tensor, g2: Tensor, kernel: str, matrix: Tensor | None = None) -> Tensor:
    """Every gradient kernel from (N, C, P) gradients (``matrix``: the (K, P) projection)."""
    if kernel == "entk":
        return entk_from_grads(g1, g2)
    if kernel == "trntk0":
        return trntk0_from_grads(g1, g2)
    if kernel == "trntk":
        return cosine_normalise(
            trntk0_from_grads(g1, g2), _self_diag_trntk0(g1), _self_diag_trntk0(g2)
        )
    if kernel == "pntk0":
        return pntk0_from_grads(g1, g2)
    if kernel == "pntk":
        return cosine_normalise(
            pntk0_from_grads(g1, g2), _self_diag_pntk0(g1), _self_diag_pntk0(g2)
        )
    if kernel in PROJECTED_KERNELS:
        assert matrix is not None
        p1, p2 = project(g1, matrix), project(g2, matrix)
        base = "trntk" if kernel == "proj_trntk" else "pntk"
        return kernel_from_grads(p1, p2, base)
    raise ValueError(kernel)


def cosine_gram(f1: Tensor, f2: Tensor) -> Tensor:
    return cosine_normalise(f1 @ f2.T, (f1 * f1).sum(dim=1), (f2 * f2).sum(dim=1))


# --------------------------------------------------------------------------------------------------
# features via forward hooks
# --------------------------------------------------------------------------------------------------
def last_linear_name(model: nn.Module) -> str:
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1]


def default_embedding_layers(model: nn.Module, inputs: Inputs | None = None) -> list[str]:
    """Every leaf module that has parameters, in ``named_modules()`` order.

    With ``inputs``, only those whose forward is actually called on them (``nn.MultiheadAttention``
    uses ``out_proj``'s weights without calling the module, so it has no output to take).
    """
    names = [
        name
        for name, m in model.named_modules()
        if len(list(m.children())) == 0 and len(list(m.parameters(recurse=False))) > 0
    ]
    if inputs is None:
        return names
    modules = dict(model.named_modules())
    called: set[str] = set()
    handles = [
        modules[name].register_forward_hook(lambda *_, name=name: called.add(name))
        for name in names
    ]
    try:
        with torch.no_grad():
            call_model(model, example(inputs, 0))
    finally:
        for h in handles:
            h.remove()
    return [name for name in names if name in called]


@torch.no_grad()
def ref_features(
    model: nn.Module, inputs: Inputs, layers: Sequence[str], use_input: bool
) -> Tensor:
    """Per-example flattened inputs (``use_input``) or outputs of the named modules, concatenated.

    One forward per example; shape (N, D), float64.
    """
    modules = dict(model.named_modules())
    rows = []
    for i in range(num_examples(inputs)):
        captured: dict[str, Tensor] = {}
        handles = []
        for name in layers:

            def hook(
                _m: nn.Module,
                args: tuple,
                output: Any,
                name: str = name,
                store: dict[str, Tensor] = captured,
            ) -> None:
                value = args[0] if use_input else output
                store[name] = value.detach().reshape(-1).to(torch.float64)

            handles.append(modules[name].register_forward_hook(hook))
        try:
            call_model(model, example(inputs, i))
        finally:
            for h in handles:
                h.remove()
        rows.append(torch.cat([captured[name] for name in layers]))
    return torch.stack(rows)


# --------------------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------------------
def ref_kernel(
    model: nn.Module,
    inputs1: Inputs,
    inputs2: Inputs | None = None,
    kernel: str = "trntk",
    *,
    layers: Sequence[str] | None = None,
    projection_dim: int = 10240,
    projection: str = "rademacher",
    seed: int = 0,
    param_names: Sequence[str] | None = None,
) -> Tensor:
    """Reference kernel matrix, computed in float64 on a float64 copy of ``model``.

    ``param_names`` overrides the parameter selection (default: ``cn.select_parameters`` order,
    which fixes the flattening order the projection matrix is applied to).
    """
    model64 = copy.deepcopy(model).to(torch.float64)
    x1 = cast_inputs(inputs1, torch.float64)
    x2 = x1 if inputs2 is None else cast_inputs(inputs2, torch.float64)

    if kernel in FEATURE_KERNELS:
        if kernel == "ck":
            names = [last_linear_name(model64)] if layers is None else list(layers)
            use_input = True
        else:
            names = default_embedding_layers(model64, x1) if layers is None else list(layers)
            use_input = False
        f1 = ref_features(model64, x1, names, use_input)
        f2 = ref_features(model64, x2, names, use_input)
        return cosine_gram(f1, f2)

    if param_names is None:
        param_names = library_parameters(model, layers)
    g1 = ref_gradients(model64, x1, param_names)
    g2 = ref_gradients(model64, x2, param_names)
    matrix = None
    if kernel in PROJECTED_KERNELS:
        import captum_ntk as cn

        matrix = cn.projection_matrix(
            g1.shape[-1], projection_dim, kind=projection, seed=seed, dtype=torch.float64
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return kernel_from_grads(g1, g2, kernel, matrix)
