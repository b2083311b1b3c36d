r"""Content digests of blocks and examples of a dataset.

Each block gets a *digest* (:func:`block_digest`): a SHA-256 of its content in order. For every
tensor (positional arguments, keyword arguments in sorted order, labels) it covers the key,
dtype, per-example shape and every example's bytes; token tensors of text batches (integer
(B, T) keyword tensors next to an ``attention_mask``) are hashed per example up to that
example's unpadded length, so padding does not change a digest. :func:`data_fingerprint`
combines the block digests with the block size and N into the data-order fingerprint of a whole
pass: reordering, replacing or changing any example (or its label) changes it. Hashing reads
every byte once (about 1 GB/s on one core), far less than featurising.

:func:`example_digests` hashes the same content per example (8 bytes each), so that data read
again in blocks of another size can be checked against a first pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from .inputs import ModelInputs
from .tokens import is_per_token, token_mask

__all__ = ["block_digest", "data_fingerprint", "example_digests", "is_token"]


def is_token(inputs: ModelInputs, key: Any, t: Tensor) -> bool:
    """Whether ``t`` (under keyword ``key``) is per token of a text block (padded per example;
    see :func:`captum_ntk.engine.data.tokens.is_per_token`)."""
    return isinstance(key, str) and is_per_token(t, token_mask(inputs.kwargs))


def _example_bytes(t: Tensor) -> bytes:
    return t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()


def _token_lengths(inputs: ModelInputs) -> list[int] | None:
    """Every example's unpadded length in a text block (None without a 2-D attention_mask)."""
    mask = inputs.kwargs.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return None
    index = torch.arange(mask.shape[1]).expand_as(mask)
    return torch.where(mask.ne(0), index + 1, 0).amax(dim=1).tolist()


def _keyed(inputs: ModelInputs, labels: Tensor | None) -> Iterator[tuple[Any, Tensor, bool, str]]:
    """``(key, tensor, is_token, header)`` of every tensor of a block, in digest order."""
    lengths = _token_lengths(inputs)
    keyed = [(i, a) for i, a in enumerate(inputs.args)]
    keyed += [(k, inputs.kwargs[k]) for k in sorted(inputs.kwargs)]
    if labels is not None:
        keyed.append(("<labels>", labels))
    for key, t in keyed:
        token = lengths is not None and key != "<labels>" and is_token(inputs, key, t)
        shape = tuple(t.shape[2:]) if token else tuple(t.shape[1:])
        yield key, t, token, f"{key}|{t.dtype}|{shape}\x1e"


def block_digest(inputs: ModelInputs, labels: Tensor | None) -> str:
    r"""SHA-256 of a block's content (see the module docstring for what it covers).

    Args:
        inputs (ModelInputs): B examples.
        labels (Tensor, optional): (B,) labels.

    Returns:
        str: 64 hexadecimal characters.
    """
    digest = hashlib.sha256()
    lengths = _token_lengths(inputs)
    for _, t, token, header in _keyed(inputs, labels):
        digest.update(header.encode())
        if token:
            for row, length in zip(t, lengths):  # type: ignore[arg-type]
                digest.update(_example_bytes(row[:length]) + b"\x1f")
        else:
            digest.update(_example_bytes(t))
    return digest.hexdigest()


def example_digests(inputs: ModelInputs, labels: Tensor | None) -> Tensor:
    r"""An 8-byte BLAKE2b digest of every example of a block (inputs and label).

    It covers what :func:`block_digest` covers, example by example: the key, dtype and
    per-example shape of every tensor and the example's bytes (token tensors up to the
    example's unpadded length, so padding does not change it).

    Args:
        inputs (ModelInputs): B examples.
        labels (Tensor, optional): (B,) labels.

    Returns:
        Tensor: (B,) int64 digests.
    """
    count = inputs.num_examples
    hashes = [hashlib.blake2b(digest_size=8) for _ in range(count)]
    lengths = _token_lengths(inputs)
    for _, t, token, header in _keyed(inputs, labels):
        rows = t.detach().cpu().contiguous().reshape(count, -1)
        raw = rows.view(torch.uint8).numpy() if rows.numel() else None
        width = rows.element_size()
        for i, h in enumerate(hashes):
            h.update(header.encode())
            if raw is not None:
                end = raw.shape[1] if not token else lengths[i] * width  # type: ignore[index]
                h.update(raw[i, :end].tobytes())
    joined = b"".join(h.digest() for h in hashes)
    return torch.frombuffer(bytearray(joined), dtype=torch.int64)


def data_fingerprint(digests: Iterable[str], block_size: int, num_examples: int) -> str:
    r"""The data-order fingerprint of a pass from its block digests (in block order).

    Args:
        digests (iterable of str): :func:`block_digest` of every block, in order.
        block_size (int): examples per block.
        num_examples (int): N.

    Returns:
        str: 64 hexadecimal characters.
    """
    digest = hashlib.sha256(f"data|{block_size}|{num_examples}".encode())
    for d in digests:
        digest.update(d.encode())
    return digest.hexdigest()
