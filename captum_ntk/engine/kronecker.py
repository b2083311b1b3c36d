r"""Kronecker-factored per-layer projection (LoGra-style): ``projection="kronecker"``.

For a Linear (or groups-1 Conv1d/Conv2d) layer with inputs ``a_t`` (``d_in``, a constant 1
appended when the layer has a bias) at T positions (tokens, conv output pixels) and output
gradients ``delta^c_t`` (``d_out``), the gradient of logit c with respect to ``[W | b]`` is
``G^c = sum_t delta^c_t a_t^T``. Its projected feature is

    F^c = P_out G^c P_in^T = sum_t (P_out delta^c_t) (P_in a_t)^T      (k_out x k_in)

with seeded ``P_in`` (k_in x d_in) and ``P_out`` (k_out x d_out) Rademacher matrices scaled by
``1/sqrt(k_in)`` and ``1/sqrt(k_out)``, i.e. the projection matrix ``P_out (x) P_in`` applied to
the flattened ``[W | b]`` gradient, computed without forming any per-example gradient. Because
``P_in`` and ``P_out`` are independent with ``E[P^T P] = I``, ``E <F^c_i, F^c'_j> = <G^c_i,
G^c'_j>``: unbiased. **It is a different estimator from the paper's proj-trNTK** (Eq. 8 uses a
K x P matrix with i.i.d. entries): the entries of ``P_out (x) P_in`` are products of shared
factors, not independent, so the estimate has more variance for the same number of features.
Report kernels computed with it as the Kronecker variant, not as proj-trNTK.

Parameters of other modules (normalisation layers, grouped convolutions, embeddings, anything the
per-layer capture cannot verify) take the dense seeded projection of
:mod:`captum_ntk.engine.projection.dense` over their per-example gradients (from ``torch.func``), or stay
unprojected when their share of K is at least their number of parameters.

Dimension rule (a function of K and the layer shapes only): the units are the covered layers
(``p_l = d_out d_in`` parameters) and, if any, the group of remaining parameters. K is split
equally among the units, each capped at its ``p_l`` (water-filling: what a capped unit does not
use is shared among the others), giving ``K_l``. A layer then uses
``k_out ~ sqrt(K_l d_out / d_in)`` (the closer of floor and ceil, within ``1..d_out``) and
``k_in = min(d_in, K_l // k_out)``: ``k_in k_out <= K_l`` features, with the factors'
aspect ratio following the layer's. The total feature size ``feature_dim <= K``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .budget import combinations_per_pass
from .data.inputs import ModelInputs
from .features import FeatureMap
from .gram import GramBlocks, GramFeatures
from .gram.capture import captured_bytes, forward_capture, output_gradients
from .gram.contract import GramPiece
from .gram.feature_map import (
    MIXED_BATCH,
    blocks_trace_inner,
    blocks_trace_sq_norms,
    mixes_examples,
    plan_examples,
    restricted_function,
)
from .gram.rules import AffineRule
from .model import ModelFunction
from .modes import refuse_batch_dependent
from .projection.dense import RandomProjection, projection_block
from .projection.precision import accumulate_product

_LAYER_SALT = 0x9E3779B97F4A7C15


def layer_seed(seed: int, index: int, side: int) -> int:
    """The seed of factor ``side`` (0: P_in, 1: P_out) of covered layer ``index``."""
    return (int(seed) * _LAYER_SALT + 2 * int(index) + int(side) + 1) & ((1 << 64) - 1)


def split_dims(projection_dim: int, sizes: list[int]) -> list[int]:
    r"""Water-filling split of K among units with ``sizes`` parameters (each capped at its size).

    Args:
        projection_dim (int): K.
        sizes (list[int]): parameters per unit.

    Returns:
        list[int]: K_l per unit, summing to ``min(K, sum(sizes))``.
    """
    shares = [0] * len(sizes)
    left, open_units = int(projection_dim), list(range(len(sizes)))
    while open_units and left > 0:
        equal = max(1, left // len(open_units))
        capped = [i for i in open_units if sizes[i] - shares[i] <= equal]
        for i in capped or open_units:
            add = min(equal, sizes[i] - shares[i], left)
            shares[i] += add
            left -= add
        open_units = [i for i in open_units if shares[i] < sizes[i]]
        if not capped:
            for i in open_units[:left]:  # the remainder of an uneven split, one each
                shares[i] += 1
            left = max(0, left - len(open_units))
    return shares


def factor_dims(target: int, d_in: int, d_out: int) -> tuple[int, int]:
    """(k_in, k_out) with ``k_in k_out <= target`` and aspect ratio close to ``d_in : d_out``."""
    ideal = math.sqrt(max(1, target) * d_out / d_in)
    best = (0, 1, 1)
    for k_out in {max(1, min(d_out, math.floor(ideal))), max(1, min(d_out, math.ceil(ideal)))}:
        k_in = max(1, min(d_in, target // k_out))
        best = max(best, (k_in * k_out, k_in, k_out))
    return best[1], best[2]


def kronecker_factor(k: int, d: int, seed: int, dtype: torch.dtype, device) -> Tensor:
    """A seeded (k, d) Rademacher factor scaled by ``1/sqrt(k)``."""
    return projection_block(k, 0, d, "rademacher", seed, dtype, device) / math.sqrt(k)


def _project_last(x: Tensor, factor: Tensor, precision: str) -> Tensor:
    """``x @ factor.T`` over the last dimension (fp32/fp64 accumulation, ``precision`` products)."""
    flat = x.reshape(-1, x.shape[-1])
    acc = torch.promote_types(x.dtype, torch.float32)
    out = torch.zeros(flat.shape[0], factor.shape[0], dtype=acc, device=x.device)
    accumulate_product(out, flat, factor.T, precision)
    return out.reshape(*x.shape[:-1], factor.shape[0]).to(x.dtype)


class KroneckerLayer:
    r"""One covered layer: its rule, factors and feature size.

    Args:
        rule (AffineRule): the Gram engine's rule for the layer (capture of its input).
        target (int): K_l, the most features (k_in k_out) the layer may use.
        seed (int): the kernel's seed.
        index (int): the layer's position among the covered layers.
        dtype, device: of the factors.
    """

    def __init__(self, rule: AffineRule, target: int, seed: int, index: int, dtype,
                 device) -> None:  # fmt: skip
        self.rule = rule
        weight = rule.module.weight
        self.d_out = int(weight.shape[0])
        self.d_in = int(weight[0].numel()) + int(rule.bias)
        k_in, k_out = factor_dims(target, self.d_in, self.d_out)
        self.p_in = kronecker_factor(k_in, self.d_in, layer_seed(seed, index, 0), dtype, device)
        self.p_out = kronecker_factor(k_out, self.d_out, layer_seed(seed, index, 1), dtype, device)

    @staticmethod
    def num_params(rule: AffineRule) -> int:
        """d_out d_in: the layer's selected parameters."""
        weight = rule.module.weight
        return int(weight.numel()) + (int(weight.shape[0]) if rule.bias else 0)

    @property
    def dim(self) -> int:
        return self.p_in.shape[0] * self.p_out.shape[0]

    def deltas(self, delta: Tensor) -> Tensor:
        """Output gradients (K, B, *output) as (B, K, T, d_out)."""
        k, b = delta.shape[:2]
        if isinstance(self.rule.module, nn.Linear):
            return delta.reshape(k, b, -1, self.d_out).permute(1, 0, 2, 3)
        return delta.reshape(k, b, self.d_out, -1).permute(1, 0, 3, 2)

    def project_inputs(self, captured: Tensor, precision: str) -> Tensor:
        r"""``P_in (a_t, 1)``: (B, T, k_in) from inputs (B, 1, T, x)."""
        a = captured[:, 0]
        if self.rule.bias:
            a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
        return _project_last(a, self.p_in, precision)

    def project_deltas(self, delta: Tensor, precision: str) -> Tensor:
        r"""``P_out delta^c_t``: (B, K, T, k_out) from output gradients (K, B, *output)."""
        return _project_last(self.deltas(delta), self.p_out, precision)

    @staticmethod
    def combine(pa: Tensor, pd: Tensor) -> Tensor:
        r"""(B, K, k_out k_in) features ``sum_t pd_t pa_t^T`` from projected inputs
        (B, T, k_in) and output gradients (B, K, T, k_out)."""
        out = torch.einsum("bktq,btr->bkqr", pd, pa)
        return out.reshape(out.shape[0], out.shape[1], -1)

    def gram_cheaper(self, positions: int, rows: int) -> bool:
        r"""Whether Gram form beats features for a pair of examples (one position only).

        Per pair, Gram form costs ``k_in + rows k_out`` multiply-adds against ``rows k_in
        k_out`` for the features. Layers with T > 1 positions (``T^2`` times the Gram cost)
        always keep features, so the choice depends on layer shapes only, never on a
        block's padded length.
        """
        k_in, k_out = self.p_in.shape[0], self.p_out.shape[0]
        return positions == 1 and k_in + rows * k_out < rows * k_in * k_out


