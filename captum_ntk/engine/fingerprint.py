r"""Fingerprints of a model's state: which checkpoint a cached result belongs to.

A kernel is a function of the model's parameters and buffers, so anything cached from it
(training features, the train kernel, a fitted kGLM, a disk store) is valid for one state
only. :func:`model_fingerprint` summarises that state as a short string::

    fp = model_fingerprint(model)                     # metadata only: O(#tensors), no data read
    fp = model_fingerprint(model, checksum=True)      # + on-device float64 checksums: O(P)
    fp = model_fingerprint(model, content=True)       # exact bytes, stable across processes

Three levels:

- metadata (default): for every parameter and buffer its name, shape, dtype, device,
  ``requires_grad``, ``data_ptr()`` and autograd version counter (``_version``). Any
  in-place update through the tensor itself (``optimizer.step()``, ``load_state_dict``,
  ``p.mul_()`` under ``no_grad``), a cast or move (``model.double()``, ``model.to(...)``),
  a replaced module or a newly frozen parameter changes it. Writes through ``p.data``
  (``p.data.mul_(2)``) do not bump the version counter and are missed: use ``checksum``.
  Valid within one process only.
- ``checksum=True``: adds, per tensor, float64 sums of the values, of their squares and of
  the values weighted by fixed pseudo-random weights, computed on the tensor's device in
  chunks (one synchronisation for the whole model). Catches writes through ``.data`` too.
  Costs one read of the parameters, less than one example's gradient.
- ``content=True``: a SHA-256 of every tensor's bytes plus names, shapes, dtypes and
  ``requires_grad``; no pointers, versions or devices, so equal values give equal
  fingerprints in another process or on another device (what a disk store needs). Copies
  every tensor to the CPU once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

__all__ = ["model_fingerprint", "model_tensors"]

#: Elements per chunk of the checksum (bounds its temporary memory to ~8 MiB per chunk).
_CHUNK = 1 << 20
_weights: dict[torch.device, Tensor] = {}


def model_tensors(model: nn.Module) -> Iterator[tuple[str, str, Tensor]]:
    """``(kind, name, tensor)`` for every parameter then every buffer of ``model`` (tied
    tensors once, under their first name)."""
    for name, p in model.named_parameters():
        yield "param", name, p
    for name, b in model.named_buffers():
        yield "buffer", name, b


def _chunk_weights(device: torch.device) -> Tensor:
    """Fixed pseudo-random float64 weights in [1, 2) for one chunk, cached per device."""
    if device not in _weights:
        gen = torch.Generator().manual_seed(0x5EED)
        w = 1.0 + torch.rand(_CHUNK, generator=gen, dtype=torch.float64)
        _weights[device] = w.to(device)
    return _weights[device]


def _checksum(t: Tensor) -> Tensor:
    """(3,) float64 on ``t``'s device: sum, sum of squares, weighted sum (chunk index too)."""
    flat = t.detach().reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    out = torch.zeros(3, dtype=torch.float64, device=flat.device)
    weights = _chunk_weights(flat.device)
    for i, start in enumerate(range(0, flat.numel(), _CHUNK)):
        chunk = flat[start : start + _CHUNK].to(torch.float64)
        out[0] += chunk.sum()
        out[1] += torch.linalg.vecdot(chunk, chunk)
        out[2] += (i + 1) * torch.linalg.vecdot(chunk, weights[: chunk.numel()])
    return out


def _content_digest(t: Tensor) -> str:
    """SHA-256 of a tensor's bytes (row-major, on the CPU)."""
    flat = t.detach().reshape(-1)
    digest = hashlib.sha256()
    for start in range(0, flat.numel(), _CHUNK):
        chunk = flat[start : start + _CHUNK].cpu().contiguous()
        digest.update(chunk.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(model: nn.Module, content: bool = False, *, checksum: bool = False) -> str:
    r"""A string that changes when the model's parameters or buffers change.

    Args:
        model (nn.Module): the model.
        content (bool): fingerprint the exact values (SHA-256 of every tensor's bytes) with
                names, shapes, dtypes and ``requires_grad``, and nothing process-local
                (pointers, version counters, devices): equal in any process for equal
                values. Default: False, the cheap process-local metadata fingerprint.
        checksum (bool): with ``content=False``, add on-device float64 checksums of the
                values so that writes through ``p.data`` are detected as well (see the
                module docstring). Ignored with ``content=True``. Default: False.

    Returns:
        str: a 64-character hexadecimal SHA-256 digest.

    Examples::

        >>> before = model_fingerprint(model, checksum=True)
        >>> optimizer.step()
        >>> model_fingerprint(model, checksum=True) != before
        True
    """
    digest = hashlib.sha256(b"content" if content else b"metadata")
    sums: dict[torch.device, list[Tensor]] = {}
    for kind, name, t in model_tensors(model):
        fields = [kind, name, str(tuple(t.shape)), str(t.dtype), str(t.requires_grad)]
        if content:
            fields.append(_content_digest(t))
        else:
            fields += [str(t.device), str(t.data_ptr()), str(t._version)]
            if checksum and not t.is_meta:
                sums.setdefault(t.device, []).append(_checksum(t))
        digest.update("\x1f".join(fields).encode() + b"\x1e")
    for device in sorted(sums, key=str):  # one synchronisation per device
        digest.update(str(device).encode())
        digest.update(torch.stack(sums[device]).cpu().numpy().tobytes())
    return digest.hexdigest()
