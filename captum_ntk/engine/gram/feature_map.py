r"""The structured exact-kernel engine: per-layer Grams instead of per-example Jacobians.

:class:`GramFeatures` is a :class:`~captum_ntk.engine.features.FeatureMap` for the exact gradient
kernels (entk, trntk0, trntk, pntk0, pntk). For a block of B examples it runs one batched forward
pass that records the inputs of every covered layer, and batched backward passes (one per chunk of
logits) for the gradients ``delta`` of the logits with respect to those layers' outputs. Each layer
then contributes either its inputs and output gradients, contracted pairwise in :meth:`inner`
(``<A_i A_j^T, Delta_i Delta_j^T>``, see :mod:`.contract`), or its materialised per-example
gradients (B, K, p), whichever costs fewer multiply-adds per pair of examples.

Parameters the rules do not cover (unknown module types, tied parameters, modules called more than
once, parameters used outside their module's forward) get per-example Jacobian pieces from
``torch.func`` (:meth:`ModelFunction.jacobian` on the restricted parameter selection).

The plan (which modules are covered and how) is made once, on the first block, and verified: the
gradient the rules imply for a random per-example weighting of the logits must equal autograd's
gradient of the same weighted sum, parameter by parameter. This catches parameters used outside
their module, modules whose batch dimension is not the first, and forward passes that mix examples.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from ..budget import combinations_per_pass
from ..data.inputs import ModelInputs
from ..features import FeatureMap, JacobianFeatures, SummedGradientFeatures
from ..model import ModelFunction, _as_2d
from ..modes import refuse_batch_dependent
from .capture import Capture, captured_bytes, forward_capture, output_gradients
from .contract import GramPiece, per_class_inner, trace_inner, trace_sq_norms
from .rules import LayerRule, make_rule

#: First examples of a block the plan is made on (and feature sizes estimated), with the
#: block's longest example (see :func:`plan_examples`).
PLAN_EXAMPLES = 2


def plan_examples(inputs: ModelInputs) -> ModelInputs:
    """The first ``PLAN_EXAMPLES`` examples of a block and its longest one (see
    :meth:`ModelFunction.plan_examples`): plans and feature sizes are taken on them."""
    return ModelFunction.plan_examples(inputs, PLAN_EXAMPLES)


#: Why every parameter goes to the Jacobian path when the forward pass mixes examples.
MIXED_BATCH = (
    "the model's output for an example depends on the other examples of the block (an "
    "operation across the batch dimension), so per-layer gradients of the block are not "
    "per-example gradients"
)


def mixes_examples(function: ModelFunction, prepared: ModelInputs, logits: Tensor) -> bool:
    r"""Whether a block's logits differ from those of its examples run one at a time.

    Args:
        function (ModelFunction): the model function.
        prepared (ModelInputs): a block of B >= 2 examples, already prepared.
        logits (Tensor): (B, C), the block's logits from one batched forward pass.

    Returns:
        bool: True when some example's logits change with the rest of the block (for
        instance ``h - h.mean(0)`` in ``forward``); the per-example kernels are then those of
        one-example forward passes, which only the Jacobian path computes.
    """
    with torch.no_grad(), function.context():
        single = torch.cat(
            [
                _as_2d(function._call(function.params, part.args, part.kwargs), 1)
                for part in (prepared.slice(i, i + 1) for i in range(prepared.num_examples))
            ]
        )
    batched = logits.detach()
    tol = min(1e4 * torch.finfo(batched.dtype).eps, 1e-2)
    scale = max(float(batched.abs().max()), float(single.abs().max()), 1e-30)
    return float((single - batched).abs().max()) > tol * scale


class GramBlocks:
    r"""Features of a block of B examples: Gram pieces and materialised gradient pieces.

    Attributes:
        grams (list[GramPiece]): layers in Gram form.
        dense (list[Tensor]): materialised per-example gradients, (B, K, p_l) each.
    """

    def __init__(self, grams: list[GramPiece], dense: list[Tensor], size: int) -> None:
        self.grams = grams
        self.dense = dense
        self.size = size

    def __len__(self) -> int:
        return self.size

    def _tensors(self) -> list[Tensor]:
        return [t for g in self.grams for t in g.tensors()] + self.dense

    def numel(self) -> int:
        """Total number of values held."""
        return sum(t.numel() for t in self._tensors())

    def element_size(self) -> int:
        """Bytes per value (of the floating-point tensors)."""
        floats = [t for t in self._tensors() if t.is_floating_point()]
        return floats[0].element_size() if floats else 4

    def nbytes(self) -> int:
        """Bytes held."""
        return sum(t.numel() * t.element_size() for t in self._tensors())

    def slice(self, start: int, stop: int) -> GramBlocks:
        """Examples ``start:stop``."""
        out = copy.copy(self)
        out.grams = [g.slice(start, stop) for g in self.grams]
        out.dense = [d[start:stop] for d in self.dense]
        out.size = len(range(start, min(stop, self.size)))
        return out


def blocks_trace_inner(f1: GramBlocks, f2: GramBlocks) -> Tensor:
    r"""``sum_c <g^c_i, g^c_j>`` summed over every piece of two blocks, shape (B1, B2)."""
    out: Tensor | int = 0
    for p1, p2 in zip(f1.grams, f2.grams):
        out = out + trace_inner(p1, p2)
    for d1, d2 in zip(f1.dense, f2.dense):
        out = out + d1.reshape(len(f1), -1) @ d2.reshape(len(f2), -1).T
    return out


def blocks_trace_sq_norms(f: GramBlocks) -> Tensor:
    r"""``sum_c ||g^c_i||^2`` summed over every piece of a block, shape (B,)."""
    out: Tensor | int = 0
    for piece in f.grams:
        out = out + trace_sq_norms(piece)
    for d in f.dense:
        flat = d.reshape(len(f), -1)
        out = out + torch.linalg.vecdot(flat, flat)
    return out


def candidate_rules(function: ModelFunction) -> tuple[list[LayerRule], dict[str, str]]:
    r"""Rules for the modules that own selected parameters and are of a covered type.

    Returns:
        (rules, reasons): the candidate rules, and module name -> why it is not covered.
    """
    model = function.model
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    selected = set(function.names)
    values = {**function.frozen, **function.params}
    rules, reasons = [], {}
    for name, module in model.named_modules():
        own = dict(module.named_parameters(recurse=False))
        full = {local: f"{name}.{local}" if name else local for local in own}
        chosen = {local: full[local] for local in own if full[local] in selected}
        if not chosen:
            continue
        if any(uses[id(p)] > 1 for p in own.values()):
            reasons[name] = "it shares (ties) a parameter with another module"
            continue
        tensors = {local: values[f] for local, f in full.items() if f in values}
        for local, _ in module.named_buffers(recurse=False):
            key = f"{name}.{local}" if name else local
            if key in values:
                tensors[local] = values[key]
        rule = make_rule(name or "<root>", module, chosen, tensors)
        if rule is None:
            reasons[name] = f"no Gram rule for {type(module).__name__} in this configuration"
        else:
            rules.append(rule)
    return rules, reasons


def restricted_function(function: ModelFunction, names: list[str]) -> ModelFunction:
    """A copy of ``function`` differentiating only the parameters ``names`` (others frozen)."""
    sub = copy.copy(function)
    sub.names = list(names)
    sub.params = {n: function.params[n] for n in names}
    sub.shapes = [tuple(p.shape) for p in sub.params.values()]
    sub.sizes = [p.numel() for p in sub.params.values()]
    sub.num_params = sum(sub.sizes)
    rest = {n: p for n, p in function.params.items() if n not in sub.params}
    sub.frozen = {**function.frozen, **rest}
    return sub


class GramFeatures(FeatureMap):
    r"""Exact gradient-kernel features from per-layer inputs and output gradients.

    Args:
        function (ModelFunction): the model and its selected parameters.
        per_class (bool): return (B1, B2, C, C) blocks (entk) instead of the trace.
        summed (bool): gradients of the summed logits, products scaled by 1/C (pntk0, pntk).
    """

    def __init__(self, function: ModelFunction, per_class: bool = False, summed: bool = False):
        super().__init__(function)
        self.per_class = per_class
        self.summed = summed
        #: plan with one seeded random logit combination instead of the kernel's (the summed
        #: logits can have an identically zero gradient, e.g. for ``cat([z, -z])`` heads)
        self.random_check = False
        self.per_logit = not summed
        self.what = "gradient" if summed else "Jacobian"
        self.rules: list[LayerRule] | None = None
        self.fallback: ModelFunction | None = None
        #: module name -> why its parameters are left to the Jacobian path
        self.not_covered: dict[str, str] = {}
        self.num_outputs: int | None = None
        self._example_bytes: int | None = None
        self._captured_bytes: int | None = None
        #: whether a block of >= 2 examples has been checked for examples mixing
        self._batch_checked = False

    # ------------------------------------------------------------------ plan
    def _combinations(self, num_logits: int) -> Tensor:
        if self.summed:
            return torch.ones(1, num_logits)
        return torch.eye(num_logits)

    def _class_chunk(self, record: Capture, num_combinations: int) -> int:
        """Combinations per backward pass (see :func:`budget.combinations_per_pass`)."""
        outputs = [o for outs in record.outputs.values() for o in outs]
        size = sum(o.numel() * o.element_size() for o in outputs)
        return combinations_per_pass(size, num_combinations, self.memory_limit)

    def plan(self, inputs: ModelInputs) -> None:
        r"""Chooses, from a block of examples, which modules are covered and in which form.

        Args:
            inputs (ModelInputs): a few examples (the first ones of the first block).
        """
        self._check_mode()
        function = self.function
        candidates, self.not_covered = candidate_rules(function)
        # A one-example block cannot show which modules see unbatched inputs (BERT's position
        # ids are (1, T) whatever the batch): plan on the example twice, so the plan does not
        # depend on whether the first block holds one example (it cannot show mixing either:
        # that is checked on the first real block of two or more).
        duplicated = inputs.num_examples == 1
        if duplicated:
            inputs = inputs.map(lambda t: torch.cat([t, t]))
        prepared = function.prepare(inputs)
        record = forward_capture(function, prepared, candidates)
        batch = prepared.num_examples
        if batch > 1 and not duplicated:
            self._batch_checked = True
            if mixes_examples(function, prepared, record.logits):
                self.not_covered.update({rule.name: MIXED_BATCH for rule in candidates})
                self.rules, self.fallback = [], function
                return
        usable = []
        for rule in candidates:
            problem = record.problem(rule, batch)
            if problem is None:
                usable.append(rule)
            else:
                self.not_covered[rule.name] = problem
        combos = self._combinations(record.logits.shape[1])
        if self.random_check:
            gen = torch.Generator().manual_seed(1)
            combos = torch.randn(1, combos.shape[1], generator=gen)
        targets = [record.outputs[r.name][0] for r in usable]
        deltas = output_gradients(
            record.logits, targets, combos, self._class_chunk(record, len(combos))
        )
        self.rules = self._consistent(record, usable, deltas, combos)
        for rule in self.rules:
            gram, materialised = rule.costs(record.inputs[rule.name][0], combos.shape[0])
            rule.use_gram = rule.gram_capable and gram < materialised
        covered = {n for rule in self.rules for n in rule.param_names}
        rest = [n for n in function.names if n not in covered]
        self.fallback = restricted_function(function, rest) if rest else None

    def _consistent(
        self, record: Capture, rules: list[LayerRule], deltas: list[Tensor], combos: Tensor
    ) -> list[LayerRule]:
        """The rules whose implied gradients of a random weighting of the logits are autograd's."""
        if not rules:
            return []
        logits = record.logits
        gen = torch.Generator().manual_seed(0)
        weights = torch.randn(logits.shape[0], combos.shape[0], generator=gen, dtype=torch.float64)
        weights = weights.to(device=logits.device, dtype=logits.dtype)
        cotangent = weights @ combos.to(weights)
        names = [n for rule in rules for n in rule.param_names]
        grads = torch.autograd.grad(
            logits,
            [record.params[n] for n in names],
            cotangent,
            retain_graph=True,
            allow_unused=True,
            materialize_grads=True,
        )
        actual = dict(zip(names, grads))
        # at the rounding of the narrowest dtype the forward pass computes in (bf16: 78 uncapped)
        tol = min(1e4 * torch.finfo(self.function.check_dtype()).eps, 2e-2)
        kept = []
        for rule, delta in zip(rules, deltas):
            implied = rule.weighted_grad(record.inputs[rule.name][0], delta, weights)
            truth = torch.cat([actual[n].reshape(-1) for n in rule.param_names])
            scale = max(float(truth.norm()), float(implied.norm()))
            if scale > 0 and float((implied - truth).norm()) <= tol * scale:  # 0: unverified
                kept.append(rule)
            else:
                self.not_covered[rule.name] = (
                    "its parameters' gradient is not what its input and output gradient imply "
                    "(a parameter used outside the module, or a batch dimension not first)"
                )
        return kept

    def _check_mode(self) -> None:
        refuse_batch_dependent(self.function.model, "The Gram engine")

    def layer_forms(self) -> dict[str, str]:
        """Module name -> "gram" or "materialised" for the covered modules (after planning)."""
        return {r.name: "gram" if r.use_gram else "materialised" for r in self.rules or []}

    # ------------------------------------------------------------------ features
    def __call__(self, inputs: ModelInputs) -> GramBlocks:
        if self.rules is None:
            self.plan(plan_examples(inputs))
        self._check_mode()
        function = self.function
        prepared = function.prepare(inputs)
        record = forward_capture(function, prepared, self.rules)
        batch = prepared.num_examples
        if batch > 1 and not self._batch_checked:
            self._batch_checked = True
            if self.rules and mixes_examples(function, prepared, record.logits):
                raise RuntimeError(
                    f"The Gram engine was planned on a one-example block, but {MIXED_BATCH}. "
                    "Use engine='jacobian' for this model."
                )
        for rule in self.rules:
            problem = record.problem(rule, batch)
            if problem is not None:
                raise RuntimeError(
                    f"Module {rule.name!r} was covered by the Gram engine on the first block but "
                    f"in this block {problem}. Use engine='jacobian' for this model."
                )
        self.num_outputs = int(record.logits.shape[1])
        combos = self._combinations(self.num_outputs)
        targets = [record.outputs[r.name][0] for r in self.rules]
        chunk = self._class_chunk(record, len(combos))
        deltas = output_gradients(record.logits, targets, combos, chunk)
        captured = [record.inputs[r.name][0] for r in self.rules]
        del record, targets
        grams, dense = [], []
        for rule, a, delta in zip(self.rules, captured, deltas):
            piece = rule.finish(a, delta)
            (grams if isinstance(piece, GramPiece) else dense).append(piece)
        del deltas, captured
        dense.extend(self._fallback_pieces(inputs))
        return GramBlocks(grams, dense, batch)

    def _fallback_pieces(self, inputs: ModelInputs) -> list[Tensor]:
        if self.fallback is None:
            return []
        if self.summed:
            summed = SummedGradientFeatures(self.fallback)
            summed.memory_limit = self.memory_limit
            return [g[:, None, :] for g in summed(inputs).parts]
        jacobian = JacobianFeatures(self.fallback)
        jacobian.memory_limit = self.memory_limit
        return jacobian(inputs).parts

    def example_bytes(self, inputs: ModelInputs) -> int:
        """Bytes of features per example, measured on the first examples of ``inputs``."""
        if self._example_bytes is None:
            probe = plan_examples(inputs)
            feats = self(probe)
            self._example_bytes = -(-feats.numel() * feats.element_size() // len(feats))
        return self._example_bytes

    def block_pass_bytes(self, inputs: ModelInputs) -> int:
        """Activations and captured layer inputs of one example (a block runs at once)."""
        if self.rules is None:
            self.plan(plan_examples(inputs))
        if self._captured_bytes is None:  # one probe forward pass, then cached
            self._captured_bytes = captured_bytes(self.function, self.rules, inputs)
        return self.function.activation_bytes(inputs) + self._captured_bytes

    # ------------------------------------------------------------------ products
    def _scale(self, value: Tensor) -> Tensor:
        return value / self.num_outputs if self.summed else value

    def flatten(self, features: GramBlocks) -> Tensor:
        raise ValueError(
            "Exact gradient kernels have P numbers per example (and logit) as features, too "
            "many to store or to hand out; use a projected kernel (proj_pntk, proj_trntk)."
        )

    def inner(self, f1: GramBlocks, f2: GramBlocks) -> Tensor:
        """Kernel block (B1, B2), or (B1, B2, C, C) for entk."""
        f1, f2 = self.same_form(f1, f2)
        out: Tensor | int = 0
        if self.per_class:
            for p1, p2 in zip(f1.grams, f2.grams):
                out = out + per_class_inner(p1, p2)
            for d1, d2 in zip(f1.dense, f2.dense):
                out = out + torch.einsum("icp,jdp->ijcd", d1, d2)
        else:
            out = blocks_trace_inner(f1, f2)
        return self._scale(out)

    def sq_norms(self, f: GramBlocks) -> Tensor:
        """Diagonal of the (trace) kernel, (B,)."""
        return self._scale(blocks_trace_sq_norms(f))