def gram_piece(pa: Tensor, pd: Tensor) -> GramPiece:
    r"""A :class:`GramPiece` (no bias: it is inside ``pa``) from factors (B, T, k_in), (B, K, T, k_out)."""
    b, k, t, q = pd.shape
    return GramPiece(pa[:, None], pd.permute(0, 2, 1, 3).reshape(b, 1, t, k * q), k, False)


def piece_features(piece: GramPiece) -> Tensor:
    r"""The features (B, K, k_out k_in) of a :func:`gram_piece` (for stores)."""
    b, _, t, kq = piece.delta.shape
    k = piece.num_logits
    pd = piece.delta[:, 0].reshape(b, t, k, kq // k).permute(0, 2, 1, 3)
    return KroneckerLayer.combine(piece.a[:, 0], pd)


class KroneckerBlocks(GramBlocks):
    r"""Features of a block in Gram form: per-layer pieces in layer order, then the rest.

    Attributes:
        layout (list[tuple[bool, int]]): per covered layer then the rest, ``(is_gram, index)``
                into ``grams`` or ``dense``.
    """

    def __init__(self, grams: list[GramPiece], dense: list[Tensor], size: int,
                 layout: list[tuple[bool, int]]) -> None:  # fmt: skip
        super().__init__(grams, dense, size)
        self.layout = layout


def _kroneckerable(rule) -> bool:
    module = rule.module
    return (
        isinstance(rule, AffineRule) and not rule.transposed and getattr(module, "groups", 1) == 1
    )


class KroneckerFeatures(FeatureMap):
    r"""Kronecker-projected gradients: (B, C, D) for proj_trntk, (B, D) for proj_pntk.

    D = ``feature_dim`` <= K (see the module docstring for the split of K). Inner products
    of the features are unbiased estimates of the trace NTK (``summed=False``) or of the
    summed-logit gradient products (``summed=True``, the pNTK without its 1/C, which cosine
    normalisation removes), by a different estimator from the i.i.d. dense projection.

    Args:
        function (ModelFunction): the model and its selected parameters.
        projection_dim (int): K, smaller than P.
        seed (int): the seed of every factor (and of the dense projection of the rest).
        summed (bool): gradients of the summed logits (proj_pntk) instead of per logit.
        precision (str): "fp32", "tf32" or "bf16" for the factor products.
        gram_form (bool): return :class:`KroneckerBlocks` where cheaper: one-position layers
                (Linear layers on vectors) keep their projected factors (B, k_in) and
                (B, rows, k_out), and inner products are ``<P_in a_i, P_in a_j> sum_c
                <P_out delta^c_i, P_out delta^c_j>`` (the kernel without forming the
                ``k_out k_in`` features; equal up to float rounding). Default: False (plain
                (B, C, D) / (B, D) features, as stores need; ``kernel_matrix`` and the
                attribution classes set it).
    """

    def __init__(self, function: ModelFunction, projection_dim: int, seed: int = 0,
                 summed: bool = False, precision: str = "fp32",
                 gram_form: bool = False) -> None:  # fmt: skip
        super().__init__(function)
        if int(projection_dim) < 1 or int(projection_dim) >= function.num_params:
            raise ValueError(
                f"projection_dim={projection_dim} must be in [1, P) with P={function.num_params} "
                "parameters: a projection saves nothing otherwise. Use the exact kernel "
                "('trntk' / 'pntk') or a smaller projection_dim."
            )
        self.projection_dim = int(projection_dim)
        self.seed = int(seed)
        self.summed = summed
        self.per_logit = not summed
        self.what = "gradient" if summed else "Jacobian"
        self.precision = precision
        self.gram_form = bool(gram_form)
        self.layers: list[KroneckerLayer] | None = None
        #: per covered layer: its number of positions T (from the plan's probe)
        self.positions: list[int] = []
        self._captured_bytes: int | None = None
        self.rest: ModelFunction | None = None
        self.rest_projection: RandomProjection | None = None
        #: module name -> why its parameters take the dense projection
        self.not_covered: dict[str, str] = {}
        self.feature_dim: int | None = None
        #: whether a block of >= 2 examples has been checked for examples mixing
        self._batch_checked = False

    def plan(self, inputs: ModelInputs) -> None:
        """Chooses the covered layers (verified by the Gram engine's check) and the factors."""
        function = self.function
        gram = GramFeatures(function, summed=self.summed)
        gram.memory_limit = self.memory_limit
        gram.plan(plan_examples(inputs))
        self.not_covered = dict(gram.not_covered)
        self._batch_checked = gram._batch_checked
        rules = []
        for rule in gram.rules or []:
            if _kroneckerable(rule):
                rules.append(rule)
            else:
                self.not_covered[rule.name] = "not a Linear or groups-1 convolution"
        covered = {n for rule in rules for n in rule.param_names}
        rest = [n for n in function.names if n not in covered]
        sizes = [KroneckerLayer.num_params(rule) for rule in rules]
        rest_size = sum(function.sizes[function.names.index(n)] for n in rest)
        dims = split_dims(self.projection_dim, sizes + ([rest_size] if rest else []))
        dtype, device = function.dtype, function.device
        self.layers = [
            KroneckerLayer(rule, max(1, dims[i]), self.seed, i, dtype, device)
            for i, rule in enumerate(rules)
        ]
        self.feature_dim = sum(layer.dim for layer in self.layers)
        self.positions = self._positions(inputs) if self.layers else []
        if rest:
            self.rest = restricted_function(function, rest)
            k_rest = max(1, dims[-1])
            if k_rest < rest_size:
                self.rest_projection = RandomProjection(
                    rest_size, k_rest, "rademacher", layer_seed(self.seed, len(rules), 0),
                    device=device, dtype=dtype, cache_bytes=self.memory_limit // 8,
                    scratch_bytes=self.memory_limit // 16,
                )  # fmt: skip
            self.feature_dim += min(k_rest, rest_size)

    def _positions(self, inputs: ModelInputs) -> list[int]:
        """T per covered layer, from one example's captured inputs."""
        prepared = self.function.prepare(self.function.probe_example(inputs))
        with torch.no_grad():
            record = forward_capture(self.function, prepared, [x.rule for x in self.layers])
        return [int(record.inputs[x.rule.name][0].shape[2]) for x in self.layers]

    def _gram_layers(self, rows: int) -> list[bool]:
        """Per covered layer: whether it is kept in Gram form."""
        if not self.gram_form:
            return [False] * len(self.layers or [])
        return [x.gram_cheaper(t, rows) for x, t in zip(self.layers, self.positions)]

    def example_bytes(self, inputs: ModelInputs) -> int:
        if self.layers is None:
            self.plan(inputs)
        rows = 1 if self.summed else self.function.num_outputs(inputs)
        numbers = rows * int(self.feature_dim)
        for layer, gram in zip(self.layers, self._gram_layers(rows)):
            if gram:  # one position: k_in + rows k_out numbers instead of rows k_in k_out
                numbers += layer.p_in.shape[0] + rows * layer.p_out.shape[0] - rows * layer.dim
        return numbers * self.itemsize

    def block_pass_bytes(self, inputs: ModelInputs) -> int:
        """Activations and captured layer inputs of one example (a block runs at once)."""
        if self.layers is None:
            self.plan(inputs)
        if self._captured_bytes is None:  # one probe forward pass, then cached
            rules = [x.rule for x in self.layers]
            self._captured_bytes = captured_bytes(self.function, rules, inputs)
        return self.function.activation_bytes(inputs) + self._captured_bytes

    def _class_chunk(self, outputs: list[Tensor], count: int) -> int:
        size = sum(o.numel() * o.element_size() for o in outputs)
        return combinations_per_pass(size, count, self.memory_limit)

    def __call__(self, inputs: ModelInputs) -> Tensor:
        if self.layers is None:
            self.plan(inputs)
        refuse_batch_dependent(self.function.model, "The Kronecker projection")
        num = self.function.num_outputs(inputs)
        combos = torch.ones(1, num) if self.summed else torch.eye(num)
        gram = self._gram_layers(combos.shape[0])
        pieces = self._layer_pieces(inputs, combos, gram)
        rest = [] if self.rest is None else [self._rest_features(inputs, combos.shape[0])]
        if any(gram):
            return self._blocks(pieces, rest, gram, inputs.num_examples)
        out = torch.cat(pieces + rest, dim=2)
        return out[:, 0] if self.summed else out

    @staticmethod
    def _blocks(pieces: list, rest: list[Tensor], gram: list[bool], size: int) -> KroneckerBlocks:
        grams = [p for p, g in zip(pieces, gram) if g]
        dense = [p for p, g in zip(pieces, gram) if not g] + rest
        layout, counts = [], [0, 0]
        for g in gram + [False] * len(rest):
            layout.append((g, counts[g]))
            counts[g] += 1
        return KroneckerBlocks(grams, dense, size, layout)

    def flatten(self, features: Tensor | KroneckerBlocks) -> Tensor:
        r"""Plain features (B, C, D) / (B, D) of a block, whatever its form (for stores)."""
        if isinstance(features, Tensor):
            return features
        out = torch.cat([
            piece_features(features.grams[i]) if gram else features.dense[i]
            for gram, i in features.layout
        ], dim=2)  # fmt: skip
        return out[:, 0] if self.summed else out

    def inner(self, f1: Tensor | KroneckerBlocks, f2: Tensor | KroneckerBlocks) -> Tensor:
        f1, f2 = self.same_form(f1, f2)
        if isinstance(f1, GramBlocks):
            return blocks_trace_inner(f1, f2)
        return super().inner(f1, f2)

    def sq_norms(self, f: Tensor | KroneckerBlocks) -> Tensor:
        if isinstance(f, GramBlocks):
            return blocks_trace_sq_norms(f)
        return super().sq_norms(f)

    def _layer_pieces(self, inputs: ModelInputs, combos: Tensor, gram: list[bool]) -> list:
        """Per covered layer: features (B, rows, k_out k_in), or a GramPiece where ``gram``."""
        function = self.function
        b = inputs.num_examples
        if not self.layers:
            return [
                torch.zeros(b, combos.shape[0], 0, dtype=function.dtype, device=function.device)
            ]
        prepared = function.prepare(inputs)
        record = forward_capture(function, prepared, [x.rule for x in self.layers])
        if b > 1 and not self._batch_checked:
            self._batch_checked = True
            if mixes_examples(function, prepared, record.logits):
                raise RuntimeError(
                    f"The Kronecker projection was planned on a one-example block, but "
                    f"{MIXED_BATCH}. Use projection='rademacher' for this model."
                )
        for layer in self.layers:
            problem = record.problem(layer.rule, b)
            if problem is not None:
                raise RuntimeError(
                    f"Module {layer.rule.name!r} was covered by the Kronecker projection on the "
                    f"first block but in this block {problem}; use projection='rademacher'."
                )
        targets = [record.outputs[x.rule.name][0] for x in self.layers]
        captured = [record.inputs[x.rule.name][0] for x in self.layers]
        chunk = self._class_chunk(targets, combos.shape[0])
        pas = [x.project_inputs(a, self.precision) for x, a in zip(self.layers, captured)]
        parts: list[list[Tensor]] = [[] for _ in self.layers]  # per layer, per class chunk
        for c0 in range(0, combos.shape[0], chunk):
            deltas = output_gradients(record.logits, targets, combos[c0 : c0 + chunk], chunk)
            for i, (layer, pa, d) in enumerate(zip(self.layers, pas, deltas)):
                pd = layer.project_deltas(d, self.precision)
                parts[i].append(pd if gram[i] else layer.combine(pa, pd))
        return [
            gram_piece(pa, torch.cat(p, dim=1)) if g else torch.cat(p, dim=1)
            for pa, p, g in zip(pas, parts, gram)
        ]

    def _rest_features(self, inputs: ModelInputs, rows: int) -> Tensor:
        """(B, rows, k_rest): the remaining parameters' gradients, dense-projected."""
        assert self.rest is not None
        b = inputs.num_examples
        if self.summed:
            parts = self.rest.summed_gradient(inputs)
        else:
            parts = [p.reshape(b * rows, -1) for p in self.rest.jacobian(inputs)]
        if self.rest_projection is not None:
            flat = self.rest_projection(parts)
        else:
            flat = torch.cat(parts, dim=1)
        return flat.reshape(b, rows, -1)
