r"""One batched forward pass that records layer inputs, and batched backward passes for the
gradients of the logits with respect to layer outputs.

:func:`forward_capture` runs the model (through :class:`ModelFunction`, so the parameters are the
engine's copies) with forward hooks on the watched modules. Each hook records the module's input
through its rule, keeps the module's output tensor (to differentiate with respect to it) and hands a
copy on to the rest of the network, so in-place operations after the module (``ReLU(inplace=True)``,
``out += identity``) cannot change what is differentiated. :func:`output_gradients` then computes
``delta`` for K combinations of logits with one vmapped backward pass per chunk of combinations
(``is_grads_batched``), falling back to one pass per combination where an operation has no batching
rule.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..data.inputs import ModelInputs
from ..model import ModelFunction, _as_2d
from .rules import LayerRule


@dataclass
class Capture:
    r"""What a batched forward pass recorded.

    Attributes:
        logits (Tensor): (B, C), differentiable with respect to the selected parameters.
        params (dict): the differentiable parameter tensors used, by full name.
        inputs (dict): rule name -> list of recorded inputs (one per call).
        outputs (dict): rule name -> list of output tensors (one per call).
        bad (dict): rule name -> why the module's calls cannot be used.
    """

    logits: Tensor
    params: dict[str, Tensor]
    inputs: dict[str, list[Any]] = field(default_factory=dict)
    outputs: dict[str, list[Tensor]] = field(default_factory=dict)
    bad: dict[str, str] = field(default_factory=dict)

    def problem(self, rule: LayerRule, batch: int) -> str | None:
        """Why ``rule``'s module cannot be treated per example in this block (None if it can)."""
        if rule.name in self.bad:
            return self.bad[rule.name]
        calls = len(self.outputs.get(rule.name, []))
        if calls != 1:
            return f"called {calls} times in one forward pass"
        captured, out = self.inputs[rule.name][0], self.outputs[rule.name][0]
        if out.shape[0] != batch or rule.batch_size(captured) != batch:
            return "its input or output is not batched along dimension 0"
        if not out.requires_grad:
            return "its output does not depend on its parameters"
        return None


def forward_capture(
    function: ModelFunction, inputs: ModelInputs, rules: list[LayerRule]
) -> Capture:
    r"""Runs a prepared block through the model, recording the watched modules.

    Args:
        function (ModelFunction): the model function (its selected parameters are made
                differentiable for this pass only).
        inputs (ModelInputs): a block already passed through ``function.prepare``.
        rules (list[LayerRule]): the modules to watch.

    Returns:
        Capture: logits (B, C) and the recorded inputs and outputs.
    """
    params = {n: p.detach().requires_grad_(True) for n, p in function.params.items()}
    record = Capture(torch.empty(0), params)
    handles = []

    def hook(module, args, kwargs, out, rule):
        if not isinstance(out, Tensor):
            record.bad[rule.name] = f"it returned {type(out).__name__}, not a Tensor"
            return None
        captured = rule.capture(args, kwargs)
        if captured is None:
            record.bad[rule.name] = "its call has an unsupported form"
            return None
        record.inputs.setdefault(rule.name, []).append(captured)
        record.outputs.setdefault(rule.name, []).append(out)
        return out.clone()

    # entering the context may run the model (the Hugging Face vmap probe): hooks come after
    with torch.enable_grad(), function.context():
        try:
            for rule in rules:
                watch = functools.partial(hook, rule=rule)
                handles.append(rule.module.register_forward_hook(watch, with_kwargs=True))
            logits = function._call(params, inputs.args, inputs.kwargs)
        finally:
            for handle in handles:
                handle.remove()
    record.logits = _as_2d(logits, inputs.num_examples)
    return record


def _batched_grads(logits: Tensor, targets: list[Tensor], cotangents: Tensor) -> list[Tensor]:
    """Gradients for a stack of cotangents (k, B, C): one vmapped pass, else one pass each."""
    kwargs = dict(retain_graph=True, allow_unused=True, materialize_grads=True)
    if cotangents.shape[0] > 1:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return list(
                    torch.autograd.grad(
                        logits, targets, cotangents, is_grads_batched=True, **kwargs
                    )
                )
        except RuntimeError:
            pass  # an operation without a batching rule: one pass per combination
    passes = [torch.autograd.grad(logits, targets, c, **kwargs) for c in cotangents]
    return [torch.stack(parts) for parts in zip(*passes)]


def output_gradients(
    logits: Tensor, targets: list[Tensor], combinations: Tensor, chunk: int
) -> list[Tensor]:
    r"""Gradients of K combinations of the logits with respect to each target tensor.

    Args:
        logits (Tensor): (B, C).
        targets (list[Tensor]): layer outputs (B, *shape_l).
        combinations (Tensor): (K, C); combination k is ``sum_c combinations[k, c] F^c``
                for every example (the identity for per-logit gradients, a row of ones for
                the summed logits).
        chunk (int): combinations per backward pass.

    Returns:
        list[Tensor]: per target, (K, B, *shape_l).
    """
    if not targets:
        return []
    b = logits.shape[0]
    combos = combinations.to(device=logits.device, dtype=logits.dtype)
    pieces: list[list[Tensor]] = []
    for start in range(0, combos.shape[0], chunk):
        cot = combos[start : start + chunk, None, :].expand(-1, b, -1).contiguous()
        pieces.append(_batched_grads(logits, targets, cot))
    return [torch.cat(parts) for parts in zip(*pieces)]


def captured_bytes(function: ModelFunction, rules: list[LayerRule], inputs: ModelInputs) -> int:
    r"""Bytes of one example's recorded layer inputs (unfolded patches for convolutions) and
    of the covered layers' outputs (kept for differentiation beside the copies passed on).

    Args:
        function (ModelFunction): the model function.
        rules (list[LayerRule]): the watched modules.
        inputs (ModelInputs): examples; the one :meth:`ModelFunction.probe_example` picks (the
                most real tokens) is probed.

    Returns:
        int: bytes per example that a block's forward capture holds beyond the activations.
    """
    if not rules:
        return 0
    prepared = function.prepare(function.probe_example(inputs))
    with torch.no_grad():
        record = forward_capture(function, prepared, rules)
    total = 0
    for rule in rules:
        held = list(record.inputs.get(rule.name, [])) + list(record.outputs.get(rule.name, []))
        for value in held:
            for t in value if isinstance(value, tuple) else (value,):
                total += t.numel() * t.element_size()
    return total
