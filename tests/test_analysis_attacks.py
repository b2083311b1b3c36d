"""FGSM / PGD through differentiable kernel predictors, and transfer to a network."""

from __future__ import annotations

import pytest
import torch

from captum_ntk import analysis as A


def _binary_linear():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20, 5, generator=gen, dtype=torch.float64)
    labels = (x[:, 0] - x[:, 2] > 0).long()
    reg = A.KernelRegressor(A.linear_kernel, x, A.one_hot_targets(labels), ridge=0.5)
    w = x.T @ reg.dual_coef[:, 0]  # f(x) = <w, x>
    x_test = torch.randn(12, 5, generator=gen, dtype=torch.float64)
    return reg, w, x_test, (x_test @ w > 0).long()


def _rbf_multiclass():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(40, 6, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (40,), generator=gen)
    reg = A.KernelRegressor(A.RBFKernel(0.4), x, A.one_hot_targets(labels), ridge=1e-2)
    x_test = torch.rand(10, 6, generator=gen, dtype=torch.float64)
    return reg, x_test, reg.predict(x_test).argmax(1)


@pytest.mark.parametrize("norm,dual", [("linf", 1), ("l2", 2)])
def test_attack_on_a_linear_kernel_is_the_analytic_worst_case(norm: str, dual: int) -> None:
    """min over |d| <= eps of s <w, x + d> = s <w, x> - eps |w|_dual (dual norm of the ball)."""
    reg, w, x_test, labels = _binary_linear()
    eps = 0.3
    sign = 2.0 * labels.double() - 1.0
    worst = sign * (x_test @ w) - eps * torch.linalg.vector_norm(w, ord=dual)
    for attack in (
        A.fgsm(reg, x_test, labels, eps, norm=norm),
        A.pgd(reg, x_test, labels, eps, norm=norm, steps=5, step_size=eps),
    ):
        torch.testing.assert_close(sign * reg(attack), worst, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_perturbations_stay_in_the_ball_and_the_box(norm: str) -> None:
    reg, x_test, labels = _rbf_multiclass()
    eps = 0.25 if norm == "linf" else 0.6
    for adversarial in (
        A.fgsm(reg, x_test, labels, eps, norm=norm, clip=(0.0, 1.0), loss="ce"),
        A.pgd(
            reg,
            x_test,
            labels,
            eps,
            norm=norm,
            clip=(0.0, 1.0),
            random_start=True,
            steps=7,
            step_size=eps / 2,
        ),
    ):
        delta = (adversarial - x_test).reshape(len(x_test), -1)
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert float(size.max()) <= eps * (1 + 1e-12)
        assert float(size.max()) > 0.5 * eps  # it moved
        assert float(adversarial.min()) >= 0.0 and float(adversarial.max()) <= 1.0


def test_pgd_is_at_least_as_strong_as_fgsm() -> None:
    reg, x_test, labels = _rbf_multiclass()
    eps = 0.15
    for loss in ("ce", "margin"):
        one = A.attack_objective(reg(A.fgsm(reg, x_test, labels, eps, loss=loss)), labels, loss)
        many = A.attack_objective(
            reg(A.pgd(reg, x_test, labels, eps, loss=loss, step_size=eps, steps=10)), labels, loss
        )
        assert bool((many >= one - 1e-12).all()), many - one
        assert float(many.sum()) > float(one.sum())  # strictly better somewhere on a curved kernel


def test_targeted_attack_moves_towards_the_target() -> None:
    reg, x_test, labels = _rbf_multiclass()
    target = (labels + 1) % 3
    before = A.attack_objective(reg(x_test), target, "margin", targeted=True)
    adversarial = A.pgd(reg, x_test, target, 0.5, targeted=True, steps=20)
    after = A.attack_objective(reg(adversarial), target, "margin", targeted=True)
    assert bool((after > before).all())
    assert A.accuracy(reg(x_test), target) == 0.0  # labels are the clean predictions
    assert A.accuracy(reg(adversarial), target) >= 0.7


def test_losses() -> None:
    outputs = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    labels = torch.tensor([0, 1])
    torch.testing.assert_close(
        A.attack_objective(outputs, labels, "margin"), torch.tensor([-1.5, 2.0])
    )
    ce = torch.nn.functional.cross_entropy(outputs, labels, reduction="none")
    torch.testing.assert_close(A.attack_objective(outputs, labels, "ce", targeted=True), -ce)
    z = torch.tensor([1.0, -2.0])
    torch.testing.assert_close(
        A.attack_objective(z, torch.tensor([1, 1]), "margin"), torch.tensor([-1.0, 2.0])
    )
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        z, torch.tensor([1.0, 0.0]), reduction="none"
    )
    torch.testing.assert_close(A.attack_objective(z[:, None], torch.tensor([1, 0]), "bce"), bce)
    with pytest.raises(ValueError, match="'bce' or 'margin'"):
        A.attack_objective(z, labels, "ce")
    with pytest.raises(ValueError, match="one output"):
        A.attack_objective(outputs, labels, "bce")
    with pytest.raises(ValueError, match="norm"):
        A.fgsm(lambda x: x.sum(1), torch.zeros(2, 3), labels, 0.1, norm="l1")


def test_transfer_report() -> None:
    reg, w, x_test, labels = _binary_linear()
    network = torch.nn.Linear(5, 1, bias=False).double()
    with torch.no_grad():
        network.weight.copy_(w[None, :])  # the same function: attacks transfer perfectly
    report, adversarial = A.transfer_report(
        reg, network, x_test, labels, 1.0, attack="fgsm", return_inputs=True
    )
    assert report.clean_kernel == report.clean_network == 1.0
    assert report.adversarial_network == report.adversarial_kernel
    assert report.adversarial_kernel == A.accuracy(reg(adversarial), labels) < 1.0
    assert set(report.as_dict()) >= {"noise_network", "epsilon"}


def test_labels_out_of_range_are_refused() -> None:
    """A label 2 for a one-output predictor (or C for C outputs) is an error, not a number."""
    reg, _, x_test, labels = _binary_linear()
    bad = labels.clone()
    bad[0] = 2
    outputs = reg(x_test)
    for loss in ("bce", "margin"):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
            A.attack_objective(outputs, bad, loss)
    with pytest.raises(ValueError, match="labels must lie"):
        A.accuracy(outputs, bad)
    with pytest.raises(ValueError, match="labels must lie"):
        A.fgsm(reg, x_test, bad, 0.1)
    multi, x_multi, labels_multi = _rbf_multiclass()
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        A.accuracy(multi(x_multi), labels_multi - 1)
    with pytest.raises(ValueError, match="step_size"):
        A.pgd(reg, x_test, labels, 0.1, step_size=-0.05)
