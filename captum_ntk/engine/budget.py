r"""How ``memory_limit`` is shared, and the chunk sizes that follow from it.

A kernel computation with budget M (bytes) holds, beyond the model, the inputs and the returned
kernel:

| share | what |
|---|---|
| M / 4 | features of the row group of blocks being processed |
| M / 4 | column features kept across row groups (only if all fit), else one column block |
| M / 4 | one gradient pass: a chunk of examples x classes of the Jacobian and its autograd |
|       | intermediates (or, for activation kernels, one block's forward pass) |
| M / 8 | the cached K x P projection matrix (cached only if it fits) |
| M / 16 | projection scratch (one generated column block of the matrix) |
| M / 16 | one kernel block (b1 x b2, or b1 x b2 x C x C for entk) |

Autograd intermediates are estimated from the activations autograd saves in one probe example's
forward pass (:meth:`captum_ntk.engine.model.ModelFunction.activation_bytes`, A bytes): a pass over
``e`` examples and ``c`` classes is charged ``e * (A + c * (A + P * itemsize))`` bytes (the saved
forward activations, and per class the backward pass's own intermediates and one gradient row).
That estimate makes the bound approximate, not exact.
"""

from __future__ import annotations

FEATURE_SHARE = 4  # row group <= M / 4, kept column features <= M / 4
WORK_SHARE = 4  # one gradient (or forward) pass <= M / 4
CACHE_SHARE = 8  # cached projection matrix <= M / 8
SCRATCH_SHARE = 16  # projection scratch <= M / 16
BLOCK_SHARE = 16  # one kernel block <= M / 16


class MemoryBudgetError(ValueError):
    """``memory_limit`` is too small for even one example of the computation."""


def pass_bytes(examples: int, classes: int, row_bytes: int, activation_bytes: int) -> int:
    r"""Estimated bytes of one gradient pass.

    Args:
        examples (int): examples in the pass.
        classes (int): gradient rows per example (logits in the class chunk).
        row_bytes (int): bytes of one gradient row (P x itemsize).
        activation_bytes (int): A, the probe example's activation bytes.

    Returns:
        int: ``examples * (A + classes * (A + row_bytes))``.
    """
    return examples * (activation_bytes + classes * (activation_bytes + row_bytes))


def pass_sizes(
    batch: int, classes: int, row_bytes: int, activation_bytes: int, memory_limit: int
) -> tuple[int, int]:
    r"""Examples and classes per gradient pass within ``memory_limit / WORK_SHARE``.

    All classes at once are preferred (one forward pass per example), then as many examples
    as fit; if one example with all classes does not fit, classes are chunked.

    Args:
        batch (int): examples in the block.
        classes (int): gradient rows per example (C, or 1 for summed gradients).
        row_bytes (int): bytes of one gradient row.
        activation_bytes (int): the probe example's activation bytes.
        memory_limit (int): the budget M.

    Returns:
        (examples, classes) per pass, each at least 1.
    """
    work = memory_limit // WORK_SHARE
    whole = pass_bytes(1, classes, row_bytes, activation_bytes)
    if whole <= work:
        return max(1, min(batch, work // whole)), classes
    chunk = (work - activation_bytes) // (activation_bytes + row_bytes)
    return 1, int(max(1, min(classes, chunk)))


def chunks(total: int, size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` cutting ``range(total)`` into pieces of ``size``."""
    return [(s, min(s + size, total)) for s in range(0, total, size)]


#: Copies of one logit combination's output gradients a batched backward pass holds (the
#: cotangents, the output gradients captured and their reshaped per-logit view).
DELTA_COPIES = 3


def combinations_per_pass(output_bytes: int, count: int, memory_limit: int) -> int:
    r"""Logit combinations per batched backward pass of the Gram engine and the Kronecker
    projection, so one pass's output gradients fit the work share (M / ``WORK_SHARE``).

    Args:
        output_bytes (int): bytes of the captured layer outputs of a block (one combination's
                output gradients have the same size).
        count (int): combinations wanted (C, or 1 for summed logits).
        memory_limit (int): the budget M.

    Returns:
        int: between 1 and ``count``.
    """
    per_combination = DELTA_COPIES * output_bytes
    return int(max(1, min(count, memory_limit // WORK_SHARE // max(1, per_combination))))
