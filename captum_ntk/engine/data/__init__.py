r"""What users pass, made uniform: batches, datasets and streams of examples.

Modules: :mod:`.inputs` (:class:`ModelInputs`: positional and keyword tensors of a block),
:mod:`.batches` (Captum's batch convention: inputs then labels), :mod:`.streaming` (fixed blocks
of a dataset read lazily, padding trimmed per block) and :mod:`.digests` (content digests of
examples, so stores and caches notice changed data).
"""

from .inputs import ModelInputs
from .streaming import StreamedInputs, StreamingSource

__all__ = ["ModelInputs", "StreamedInputs", "StreamingSource"]
