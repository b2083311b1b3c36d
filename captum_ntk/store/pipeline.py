r"""``kernel_matrix(..., store=DIR)``: features and kernel blocks through a disk store.

Layout of ``DIR``: ``rows/`` (feature store of ``inputs1``), ``cols/`` (of ``inputs2``, if
given), and the kernel (``kernel.npy``, ``kernel.json``, ``kernel_done/``). Every stage resumes
from what is on disk and is sharded over the ranks of an initialised process group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..engine.data.streaming import StreamingSource
from ..engine.features import FeatureMap
from .kernel_blocks import write_kernel
from .store import featurize

__all__ = ["stored_kernel_matrix"]


def stored_kernel_matrix(
    fmap: FeatureMap,
    inputs1: Any,
    inputs2: Any,
    directory: str | Path,
    *,
    block_size: int,
    options: dict[str, Any],
    compute_block: int | None = None,
    normalize: bool,
    show_progress: bool = False,
    output_device: torch.device | str = "cpu",
) -> Tensor:
    r"""The kernel between ``inputs1`` and ``inputs2`` (or ``inputs1`` with itself), computed
    through the store at ``directory``.

    Args:
        fmap (FeatureMap): the feature map (fixed-size features: projected kernels, ck,
                non-token embedding).
        inputs1: data in any form :class:`~captum_ntk.engine.data.streaming.StreamingSource` reads.
        inputs2: the same, or None for the symmetric kernel.
        directory (str or Path): the store.
        block_size (int): examples per store block (the layout).
        compute_block (int, optional): examples per feature-map call (memory-bounded).
        options (dict): ``kernel``, ``projection``, ``seed``, ``layers`` (metadata).
        normalize (bool): cosine-normalise.
        show_progress (bool): tqdm bars.
        output_device (torch.device or str): "cpu" returns a tensor sharing memory with a
                copy-on-write memmap of ``kernel.npy`` (pages read on demand); another device
                copies it there.

    Returns:
        Tensor: (N1, N2).
    """
    directory = Path(directory)
    stores = []
    for name, data in (("rows", inputs1), ("cols", inputs2)):
        if data is None:
            stores.append(None)
            continue
        source = StreamingSource(data, block_size, "inputs1" if name == "rows" else "inputs2")
        stores.append(
            featurize(
                fmap,
                source,
                directory / name,
                options,
                show_progress=show_progress,
                compute_block=compute_block,
            )
        )
    write_kernel(
        stores[0],
        stores[1],
        directory,
        normalize=normalize,
        device=fmap.function.device,
        show_progress=show_progress,
    )
    kernel = torch.from_numpy(np.load(directory / "kernel.npy", mmap_mode="c"))
    return kernel if torch.device(output_device).type == "cpu" else kernel.to(output_device)
