"""Every combination of kernel, projection, engine, store and attribution class (issue 17, item 4).

On a small MLP (and a padded token model for the activation kernels), each combination either
gives the kernel of ``tests/reference.py`` (float64, 1e-10 relative; the Kronecker and sparse
projections, which the reference does not implement, are checked for agreement between
``kernel_matrix``, ``influence`` with and without a store and ``compute_intermediate_quantities``),
or, for exact gradient kernels with ``store=``, a refusal that names what to use instead. The
feature-block protocol (``num_examples``, ``nbytes``, ``take``, ``flatten``, mixed forms in
``inner``) is checked for every form.
"""

from __future__ import annotations

import itertools
import warnings

import models as M
import pytest
import reference as ref
import torch
from torch.utils.data import TensorDataset

import captum_ntk as cn
from captum_ntk.engine.data.inputs import ModelInputs
from captum_ntk.engine.feature_blocks import nbytes, num_examples, take
from captum_ntk.kernels import build_feature_map
from captum_ntk.kernels.registry import KERNELS

TOL = 1e-10
ENGINES = ["auto", "jacobian", "gram"]
PROJECTIONS = ["rademacher", "gaussian", "sjlt", "kronecker"]


def _combinations() -> list[tuple[str, str | None, str, bool]]:
    out = []
    for kernel, spec in KERNELS.items():
        projections = PROJECTIONS if spec.projected else [None]
        for projection, engine, store in itertools.product(projections, ENGINES, [False, True]):
            if engine == "gram" and not (spec.exact_gradients or spec.projected):
                continue  # refused with its own message (tests/test_kernel_errors.py)
            out.append((kernel, projection, engine, store))
    return out


def assert_rel(actual: torch.Tensor, expected: torch.Tensor, tol: float = TOL) -> None:
    err = float((actual - expected).abs().max() / expected.abs().max())
    assert err < tol, f"relative error {err:.3g}"


@pytest.fixture(scope="module")
def data():
    model = M.make_mlp()
    x, xt = M.mlp_inputs(7, seed=1), M.mlp_inputs(3, seed=9)
    y = torch.randint(0, 5, (7,), generator=torch.Generator().manual_seed(0))
    return model, x, xt, TensorDataset(x, y)


@pytest.mark.parametrize(("kernel", "projection", "engine", "store"), _combinations())
def test_combination(data, tmp_path, kernel, projection, engine, store):
    model, x, xt, dataset = data
    spec = KERNELS[kernel]
    options = {"engine": engine}
    if spec.projected:
        options.update(projection=projection, projection_dim=16, seed=1)
    k = cn.kernel_matrix(model, xt, x, kernel=kernel, batch_size=3, **options)
    if projection in (None, "rademacher", "gaussian"):
        reference_options = {"projection": projection, "projection_dim": 16, "seed": 1}
        expected = ref.ref_kernel(
            model, xt, x, kernel=kernel, **(reference_options if projection else {})
        )
        assert_rel(k, expected)
    if spec.attribution is None:
        return
    cls = getattr(cn, spec.attribution)
    directory = tmp_path / "store" if store else None
    if store and spec.exact_gradients:
        with pytest.raises(ValueError, match="use a projected kernel"):
            cls(model, dataset, batch_size=3, store=directory, **options).influence(xt)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attribution = cls(model, dataset, batch_size=3, store=directory, **options)
        assert_rel(attribution.influence(xt), k)
        if store:  # reopened: every training block read from disk
            again = cls(model, dataset, batch_size=2, store=directory, **options)
            assert_rel(again.influence(xt), k)
        if spec.projected:
            test_features = attribution.compute_intermediate_quantities(xt)
            train_features = attribution.compute_intermediate_quantities(x)
            assert_rel(test_features @ train_features.T, k)
        attribution.fit_surrogate(alpha=1e-2)
        scores = attribution.attribute(xt)
    assert scores.shape == (3, 5, 7)
    assert bool(torch.isfinite(scores).all())


# ------------------------------------------------------------------------------------------------
# the feature-block protocol, for every form
# ------------------------------------------------------------------------------------------------
FORMS = {
    "tensor (dense projection)": dict(kernel="proj_trntk", projection_dim=16),
    "ParamBlocks (Jacobian)": dict(kernel="trntk0", engine="jacobian"),
    "ParamBlocks (summed gradient)": dict(kernel="pntk0", engine="jacobian"),
    "ParamBlocks (activations)": dict(kernel="embedding"),
    "GramBlocks": dict(kernel="entk", engine="gram"),
    "KroneckerBlocks": dict(kernel="proj_trntk", projection="kronecker", projection_dim=16),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_feature_block_protocol(form):
    if form.startswith("GramBlocks") or form.startswith("Kronecker"):
        model, x = M.make_transformer(), M.transformer_inputs(5)
    else:
        model, x = M.make_mlp(), M.mlp_inputs(5)
    fmap = build_feature_map(model, **FORMS[form])
    features = fmap(ModelInputs.from_user(x))
    assert type(features).__name__ == form.split(" ")[0].replace("tensor", "Tensor")
    assert num_examples(features) == 5
    assert nbytes(features) > 0
    part = take(features, 1, 4)
    assert num_examples(part) == 3 and type(part) is type(features)
    whole = fmap.inner(features, features)
    assert_rel(fmap.inner(part, features), whole[1:4])
    assert_rel(fmap.sq_norms(part), fmap.sq_norms(features)[1:4])
    if form == "GramBlocks":
        with pytest.raises(ValueError, match="projected kernel"):
            fmap.flatten(features)
        return
    flat = fmap.flatten(features)
    # a flat (stored) block meets a structured one in either order
    assert_rel(fmap.inner(fmap.unflatten(flat), features), whole)
    assert_rel(fmap.inner(features, fmap.unflatten(flat)), whole)
