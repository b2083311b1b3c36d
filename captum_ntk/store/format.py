r"""On-disk layout and metadata of a feature store.

A feature store is a directory::

    metadata.json        # what the features are (see FEATURE_FIELDS), written atomically
    features.npy         # (N, *feature_shape) numpy .npy file, written through a memmap
    sq_norms.npy         # (N,) squared feature norms (the unnormalised kernel's diagonal)
    done/block_000017.json   # one marker per completed block: its data digest

A block is complete exactly when its marker exists: its rows are written and flushed to the
``.npy`` files before the marker is written (atomically), so a run killed at any point resumes
by recomputing the blocks without a marker. A kernel store (test x train or train x train kernel
blocks) has the same shape: ``kernel.json``, ``kernel.npy`` and ``kernel_done/``.

The metadata records everything the features depend on; opening a store with options that
differ is refused with a message naming every mismatching field (:func:`mismatches`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "FEATURE_FIELDS",
    "FORMAT",
    "StoreMismatchError",
    "check_metadata",
    "marker_path",
    "mismatches",
]

#: Format tag written into every metadata file.
FORMAT = "captum_ntk.store/1"

#: Metadata fields that must match for a feature store to be reused.
FEATURE_FIELDS = (
    "format",
    "library_version",
    "kernel",
    "projection",
    "projection_dim",
    "seed",
    "precision",
    "dtype",
    "layers",
    "num_params",
    "model_fingerprint",
    "num_examples",
)


class StoreMismatchError(ValueError):
    """A store on disk was written for other options, another model state or other data."""


def mismatches(stored: dict[str, Any], requested: dict[str, Any], fields: tuple) -> list[str]:
    r"""``"field: stored X, requested Y"`` for every field whose values differ.

    Args:
        stored (dict): metadata read from disk.
        requested (dict): metadata of the current model and options.
        fields (tuple of str): the fields compared.

    Returns:
        list of str: one entry per mismatching field (empty if they all match).
    """
    out = []
    for field in fields:
        a, b = stored.get(field), requested.get(field)
        if a != b:
            out.append(f"{field}: stored {_short(a)}, requested {_short(b)}")
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_metadata(
    directory: Path, stored: dict[str, Any], requested: dict[str, Any], fields: tuple
) -> None:
    r"""Raises :class:`StoreMismatchError` naming each field where ``stored`` and ``requested``
    differ.

    Args:
        directory (Path): the store (for the message).
        stored (dict): metadata on disk.
        requested (dict): metadata of the current call.
        fields (tuple of str): fields that must match.
    """
    wrong = mismatches(stored, requested, fields)
    if wrong:
        raise StoreMismatchError(
            f"The store {str(directory)!r} was written for a different model, options or data; "
            f"mismatching fields: {'; '.join(wrong)}. Pass another directory, or delete this "
            "one to recompute."
        )


def marker_path(directory: Path, folder: str, name: str) -> Path:
    """Path of a block's completion marker."""
    return directory / folder / f"{name}.json"
