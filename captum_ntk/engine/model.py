"""A model seen as a pure function of (parameters, one example) -> logits.

:class:`ModelFunction` owns detached copies of the model's parameters and buffers (on
the compute device, in the compute dtype) and evaluates the model through
``torch.func.functional_call``, so the caller's model is never modified. Per-example
Jacobians come from ``vmap`` over ``jacrev`` (all logits) or ``grad`` (sum of logits).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, vmap

from .adapters import find_adapter
from .autograd_loop import looped_jacobian, vmap_unsafe_modules, warn_fallback
from .data.inputs import ModelInputs
from .parameters import resolve_modules, select_parameters

#: Keyword inputs a transformers model wrapped in a user module receives from the batch.
_TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds")


def extract_logits(out: Any) -> Tensor:
    """The logits tensor of a model output (a Tensor or an object with ``.logits``)."""
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(
        f"The model returned {type(out).__name__}; expected a logits Tensor of shape (B, C) or "
        "(B,), or an output object with a `.logits` attribute."
    )


class ModelFunction:
    r"""The model as a function of its selected parameters.

    Args:
        model (nn.Module): the classifier; returns logits (B, C), (B,) or an object with
                ``.logits``.
        layers (sequence of str, optional): modules whose parameters count (see
                :func:`captum_ntk.select_parameters`). Default: all trainable ones.
        device (torch.device, optional): compute device. Default: the model's.
        dtype (torch.dtype, optional): compute dtype. Default: the model's parameter dtype.
        differentiate (bool): if False no parameter is selected (activation kernels).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        differentiate: bool = True,
    ) -> None:
        self.model = model
        first = next(iter(model.parameters()), None)
        if first is None:
            raise ValueError("The model has no parameters.")
        if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
            raise ValueError(
                "The model's parameters are on the 'meta' device (not materialised); load its "
                "weights (e.g. model.to_empty(device=...) then load_state_dict) first."
            )
        self.device = torch.device(device) if device is not None else first.device
        self.dtype = dtype if dtype is not None else first.dtype
        if not self.dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {self.dtype}.")
        # a model family with its own input handling (e.g. transformers), possibly wrapped
        self.adapter, self.hf_model = find_adapter(model)
        self.is_hf = self.adapter is not None

        selected = select_parameters(model, layers) if differentiate else {}
        self.names = list(selected)
        self.params = {n: self._cast(p) for n, p in selected.items()}
        self.shapes = [tuple(p.shape) for p in self.params.values()]
        self.sizes = [p.numel() for p in self.params.values()]
        self.num_params = sum(self.sizes)
        self.frozen = {
            n: self._cast(t)
            for n, t in list(model.named_parameters()) + list(model.named_buffers())
            if n not in self.params
        }
        engine_tensors = getattr(self.adapter, "engine_tensors", None)
        if engine_tensors is not None:  # e.g. merged LoRA adapters, run on their adapter path
            self.params = engine_tensors(model, self.params)
            self.frozen = engine_tensors(model, self.frozen)
        self._num_outputs: int | None = None
        self._activation_bytes: int | None = None
        #: why per-example gradients leave vmap for the autograd loop (None: they do not)
        unsafe = vmap_unsafe_modules(model) if self.params else []
        self.loop_reason: str | None = ", ".join(unsafe[:3]) if unsafe else None
        self._warned = False

    def _cast(self, t: Tensor) -> Tensor:
        t = t.detach()
        if t.is_floating_point():
            return t.to(device=self.device, dtype=self.dtype)
        return t.to(device=self.device)

    # ------------------------------------------------------------------ inputs
    def prepare(self, inputs: ModelInputs) -> ModelInputs:
        """Moves a block to the compute device/dtype (and makes HF batches vmap-safe)."""
        inputs = inputs.to(self.device, self.dtype)
        if self.is_hf and inputs.kwargs:
            trimmed = self._trimmed(inputs.kwargs)
            tokens = self._token_inputs(trimmed)
            prepared = self.adapter.prepare_inputs(self.hf_model, tokens, self.dtype)
            inputs = ModelInputs(inputs.args, {**trimmed, **prepared})
        return inputs

    def _trimmed(self, kwargs: dict[str, Tensor]) -> dict[str, Tensor]:
        """A block cut to its longest real sequence (unless its mask is already prepared)."""
        mask = kwargs.get("attention_mask")
        if self.adapter is not None and mask is not None and mask.dim() == 2:
            return self.adapter.trim_padding(kwargs)
        return dict(kwargs)

    def _token_inputs(self, kwargs: dict[str, Tensor]) -> dict[str, Tensor]:
        """The keyword inputs meant for the transformers model (all of them unless wrapped)."""
        if self.hf_model is self.model:
            return dict(kwargs)
        return {k: v for k, v in kwargs.items() if k in _TOKEN_KEYS}

    def padding_mask(self, inputs: ModelInputs) -> Tensor | None:
        """The (B, T) token mask of a block as the model sees it (trimmed), or None."""
        mask = inputs.kwargs.get("attention_mask")
        if mask is None or mask.dim() != 2:
            return None
        if self.is_hf:
            mask = self.adapter.trim_padding(inputs.kwargs)["attention_mask"]
        return mask.to(self.device)

    def validate(self, inputs: ModelInputs) -> None:
        """Model-specific input checks (Hugging Face token ids, lengths, arguments)."""
        if self.is_hf and inputs.kwargs:
            # validated as the model will see it: each block is trimmed to its longest sequence
            self.adapter.validate_inputs(
                self.hf_model, self._token_inputs(self._trimmed(inputs.kwargs))
            )

    def check_dtype(self) -> torch.dtype:
        r"""The dtype numerical self-checks compare at: the compute dtype, or the narrower one a
        model family computes parts of its forward pass in (a float32 attention softmax in a
        float64 Llama), whichever has the larger rounding."""
        internal = getattr(self.adapter, "internal_dtype", None) if self.is_hf else None
        narrow = internal(self.hf_model) if internal is not None else None
        if narrow is not None and torch.finfo(narrow).eps > torch.finfo(self.dtype).eps:
            return narrow
        return self.dtype

    def context(self) -> contextlib.AbstractContextManager:
        """Context to run forward passes in (vmap-safe attention for HF models)."""
        if self.is_hf:
            return self.adapter.context(self.hf_model)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ forward
    def _call(self, params: dict[str, Tensor], args: tuple, kwargs: dict) -> Tensor:
        out = functional_call(self.model, {**self.frozen, **params}, args, kwargs, tie_weights=True)
        return extract_logits(out)

    def batch_logits(self, inputs: ModelInputs) -> Tensor:
        r"""Logits of a block, shape (B, C), without gradients."""
        inputs = self.prepare(inputs)
        with torch.no_grad(), self.context():
            logits = self._call(self.params, inputs.args, inputs.kwargs)
        return _as_2d(logits, inputs.num_examples)

    def _single(self, params: dict[str, Tensor], args: tuple, kwargs: dict) -> Tensor:
        args = tuple(a.unsqueeze(0) for a in args)
        kwargs = {k: v.unsqueeze(0) for k, v in kwargs.items()}
        return _as_2d(self._call(params, args, kwargs), 1).reshape(-1)

    def num_outputs(self, inputs: ModelInputs) -> int:
        """C, the number of logits, probed on the first example of a block."""
        if self._num_outputs is None:
            try:
                logits = self.batch_logits(inputs.slice(0, 1))
            except TypeError as exc:
                raise TypeError(
                    f"The model's forward failed on the first example: {exc}. Check that the "
                    "inputs provide every forward argument (tuple: positional, Mapping: keyword)."
                ) from exc
            self._num_outputs = int(logits.shape[1])
        return self._num_outputs

    # ------------------------------------------------------------------ derivatives
    def jacobian(self, inputs: ModelInputs, classes: tuple[int, int] | None = None) -> list[Tensor]:
        r"""Per-example Jacobian of the logits for a block, one piece per parameter.

        Args:
            inputs (ModelInputs): a block of B examples.
            classes (tuple of int, optional): ``(start, stop)``: only the Jacobian rows of
                    logits ``start:stop`` (one backward pass per logit in the range, so a
                    chunk of classes costs chunk x P numbers per example). Default: all.

        Returns:
            list[Tensor]: shapes (B, C', p_i) in parameter order, C' the number of logits asked
            for (concatenated along the last dimension they form the (B, C', P) Jacobian; they
            are not concatenated, to save a copy of B x C' x P numbers).
        """
        start, stop = classes if classes is not None else (None, None)

        def single(params: dict[str, Tensor], args: tuple, kwargs: dict) -> Tensor:
            return self._single(params, args, kwargs)[start:stop]

        inputs = self.prepare(inputs)
        b = inputs.num_examples

        def vmapped() -> list[Tensor]:
            jac = vmap(jacrev(single), in_dims=(None, 0, 0))(
                self.params, inputs.args, inputs.kwargs
            )
            return [jac[n].reshape(b, jac[n].shape[1], -1) for n in self.names]

        return self._per_example(vmapped, inputs, lambda out: out[start:stop])

    def summed_gradient(self, inputs: ModelInputs) -> list[Tensor]:
        r"""Per-example gradient of the sum of logits for a block, one piece per parameter.

        Returns:
            list[Tensor]: shapes (B, p_i) in parameter order.
        """

        def total(params: dict[str, Tensor], args: tuple, kwargs: dict) -> Tensor:
            return self._single(params, args, kwargs).sum()

        inputs = self.prepare(inputs)
        b = inputs.num_examples

        def vmapped() -> list[Tensor]:
            grads = vmap(grad(total), in_dims=(None, 0, 0))(self.params, inputs.args, inputs.kwargs)
            return [grads[n].reshape(b, 1, -1) for n in self.names]

        pieces = self._per_example(vmapped, inputs, lambda out: out.sum().reshape(1))
        return [p.reshape(b, -1) for p in pieces]

    def _per_example(
        self,
        vmapped: Callable[[], list[Tensor]],
        inputs: ModelInputs,
        rows: Callable[[Tensor], Tensor],
    ) -> list[Tensor]:
        r"""Per-example derivative pieces (B, C', p_i): by vmap, else by the autograd loop.

        The loop (:mod:`.autograd_loop`) is taken for models holding a module vmap cannot
        differentiate, and when vmap raises a RuntimeError on an unlisted one (if the loop
        fails too, vmap's error is raised with it). One warning per model function.
        """
        if self.loop_reason is None:
            try:
                with self.context():
                    return vmapped()
            except torch.OutOfMemoryError:
                raise  # a memory limit, not a module vmap cannot handle: no fallback
            except RuntimeError as exc:
                self.loop_reason = f"vmap raised: {str(exc).splitlines()[0][:200]}"
                vmap_error: RuntimeError | None = exc
        else:
            vmap_error = None
        if not self._warned:
            self._warned = True
            warn_fallback(self.loop_reason)

        def logits_of(params: dict[str, Tensor], i: int) -> Tensor:
            part = inputs.slice(i, i + 1)
            return _as_2d(self._call(params, part.args, part.kwargs), 1)[0]

        try:
            with self.context():
                return looped_jacobian(logits_of, self.params, inputs.num_examples, rows)
        except Exception as exc:
            if vmap_error is not None:
                raise vmap_error from exc
            raise

    def activation_bytes(self, inputs: ModelInputs) -> int:
        r"""Bytes of the activations autograd saves in one example's forward pass.

        Probed once (then cached) on the example with the most real tokens when the block
        has a 2-D ``attention_mask``, else on the first, with every floating-point parameter
        and buffer differentiable; tensors saved more than once (views) count once, the
        parameters and inputs themselves not at all. It estimates the autograd intermediates
        of a gradient pass per example (see :mod:`captum_ntk.engine.budget`).
        """
        if self._activation_bytes is None:
            self._activation_bytes = self._saved_bytes(self.prepare(self.probe_example(inputs)))
        return self._activation_bytes

    @staticmethod
    def probe_index(inputs: ModelInputs) -> int:
        """Index of the example memory estimates probe: the one with the most real tokens when
        the block has a 2-D ``attention_mask``, else the first."""
        mask = inputs.kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            return int(mask.sum(dim=1).argmax())
        return 0

    @staticmethod
    def probe_example(inputs: ModelInputs) -> ModelInputs:
        """The example of :meth:`probe_index`, as a one-example block."""
        index = ModelFunction.probe_index(inputs)
        return inputs.slice(index, index + 1)

    @staticmethod
    def plan_examples(inputs: ModelInputs, count: int) -> ModelInputs:
        """The examples plans and size estimates are made on: the first ``count`` and the
        longest (:meth:`probe_index`) when it is not among them."""
        head = min(len(inputs), count)
        index = ModelFunction.probe_index(inputs)
        if index < head:
            return inputs.slice(0, head)
        chosen = torch.tensor(list(range(head)) + [index])
        return inputs.map(lambda t: t[chosen.to(t.device)])

    def _saved_bytes(self, inputs: ModelInputs) -> int:
        parameters = {n for n, _ in self.model.named_parameters()}
        leaves = {
            n: t.detach().requires_grad_(n in parameters and t.is_floating_point())
            for n, t in {**self.frozen, **self.params}.items()
        }
        existing = list(leaves.values()) + list(inputs.args) + list(inputs.kwargs.values())
        known = {t.untyped_storage().data_ptr() for t in existing}
        saved: dict[int, int] = {}

        def pack(t: Tensor) -> Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in known:
                saved[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.enable_grad(), self.context():
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = functional_call(
                    self.model, leaves, inputs.args, inputs.kwargs, tie_weights=True
                )
                del out
        return sum(saved.values())

    # ------------------------------------------------------------------ activations
    def activations(
        self, inputs: ModelInputs, layers: Sequence[str], which: str = "output", strict: bool = True
    ) -> list[Tensor]:
        r"""Inputs or outputs of the given modules for a block, without gradients.

        Args:
            inputs (ModelInputs): a block of B examples.
            layers (sequence of str): module names.
            which (str): "input" (first positional input of the module) or "output".
            strict (bool): raise if a layer is not called in the forward pass; otherwise
                    skip it (e.g. ``MultiheadAttention.out_proj``, whose weights are used
                    without calling the module).

        Returns:
            list[Tensor]: one tensor per layer called, dimension 0 of size B.
        """
        modules = dict(self.model.named_modules())
        captured: dict[str, Tensor] = {}
        handles = []
        layers = resolve_modules(self.model, layers)
        for name in layers:

            def hook(module, args, out, name=name):
                value = args[0] if which == "input" else out
                value = extract_logits(value) if not isinstance(value, Tensor) else value
                captured[name] = value

            handles.append(modules[name].register_forward_hook(hook))
        try:
            self.batch_logits(inputs)
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in layers if n not in captured]
        if missing and (strict or len(missing) == len(layers)):
            raise ValueError(
                f"The layers {missing} were not called in the forward pass; choose layers "
                "whose forward runs."
            )
        return [captured[n] for n in layers if n in captured]


def _as_2d(logits: Tensor, batch: int) -> Tensor:
    """Logits of B examples as (B, C); (B,) means one logit. Other shapes are refused."""
    if logits.dim() not in (1, 2) or logits.shape[0] != batch:
        raise ValueError(
            f"The model returned logits of shape {tuple(logits.shape)} for {batch} example(s); "
            "expected (B, C) or (B,) for one logit."
        )
    return logits[:, None] if logits.dim() == 1 else logits


class NonFiniteError(FloatingPointError, ValueError):
    """A gradient or feature holds NaN or inf."""


def check_finite(sq_norms: Tensor, start: int, what: str, name: str = "inputs") -> None:
    r"""Raises if any example's feature vector holds NaN/inf.

    A non-finite entry makes the example's squared norm non-finite, so checking the (B,)
    squared norms is enough (and cheap).
    """
    bad = ~torch.isfinite(sq_norms)
    if bool(bad.any()):
        idx = (torch.nonzero(bad).flatten() + start).tolist()
        raise NonFiniteError(
            f"Non-finite {what} (NaN or inf) for {name} example index(es) {idx[:10]}. Check those "
            "inputs and the model (e.g. log/sqrt of 0, overflow in float16)."
        )
