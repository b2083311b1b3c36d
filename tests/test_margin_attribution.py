"""MarginNTKAttribution against a naive per-example autograd loop in float64."""

from __future__ import annotations

import copy

import pytest
import torch
from models import (
    cnn_inputs,
    make_cnn,
    make_mlp,
    make_single_logit,
    make_transformer,
    make_wide_mlp,
    mlp_inputs,
    transformer_inputs,
)
from scipy import stats
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import captum_ntk as cn
from captum_ntk.surrogate.scores import margin_gradient_weights as margin_weights


def naive_margin_gradients(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(n, P) gradients of the correct-class margin, one autograd.grad per example; (n,) 1 - p."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows, residual = [], []
    for i in range(x.shape[0]):
        logits = model(x[i : i + 1]).reshape(-1)
        if logits.numel() == 1:
            sign = 1.0 if int(y[i]) == 1 else -1.0
            margin = sign * logits[0]
            p = torch.sigmoid(margin)
        else:
            others = torch.cat([logits[: int(y[i])], logits[int(y[i]) + 1 :]])
            margin = logits[int(y[i])] - torch.logsumexp(others, dim=0)
            p = torch.softmax(logits, dim=0)[int(y[i])]
        grads = torch.autograd.grad(margin, params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
        residual.append(1 - p.detach())
    return torch.stack(rows).double(), torch.stack(residual).double()


def naive_scores(models, x, y, xt, yt, ridge=1.0, residual_weighting=True) -> Tensor:
    total, residual = 0.0, 0.0
    for model in models:
        phi, r = naive_margin_gradients(model, x, y)
        phi_t, _ = naive_margin_gradients(model, xt, yt)
        damping = ridge * phi.pow(2).sum(1).mean()
        kernel = phi @ phi.T + damping * torch.eye(len(x), dtype=torch.float64)
        total = total + torch.linalg.solve(kernel, phi @ phi_t.T).T
        residual = residual + r
    scores = total / len(models)
    return scores * (residual / len(models))[None] if residual_weighting else scores


CASES = {
    "mlp": (lambda s: make_mlp(seed=s), lambda n, s: mlp_inputs(n, seed=s), 5),
    "cnn-batchnorm": (lambda s: make_cnn(seed=s), lambda n, s: cnn_inputs(n, seed=s), 4),
    "one-logit": (lambda s: make_single_logit(seed=s), lambda n, s: mlp_inputs(n, seed=s), 2),
    "transformer": (
        lambda s: make_transformer(seed=s),
        lambda n, s: transformer_inputs(n, seed=s),
        3,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_margin_scores_equal_the_naive_loop(case):
    make, inputs, classes = CASES[case]
    model = make(0)
    x, xt = inputs(13, 1), inputs(5, 2)
    g = torch.Generator().manual_seed(3)
    y, yt = (
        torch.randint(0, classes, (13,), generator=g),
        torch.randint(0, classes, (5,), generator=g),
    )
    attr = cn.MarginNTKAttribution(model, TensorDataset(x, y), batch_size=4)
    got = attr.influence((xt, yt))
    expect = naive_scores([model], x, y, xt, yt)
    torch.testing.assert_close(got, expect, rtol=1e-10, atol=1e-12 * expect.abs().max())
    # primal (D <= N) and dual (D > N) are the same matrix: 13 examples < P here; more rows
    # than parameters in the primal case below


def test_primal_equals_dual_and_batch_sizes_agree():
    model = make_mlp(seed=1, d_in=3, d_hidden=2, d_out=3)  # P = 17 parameters
    x, xt = mlp_inputs(40, seed=4, d_in=3), mlp_inputs(6, seed=5, d_in=3)
    y, yt = torch.arange(40) % 3, torch.arange(6) % 3
    primal = cn.MarginNTKAttribution(model, TensorDataset(x, y), batch_size=7).influence((xt, yt))
    torch.testing.assert_close(primal, naive_scores([model], x, y, xt, yt), rtol=1e-10, atol=1e-13)
    dual = cn.MarginNTKAttribution(model, TensorDataset(x[:12], y[:12]), batch_size=5)
    torch.testing.assert_close(
        dual.influence((xt, yt)),
        naive_scores([model], x[:12], y[:12], xt, yt),
        rtol=1e-10,
        atol=1e-13,
    )
    other = cn.MarginNTKAttribution(model, TensorDataset(x, y), batch_size=40).influence((xt, yt))
    torch.testing.assert_close(primal, other, rtol=1e-12, atol=1e-14)


def test_ensemble_averages_kernel_ridge_weights_and_residuals_like_trak():
    models = [make_mlp(seed=s) for s in (0, 1, 2)]
    x, xt = mlp_inputs(11, seed=1), mlp_inputs(4, seed=2)
    y, yt = torch.arange(11) % 5, torch.tensor([0, 4, 2, 1])
    attr = cn.MarginNTKAttribution(models, TensorDataset(x, y), ridge=0.3)
    torch.testing.assert_close(
        attr.influence((xt, yt)),
        naive_scores(models, x, y, xt, yt, ridge=0.3),
        rtol=1e-10,
        atol=1e-13,
    )
    plain = cn.MarginNTKAttribution(models, TensorDataset(x, y), residual_weighting=False)
    torch.testing.assert_close(
        plain.influence((xt, yt)),
        naive_scores(models, x, y, xt, yt, residual_weighting=False),
        rtol=1e-10,
        atol=1e-13,
    )


def test_projected_margin_features_are_seeded_and_close_to_exact():
    model = make_wide_mlp(seed=0)  # P = 8708
    x, xt = mlp_inputs(30, seed=1, d_in=20), mlp_inputs(5, seed=2, d_in=20)
    y, yt = torch.arange(30) % 8, torch.arange(5)
    exact = cn.MarginNTKAttribution(model, TensorDataset(x, y)).influence((xt, yt))
    a = cn.MarginNTKAttribution(model, TensorDataset(x, y), projection_dim=4096, batch_size=7)
    b = cn.MarginNTKAttribution(model, TensorDataset(x, y), projection_dim=4096, batch_size=30)
    torch.testing.assert_close(a.influence((xt, yt)), b.influence((xt, yt)), rtol=1e-9, atol=1e-12)
    rel = (a.influence((xt, yt)) - exact).norm() / exact.norm()
    assert rel < 0.35, rel  # a JL estimate of the same scores (K = 4096, P = 8708)
    corr = torch.corrcoef(torch.stack([a.influence((xt, yt)).flatten(), exact.flatten()]))[0, 1]
    assert corr > 0.95, corr
    c = cn.MarginNTKAttribution(model, TensorDataset(x, y), projection_dim=4096, seed=1)
    assert not torch.allclose(c.influence((xt, yt)), a.influence((xt, yt)))


def test_margin_weights_match_autograd_of_the_margin():
    logits = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0, 2])
    q, residual = margin_weights(logits.detach(), y)
    for i in range(6):
        others = torch.cat([logits[i, : y[i]], logits[i, y[i] + 1 :]])
        margin = logits[i, y[i]] - torch.logsumexp(others, 0)
        (grad,) = torch.autograd.grad(margin, logits)
        torch.testing.assert_close(q[i], grad[i], rtol=0, atol=1e-15)
    p = torch.softmax(logits.detach(), 1)[torch.arange(6), y]
    torch.testing.assert_close(residual, 1 - p)


def test_top_k_targets_and_errors():
    model = make_mlp(seed=0)
    x, xt = mlp_inputs(12, seed=1), mlp_inputs(3, seed=2)
    y = torch.arange(12) % 5
    attr = cn.MarginNTKAttribution(model, TensorDataset(x, y))
    full = attr.influence((xt, torch.tensor([1, 1, 1])))
    torch.testing.assert_close(attr.influence(xt, target=1), full)
    top = attr.influence((xt, torch.tensor([1, 1, 1])), k=3)
    torch.testing.assert_close(top.influence_scores, full.topk(3, dim=1).values)
    low = attr.influence((xt, torch.tensor([1, 1, 1])), k=2, proponents=False)
    torch.testing.assert_close(low.influence_scores, full.topk(2, dim=1, largest=False).values)
    with pytest.raises(ValueError, match="class of each test example"):
        attr.influence(xt)
    with pytest.raises(ValueError, match="carry labels"):
        cn.MarginNTKAttribution(model, x)
    with pytest.raises(ValueError, match="ridge"):
        cn.MarginNTKAttribution(model, TensorDataset(x, y), ridge=0)
    with pytest.raises(ValueError, match="projection_dim="):
        cn.MarginNTKAttribution(model, TensorDataset(x, y), memory_limit=1000)
    with pytest.raises(TypeError, match="nn.Module"):
        cn.MarginNTKAttribution([], TensorDataset(x, y))


class _HeadFirst(nn.Module):
    """Modules registered head first, 100 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(12, 100)
        self.body = nn.Sequential(nn.Linear(6, 12), nn.GELU())

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def test_many_classes_float32_one_example_batches_and_registration_order():
    torch.manual_seed(0)
    model = _HeadFirst().eval()
    x, xt = mlp_inputs(20, seed=1).float(), mlp_inputs(3, seed=2).float()
    y, yt = torch.arange(20) * 7 % 100, torch.tensor([5, 99, 0])
    attr = cn.MarginNTKAttribution(model, TensorDataset(x, y), batch_size=1)
    got = attr.influence((xt, yt))
    expect = naive_scores([copy.deepcopy(model).double()], x.double(), y, xt.double(), yt)
    torch.testing.assert_close(got, expect, rtol=1e-3, atol=1e-4 * float(expect.abs().max()))
    one = attr.influence((xt[1:2], yt[1:2]))  # a one-example test batch
    torch.testing.assert_close(one, got[1:2], rtol=1e-6, atol=1e-9)


def test_parameters_updated_in_place_refit_with_a_warning():
    model = make_mlp(seed=0)
    x, xt = mlp_inputs(12, seed=1), mlp_inputs(3, seed=2)
    y, yt = torch.arange(12) % 5, torch.tensor([0, 1, 2])
    attr = cn.MarginNTKAttribution(model, TensorDataset(x, y))
    before = attr.influence((xt, yt))
    with torch.no_grad():
        model.fc1.weight.mul_(1.5)  # an optimizer step, in place
    with pytest.warns(cn.attribution.state.ModelChangedWarning):
        after = attr.influence((xt, yt))
    torch.testing.assert_close(after, naive_scores([model], x, y, xt, yt), rtol=1e-10, atol=1e-13)
    assert not torch.allclose(after, before)


def test_half_precision_model_contracts_in_float32():
    model = make_wide_mlp(seed=0).float()
    x, xt = mlp_inputs(24, seed=1, d_in=20).float(), mlp_inputs(4, seed=2, d_in=20).float()
    y, yt = torch.arange(24) % 8, torch.arange(4)
    reference = cn.MarginNTKAttribution(model, TensorDataset(x, y)).influence((xt, yt))
    low = copy.deepcopy(model).to(torch.bfloat16)
    data = TensorDataset(x.to(torch.bfloat16), y)
    scores = cn.MarginNTKAttribution(low, data).influence((xt.to(torch.bfloat16), yt))
    rho = [stats.spearmanr(a, b).statistic for a, b in zip(scores.numpy(), reference.numpy())]
    assert min(rho) > 0.9, rho
