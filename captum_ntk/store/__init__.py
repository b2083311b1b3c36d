r"""Disk stores of features and kernel blocks: resumable, sharded over ``torch.distributed`` ranks.

::

    from captum_ntk.store import FeatureStore, featurize, streaming_topk, write_kernel

See :mod:`captum_ntk.store.format` for the layout and :mod:`captum_ntk.store.distributed` for
multi-process runs.
"""

from .distributed import all_gather_rows, barrier, is_distributed, shard, world
from .format import StoreMismatchError
from .kernel_blocks import kernel_blocks, load_kernel, streaming_topk, write_kernel
from .pipeline import stored_kernel_matrix
from .store import FeatureStore, featurize, flat_features, store_metadata

__all__ = [
    "FeatureStore",
    "StoreMismatchError",
    "all_gather_rows",
    "barrier",
    "featurize",
    "flat_features",
    "is_distributed",
    "kernel_blocks",
    "load_kernel",
    "shard",
    "store_metadata",
    "stored_kernel_matrix",
    "streaming_topk",
    "world",
    "write_kernel",
]
