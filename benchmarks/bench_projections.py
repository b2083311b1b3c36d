"""Projections: kernel residuals, kGLM faithfulness and feature throughput.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_projections.py [--sections residual,speed,mnist2,precision]

Sections:

- ``residual``: for the digits CNN (proj_trntk vs the exact trntk) and an MNIST-shaped MLP
  784-512-512-10 trained on digits upsampled to 28 x 28 (proj_pntk vs the exact pntk), at
  K = 1024, 4096, 10240 (only K < P), for every projection: mean and max |K_proj - K| over the
  test x train and train x train entries, the seconds taken, and tau_K of the kGLM fitted with
  ``attr.fit_surrogate()`` defaults (``captum_ntk.metrics.faithfulness``) next to the exact
  kernel's tau_K.
- ``speed``: examples/s of proj_pntk and proj_trntk features of the MNIST-shaped MLP at K=1024
  for each projection, against the plain dense way (a K x P ``torch.randn`` matrix generated
  once, then one matmul per batch; generation time printed separately) and TRAK's
  ``BasicProjector`` (if ``traker`` is installed).
- ``mnist2``: seconds for the 4000 x 4000 train kernel of an MNIST2-shaped MLP
  784-100-100-100-100-1 (random inputs): exact trntk against proj_trntk at the default K.
- ``precision``: error of precision="bf16" against "fp32" (features and kernel) and speed.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import captum_ntk as cn
from captum_ntk.apps.datasets import load_digits_tensors
from captum_ntk.apps.models import DigitsCNN, train_classifier
from captum_ntk.engine.inputs import ModelInputs
from captum_ntk.kernels.matrix import build_feature_map
from captum_ntk.metrics import faithfulness

PROJECTIONS = ("rademacher", "gaussian", "sjlt", "kronecker")
KS = (1024, 4096, 10240)


def mlp(*widths: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(nn.Flatten(), *layers)


def digits(image: bool, n_train: int, n_test: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x_tr, y_tr, x_te, y_te = load_digits_tensors(image=image, seed=0)
    return x_tr[:n_train], y_tr[:n_train], x_te[:n_test], y_te[:n_test]


def upsample(x: Tensor) -> Tensor:
    """8 x 8 digits as 28 x 28 images (MNIST-shaped)."""
    return F.interpolate(x.reshape(-1, 1, 8, 8), size=(28, 28), mode="bilinear")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def both_kernels(model, x_tr, x_te, **opts) -> tuple[Tensor, Tensor]:
    """(train x train, test x train) from one kernel over train and test together."""
    n = len(x_tr)
    whole = cn.kernel_matrix(model, torch.cat([x_tr, x_te]), **opts)
    return whole[:n, :n].contiguous(), whole[n:, :n].contiguous()


def residual_rows(name, model, data, exact_kernel, proj_kernel, runs) -> None:
    """Prints one table row per (projection, K) in ``runs`` (K >= P skipped)."""
    x_tr, y_tr, x_te, y_te = data
    num_params = sum(p.numel() for p in model.parameters())
    attr_cls = {"proj_trntk": cn.ProjTrNTKAttribution, "proj_pntk": cn.ProjPNTKAttribution}
    exact_cls = {"trntk": cn.TrNTKAttribution, "pntk": cn.PNTKAttribution}[exact_kernel]
    (k_tr, k_te), secs = timed(lambda: both_kernels(model, x_tr, x_te, kernel=exact_kernel))
    exact = exact_cls(model, TensorDataset(x_tr, y_tr))
    exact.train_kernel = k_tr
    tau = faithfulness(model, exact, x_te, y_te, test_kernel=k_te)["tau"]
    print(f"\n{name}: P={num_params:,}, {len(x_tr)} train, {len(x_te)} test; exact {exact_kernel}"
          f" {secs:.1f}s, tau_K={tau:.3f}; {proj_kernel} residuals over train x train and "
          "test x train entries")  # fmt: skip
    print(f"| {'projection':10} | {'K':>5} | {'mean|dK|':>9} | {'max|dK|':>8} | {'tau_K':>6} "
          f"| {'s':>6} |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for projection, k in runs:
        if k >= num_params:
            continue
        opts = dict(kernel=proj_kernel, projection=projection, projection_dim=k)
        (p_tr, p_te), secs = timed(lambda o=opts: both_kernels(model, x_tr, x_te, **o))
        diff = torch.cat([(p_tr - k_tr).flatten(), (p_te - k_te).flatten()]).abs()
        attr = attr_cls[proj_kernel](
            model, TensorDataset(x_tr, y_tr), projection=projection, projection_dim=k
        )
        attr.train_kernel = p_tr
        tau = faithfulness(model, attr, x_te, y_te, test_kernel=p_te)["tau"]
        print(f"| {projection:10} | {k:>5} | {float(diff.mean()):9.4f} | "
              f"{float(diff.max()):8.4f} | {tau:6.3f} | {secs:6.1f} |", flush=True)  # fmt: skip


def section_residual(quick: bool, models: str = "cnn,mlp") -> None:
    torch.manual_seed(0)
    if "cnn" in models:
        n_tr, n_te = (200, 100) if quick else (500, 200)
        data = digits(True, n_tr, n_te)
        cnn = train_classifier(DigitsCNN(), *data[:2], epochs=30)
        runs = [(p, k) for k in KS for p in PROJECTIONS]
        residual_rows("DigitsCNN", cnn, data, "trntk", "proj_trntk", runs)
    if "mlp" not in models:
        return
    n_tr, n_te = (150, 75) if quick else (300, 150)
    x_tr, y_tr, x_te, y_te = digits(True, n_tr, n_te)
    data = (upsample(x_tr), y_tr, upsample(x_te), y_te)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = mlp(784, 512, 512, 10)
    net = train_classifier(net, *data[:2], epochs=20, lr=1e-3)
    # dense K x P generation dominates here (P = 669,706): Rademacher at K = 1024 only,
    # Gaussian (about 10x slower to generate) skipped
    runs = [("rademacher", 1024)] + [(p, k) for k in KS for p in ("sjlt", "kronecker")]
    residual_rows("MNIST-shaped MLP 784-512-512-10", net, data, "pntk", "proj_pntk", runs)


def feature_rate(model, kernel, projection, k, x, batch) -> float:
    fmap = build_feature_map(model, kernel, projection=projection, projection_dim=k)
    fmap(ModelInputs.from_user(x[:2], "x"))  # plan, caches
    _, secs = timed(lambda: [
        fmap(ModelInputs.from_user(x[i : i + batch], "x")) for i in range(0, len(x), batch)
    ])  # fmt: skip
    return len(x) / secs


def gradients(model, kernel, x) -> Tensor:
    function = build_feature_map(model, "pntk" if kernel == "proj_pntk" else "trntk",
                                 engine="jacobian").function  # fmt: skip
    inputs = ModelInputs.from_user(x, "x")
    if kernel == "proj_pntk":
        return torch.cat(function.summed_gradient(inputs), dim=1)
    parts = function.jacobian(inputs)
    return torch.cat([p.reshape(-1, p.shape[-1]) for p in parts], dim=1)


def baseline_rates(model, kernel, k, x, batch) -> dict[str, float]:
    num_params = sum(p.numel() for p in model.parameters())
    rates = {}
    dense, secs = timed(lambda: torch.randn(k, num_params))
    print(f"  plain dense: K x P randn generated once in {secs:.1f}s")
    _, secs = timed(lambda: [
        gradients(model, kernel, x[i : i + batch]) @ dense.T for i in range(0, len(x), batch)
    ])  # fmt: skip
    rates["plain dense (randn once, matmul)"] = len(x) / secs
    dense = None
    try:
        from trak.projectors import BasicProjector, ProjectionType
    except ImportError:
        return rates
    proj = BasicProjector(num_params, k, 0, ProjectionType.rademacher, torch.device("cpu"))
    n = min(len(x), 2 * batch)
    _, secs = timed(lambda: [
        proj.project(gradients(model, kernel, x[i : i + batch]), model_id=0)
        for i in range(0, n, batch)
    ])  # fmt: skip
    rates["TRAK BasicProjector"] = n / secs
    return rates


def generation_rates() -> None:
    """Entries/s of the seeded dense K x P generator (what an uncached dense projection pays)."""
    from captum_ntk.engine.projection import projection_block

    for kind in ("rademacher", "gaussian"):
        projection_block(1024, 0, 512, kind)
        _, secs = timed(lambda kind=kind: projection_block(1024, 0, 4096, kind))
        print(f"  seeded {kind} generation: {1024 * 4096 / secs / 1e6:.1f} M entries/s")


def section_speed(quick: bool, projections: tuple[str, ...] = PROJECTIONS) -> None:
    torch.manual_seed(0)
    generation_rates()
    net = mlp(784, 512, 512, 10).eval()
    k, batch = 1024, 64
    for kernel, n in (("proj_pntk", 128 if quick else 512), ("proj_trntk", 64 if quick else 128)):
        x = torch.randn(n, 784)
        print(f"\n{kernel} features, MLP 784-512-512-10 (P=669,706), K={k}, {n} examples:")
        rates = baseline_rates(net, kernel, k, x, batch)
        for projection in projections:
            if projection == "gaussian" and kernel == "proj_trntk":
                continue  # about 140 s per generation of the K x P matrix, several per block
            x_p = x[:batch] if projection == "gaussian" else x  # one generation
            rates[projection] = feature_rate(net, kernel, projection, k, x_p, batch)
        plain = rates["plain dense (randn once, matmul)"]
        for name, rate in rates.items():
            print(f"  {name:34} {rate:9.1f} ex/s  ({rate / plain:6.1f}x plain dense)")


def section_mnist2(quick: bool) -> None:
    torch.manual_seed(0)
    net = mlp(784, 100, 100, 100, 100, 1).eval()
    n = 1000 if quick else 4000
    x = torch.randn(n, 784)
    print(f"\nMNIST2-shaped MLP 784-100-100-100-100-1 (P=109,001), {n} x {n} train kernel:")
    _, secs = timed(lambda: cn.kernel_matrix(net, x, kernel="trntk"))
    print(f"  exact trntk (engine auto): {secs:.1f}s")
    for projection in ("sjlt", "kronecker"):
        _, secs = timed(
            lambda p=projection: cn.kernel_matrix(net, x, kernel="proj_trntk", projection=p)
        )
        print(f"  proj_trntk {projection:10} (default K=10240): {secs:.1f}s")
    m = 256
    rate = feature_rate(net, "proj_trntk", "rademacher", 10240, x[:m], 128)
    print(f"  proj_trntk rademacher features: {rate:.1f} ex/s (measured on {m}; "
          f"{n / rate:.0f}s for {n} by extrapolation)")  # fmt: skip


def section_precision(quick: bool) -> None:
    torch.manual_seed(0)
    x_tr, _, _, _ = digits(True, 200 if quick else 400, 1)
    net = mlp(784, 512, 512, 10).eval()
    x = upsample(x_tr)
    print("\nprecision='bf16' vs 'fp32', proj_pntk of the MNIST-shaped MLP, K=1024:")
    for projection in ("rademacher", "gaussian", "kronecker"):
        opts = dict(kernel="proj_pntk", projection_dim=1024, projection=projection)
        base, t32 = timed(lambda o=opts: cn.kernel_matrix(net, x, **o))
        low, t16 = timed(lambda o=opts: cn.kernel_matrix(net, x, precision="bf16", **o))
        err = (low - base).abs()
        print(f"  {projection:10} max|dK| {float(err.max()):.2e} mean|dK| {float(err.mean()):.2e}"
              f"  fp32 {t32:.1f}s bf16 {t16:.1f}s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="residual,speed,mnist2,precision")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--models", default="cnn,mlp", help="models of the residual section")
    parser.add_argument("--projections", default=",".join(PROJECTIONS), help="speed section")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{time.strftime('%Y-%m-%d')}")  # fmt: skip
    for name in args.sections.split(","):
        if name == "residual":
            section_residual(args.quick, args.models)
            continue
        if name == "speed":
            section_speed(args.quick, tuple(args.projections.split(",")))
            continue
        {"mnist2": section_mnist2,
         "precision": section_precision}[name](args.quick)  # fmt: skip


if __name__ == "__main__":
    main()
