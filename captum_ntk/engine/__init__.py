r"""The engine: from user inputs and a model to per-example features.

Data flows one way through it: ``data`` (what the user passes: inputs, batches, streams,
digests) -> ``parameters`` (which parameters count) -> ``model`` (the model as a pure function;
per-example Jacobians by vmap, or by ``autograd_loop`` for modules vmap cannot differentiate) ->
``gradient_computers`` (the registry behind ``engine=``; ``gram`` holds the per-layer Gram
engine and its capture) -> ``projection`` (seeded random projections and their registry, fused
CUDA kernels) -> ``features`` / ``kronecker`` / ``activation_layers`` (one feature map per
kernel) over the forms of ``feature_blocks``. ``adapters`` lets model families with special
input handling (``captum_ntk.integrations``) plug in without the engine importing them.
"""

from .parameters import num_parameters, select_parameters
from .projection.dense import projection_matrix

__all__ = ["num_parameters", "projection_matrix", "select_parameters"]
