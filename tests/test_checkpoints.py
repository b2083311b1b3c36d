"""Every result of an attribution object belongs to one state (checkpoint) of its model.

The objects cache training features, the train kernel and the fitted kGLM. After the model
changes (an optimizer step, ``load_state_dict``, a write through ``p.data``, a BatchNorm
buffer update, ``model.double()``), the next call must give exactly what a fresh object on
the updated model gives, never the old numbers and never a mix, and warn once. Also: the
model fingerprint itself, and the refusal of ``captum.influence.TracInCP`` arguments.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import models
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import captum_ntk as cn
from captum_ntk.attribution.state import ModelChangedWarning
from captum_ntk.engine.fingerprint import model_fingerprint

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

N_TRAIN, N_TEST = 11, 5
GLM = {"target": "labels", "alpha": 1e-2}
CLASSES = [cn.TrNTKAttribution, cn.ProjPNTKAttribution, cn.ConjugateKernelAttribution]


def options(cls: type[cn.NTKAttribution]) -> dict[str, Any]:
    extra = {"projection_dim": 16, "seed": 3} if cls.kernel.startswith("proj_") else {}
    return {"batch_size": 4, **extra}


def results(attr: cn.NTKAttribution, test: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
    """Every public result of ``attr`` on ``test`` (fits the kGLM if it has none)."""
    top = attr.influence(test, k=3, proponents=False)
    out = {
        "influence": attr.influence(test),
        "top_indices": top.indices.double(),
        "top_scores": top.influence_scores,
        "self_influence": attr.self_influence(score="norm"),
        "train_kernel": attr.compute_train_kernel(),
    }
    if attr.surrogate is None:
        attr.fit_surrogate(**GLM)
    out["attribute"] = attr.attribute(test)
    out["by_attribution"] = attr.influence(test, rank_by="attribution")
    return out


def step(model: nn.Module, x: Tensor, y: Tensor) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


def load_other(model: nn.Module, x: Tensor, y: Tensor) -> None:
    model.load_state_dict(models.make_mlp(d_out=3, seed=7).state_dict())


def write_data(model: nn.Module, x: Tensor, y: Tensor) -> None:
    model.fc1.weight.data.mul_(1.5)  # bumps no version counter


def cast(model: nn.Module, x: Tensor, y: Tensor) -> None:
    model.double()


CHANGES: dict[str, Callable[[nn.Module, Tensor, Tensor], None]] = {
    "optimizer_step": step,
    "load_state_dict": load_other,
    "data_write": write_data,
    "double": cast,
}


def assert_same(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype, name
        scale = max(1.0, value.abs().max().item())
        err = (actual[name] - value).abs().max().item()
        assert err <= 1e-12 * scale, f"{name}: {err:.3e}"


def assert_differ(actual: dict[str, Tensor], old: dict[str, Tensor]) -> None:
    for name in ("influence", "train_kernel", "attribute", "by_attribution"):
        if actual[name].dtype == old[name].dtype:
            assert (actual[name] - old[name]).abs().max() > 1e-6, name


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])
def test_results_follow_the_model(cls: type[cn.NTKAttribution], change: str) -> None:
    dtype = torch.float32 if change == "double" else torch.float64
    model = models.make_mlp(d_out=3, dtype=dtype)
    x, y = models.mlp_inputs(N_TRAIN, seed=1, dtype=dtype), torch.arange(N_TRAIN) % 3
    test = (models.mlp_inputs(N_TEST, seed=21, dtype=dtype), torch.arange(N_TEST) % 3)
    data = TensorDataset(x, y)
    attr = cls(model, data, **options(cls))
    attr.fit_surrogate(**GLM)
    old = results(attr, test)

    CHANGES[change](model, x, y)
    with pytest.warns(ModelChangedWarning, match="fitted surrogate") as record:
        new = results(attr, test)
    assert len([w for w in record if w.category is ModelChangedWarning]) == 1

    fresh = cls(model, data, **options(cls))
    fresh.fit_surrogate(**GLM)
    assert_same(new, results(fresh, test))
    assert_differ(new, old)
    if change == "double":
        assert new["influence"].dtype == torch.float64 != old["influence"].dtype


def test_surrogate_is_refit_with_the_same_arguments() -> None:
    model = models.make_mlp(d_out=3)
    x, y = models.mlp_inputs(N_TRAIN, seed=1), torch.arange(N_TRAIN) % 3
    attr = cn.TrNTKAttribution(model, TensorDataset(x, y), batch_size=4)
    old = attr.fit_surrogate(target="labels", alpha=0.5)
    step(model, x, y)
    with pytest.warns(ModelChangedWarning, match="refit"):
        refit = attr.surrogate
    assert refit is not None and refit is not old
    expected = cn.TrNTKAttribution(model, TensorDataset(x, y), batch_size=4)
    expected_glm = expected.fit_surrogate(target="labels", alpha=0.5)
    assert torch.allclose(refit.coef_, expected_glm.coef_, rtol=0, atol=1e-12)


def test_buffer_update_is_detected() -> None:
    model = models.make_cnn()  # BatchNorm with running statistics, eval mode
    x = models.cnn_inputs(6)
    attr = cn.TrNTKAttribution(model, x, batch_size=4)
    before = attr.influence(x[:2])
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    bn.running_mean.add_(0.3)
    with pytest.warns(ModelChangedWarning):
        after = attr.influence(x[:2])
    expected = cn.kernel_matrix(model, x[:2], x)
    assert torch.allclose(after, expected, rtol=0, atol=1e-12)
    assert (after - before).abs().max() > 1e-6


def test_no_warning_without_a_change_or_without_caches() -> None:
    model = models.make_mlp(d_out=3)
    x = models.mlp_inputs(N_TRAIN, seed=1)
    attr = cn.TrNTKAttribution(model, x, batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelChangedWarning)
        attr.influence(x[:2])
        attr.self_influence()
        with torch.no_grad():
            model.fc1.weight.mul_(2)
        attr2 = cn.TrNTKAttribution(model, x, batch_size=4)
        with torch.no_grad():
            model.fc1.weight.mul_(0.5)
        # nothing cached yet in attr2: rebuilt silently, results of the current model
        assert torch.allclose(attr2.influence(x[:2]), cn.kernel_matrix(model, x[:2], x))


# ------------------------------------------------------------------------------------------------
# the fingerprint
# ------------------------------------------------------------------------------------------------
def test_fingerprint_levels() -> None:
    model = models.make_mlp(d_out=3)
    cheap, summed, content = (
        model_fingerprint(model),
        model_fingerprint(model, checksum=True),
        model_fingerprint(model, content=True),
    )
    assert model_fingerprint(model) == cheap and model_fingerprint(model, checksum=True) == summed
    model.fc1.weight.data[0, 0] += 1e-9  # through .data: the version counter does not move
    assert model_fingerprint(model) == cheap
    assert model_fingerprint(model, checksum=True) != summed
    assert model_fingerprint(model, content=True) != content
    # permuted values: same sum and sum of squares, other weighted sum
    model = models.make_mlp(d_out=3)
    summed = model_fingerprint(model, checksum=True)
    model.fc1.weight.data.copy_(model.fc1.weight.data.flip(0))
    assert model_fingerprint(model, checksum=True) != summed


def test_content_fingerprint_is_independent_of_storage() -> None:
    a, b = models.make_mlp(d_out=3), models.make_mlp(d_out=3)
    assert model_fingerprint(a) != model_fingerprint(b)  # other tensors
    assert model_fingerprint(a, content=True) == model_fingerprint(b, content=True)
    b.fc2.bias.requires_grad_(False)  # changes the default parameter selection
    assert model_fingerprint(a, content=True) != model_fingerprint(b, content=True)
    assert model_fingerprint(a, content=True) != model_fingerprint(a.float(), content=True)


# ------------------------------------------------------------------------------------------------
# TracInCP arguments
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argument, value, reason",
    [
        ("checkpoints", ["ckpt.pt"], "one attribution object per checkpoint"),
        ("checkpoints_load_func", print, "load the checkpoint"),
        ("loss_fn", nn.CrossEntropyLoss(), "not of a loss"),
        ("test_loss_fn", nn.CrossEntropyLoss(), "not of a loss"),
        ("sample_wise_grads_per_batch", True, "vmap"),
        ("final_fc_layer", "fc2", "layers="),
        ("nearest_neighbors", None, "exact streaming"),
    ],
)
def test_tracin_arguments_are_refused_by_name(argument: str, value: Any, reason: str) -> None:
    model = models.make_mlp(d_out=3)
    data = TensorDataset(models.mlp_inputs(N_TRAIN), torch.arange(N_TRAIN) % 3)
    with pytest.raises(TypeError, match=f"(?s)'{argument}'.*{reason}"):
        cn.TrNTKAttribution(model, data, **{argument: value})


def test_checkpoints_as_third_positional_argument() -> None:
    model = models.make_mlp(d_out=3)
    data = TensorDataset(models.mlp_inputs(N_TRAIN), torch.arange(N_TRAIN) % 3)
    with pytest.raises(TypeError, match="checkpoints.*load the checkpoint"):
        cn.TrNTKAttribution(model, data, ["a.pt", "b.pt"])


def test_unknown_and_misplaced_options_list_valid_ones() -> None:
    model = models.make_mlp(d_out=3)
    data = TensorDataset(models.mlp_inputs(N_TRAIN), torch.arange(N_TRAIN) % 3)
    with pytest.raises(TypeError, match="(?s)unknown argument 'batchsize'.*Valid.*batch_size"):
        cn.TrNTKAttribution(model, data, batchsize=4)
    with pytest.raises(TypeError, match="'projection_dim' applies to projected kernels only"):
        cn.TrNTKAttribution(model, data, projection_dim=8)
    with pytest.raises(TypeError, match="(?s)Valid.*projection_dim"):
        cn.ProjTrNTKAttribution(model, data, projection_dim=8, lossfn=None)
