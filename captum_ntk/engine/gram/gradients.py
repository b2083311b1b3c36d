r"""Per-example gradients from layer inputs and output gradients, for the projected kernels.

A dense or sparse projection (``proj_trntk``, ``proj_pntk``) needs every example's gradient
before projecting it. ``torch.func`` computes them with ``vmap(jacrev)`` / ``vmap(grad)``;
:class:`CapturedGradients` computes the same numbers from the Gram engine's capture instead: one
batched forward pass records each covered layer's input ``a``, batched backward passes give its
output gradients ``delta`` (one pass per chunk of logits), and the gradient of a Linear or
convolution is ``sum_t delta_t (a_t, 1)^T`` (one batched matmul per layer; normalisation layers
through their own vjp). Parameters the capture does not cover, or cannot verify, go through
``torch.func`` on the restricted parameter selection, so every parameter is always served.

The plan (covered modules) is the Gram engine's (:meth:`GramFeatures.plan`, verified against
autograd on the first block). The pieces come back in the parameter order of the
:class:`~captum_ntk.engine.model.ModelFunction` and in its flattening of each parameter (the
plan's check compares exactly that layout), so a projection indexed by parameter position sees
the same vector either way; the two ways agree to float rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..data.inputs import ModelInputs
from ..model import ModelFunction
from .capture import captured_bytes, forward_capture, output_gradients
from .feature_map import (
    MIXED_BATCH,
    GramFeatures,
    mixes_examples,
    plan_examples,
    restricted_function,
)


class CapturedGradients:
    r"""``jacobian`` and ``summed_gradient`` of a :class:`ModelFunction`, by capture.

    Args:
        function (ModelFunction): the model and its selected parameters.
        memory_limit (int): budget in bytes for the plan's backward passes.
    """

    def __init__(self, function: ModelFunction, memory_limit: int = 2 << 30) -> None:
        self.function = function
        self.memory_limit = int(memory_limit)
        self.rules: list | None = None
        self.fallback: ModelFunction | None = None
        #: module name -> why its parameters go through ``torch.func``
        self.not_covered: dict[str, str] = {}
        self._batch_checked = False
        self._captured_bytes = 0

    def plan(self, inputs: ModelInputs) -> None:
        """Chooses the covered modules on the first examples of ``inputs`` (the Gram plan)."""
        # one random logit combination suffices to verify the layout (the rules are linear in
        # delta) and keeps the plan's backward passes and checks to one combination
        gram = GramFeatures(self.function, summed=True)
        gram.random_check = True
        gram.memory_limit = self.memory_limit
        gram.plan(plan_examples(inputs))
        self.rules, self.fallback = list(gram.rules or []), gram.fallback
        self.not_covered = dict(gram.not_covered)
        self._batch_checked = gram._batch_checked
        self._captured_bytes = captured_bytes(self.function, self.rules, inputs)

    def activation_bytes(self, inputs: ModelInputs) -> int:
        r"""Bytes per example of one gradient pass beyond the gradients: the model's
        activations (:meth:`ModelFunction.activation_bytes`) plus the captured layer inputs."""
        if self.rules is None:
            self.plan(inputs)
        return self.function.activation_bytes(inputs) + self._captured_bytes

    def _drop(self, reasons: dict[str, str]) -> None:
        """Hands the modules named in ``reasons`` to ``torch.func`` from now on (per-example
        gradients either way, so blocks already computed stay valid)."""
        self.not_covered.update(reasons)
        self.rules = [r for r in self.rules or [] if r.name not in reasons]
        covered = {n for r in self.rules for n in r.param_names}
        rest = [n for n in self.function.names if n not in covered]
        self.fallback = restricted_function(self.function, rest) if rest else None

    def jacobian(self, inputs: ModelInputs, classes: tuple[int, int] | None = None) -> list[Tensor]:
        r"""As :meth:`ModelFunction.jacobian`: pieces (B, C', p_i) in parameter order."""
        num = self.function.num_outputs(inputs)
        start, stop = classes if classes is not None else (0, num)
        combos = torch.eye(num)[start:stop]
        return self._pieces(inputs, combos, lambda f: f.jacobian(inputs, (start, stop)))

    def summed_gradient(self, inputs: ModelInputs) -> list[Tensor]:
        r"""As :meth:`ModelFunction.summed_gradient`: pieces (B, p_i) in parameter order."""
        combos = torch.ones(1, self.function.num_outputs(inputs))
        pieces = self._pieces(
            inputs, combos, lambda f: [g[:, None] for g in f.summed_gradient(inputs)]
        )
        return [p[:, 0] for p in pieces]

    def _pieces(self, inputs: ModelInputs, combos: Tensor, through_func) -> list[Tensor]:
        """(B, rows, p_i) per selected parameter: captured layers, then ``torch.func``."""
        if self.rules is None:
            self.plan(inputs)
        function = self.function
        by_name: dict[str, Tensor] = {}
        if self.rules:
            by_name.update(self._captured(inputs, combos))
        if self.fallback is not None:
            by_name.update(zip(self.fallback.names, through_func(self.fallback)))
        return [by_name[n] for n in function.names]

    def _captured(self, inputs: ModelInputs, combos: Tensor) -> dict[str, Tensor]:
        function = self.function
        prepared = function.prepare(inputs)
        record = forward_capture(function, prepared, self.rules)
        batch = prepared.num_examples
        if batch > 1 and not self._batch_checked:
            self._batch_checked = True
            if mixes_examples(function, prepared, record.logits):
                # planned on one example: from now on every parameter goes through torch.func
                self._drop({rule.name: MIXED_BATCH for rule in self.rules})
                return {}
        problems = {r.name: record.problem(r, batch) for r in self.rules}
        problems = {name: why for name, why in problems.items() if why is not None}
        if problems:  # e.g. a position embedding shared by the block, planned on one example
            self._drop(problems)
            return self._captured(inputs, combos) if self.rules else {}
        targets = [record.outputs[r.name][0] for r in self.rules]
        deltas = output_gradients(record.logits, targets, combos, combos.shape[0])
        out: dict[str, Tensor] = {}
        for rule, delta in zip(self.rules, deltas):
            pieces = rule.materialised(record.inputs[rule.name][0], delta)  # (B, rows, p_i)
            out.update(zip(rule.param_names, pieces))
        return out
