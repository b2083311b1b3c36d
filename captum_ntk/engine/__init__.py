r"""The engine: from user inputs and a model to per-example features.

Data flows one way through its modules: ``inputs`` / ``batches`` (what the user passes) ->
``parameters`` (which parameters count) -> ``model`` (the model as a pure function, per-example
Jacobians and gradients) -> ``projection`` (seeded random projections, with a fused CUDA kernel in
``triton_projection``) -> ``features`` (one feature map per kernel). ``adapters`` lets model families
with special input handling (``captum_ntk.integrations``) plug in without the engine importing them.
"""

from .parameters import num_parameters, select_parameters
from .projection import projection_matrix

__all__ = ["num_parameters", "projection_matrix", "select_parameters"]
