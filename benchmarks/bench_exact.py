"""Exact kernels: the per-layer Gram engine against per-example Jacobians, side by side.

Prints wall times (best of ``--repeat``) of exact trNTK0 / trNTK computed three ways:

* gram: ``cn.kernel_matrix(..., engine="gram")`` (per-layer Grams of layer inputs and output
  gradients; see ``captum_ntk.engine.gram``);
* jacobian: ``cn.kernel_matrix(..., engine="jacobian")`` (blockwise per-example Jacobians);
* plain torch.func: ``vmap(jacrev(f))`` over all N examples, then one matmul per parameter of the
  flattened Jacobians (N x C x P numbers held at once).

Cases: the 784-512-512-10 MLP at N=512 (trNTK0), ``DigitsMLP`` on all 1,797 sklearn digits (trNTK),
and the CIFAR-shaped ResNet-18 (trNTK0 kernel entries/s at small N).

Usage::

    python benchmarks/bench_exact.py
    python benchmarks/bench_exact.py --n-mlp 256 --n-resnet 4 --repeat 1
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

import captum_ntk as cn
from captum_ntk.apps.models import DigitsMLP


def warm_up(model: nn.Module, x: Tensor, kernel: str) -> None:
    """One small call per engine first, so one-time initialisation is not timed."""
    for engine in ("gram", "jacobian"):
        cn.kernel_matrix(model, x[:4], kernel=kernel, engine=engine)


def timed(fn: Callable[[], Tensor], repeat: int) -> tuple[float, Tensor]:
    """Best wall time of ``repeat`` runs."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def plain_trntk0(model: nn.Module, x: Tensor) -> Tensor:
    """vmap(jacrev) over all examples, then sum over parameters of J_p J_p^T (no concatenation)."""
    params = {n: p.detach() for n, p in model.named_parameters()}

    def single(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        return functional_call(model, p, (xi.unsqueeze(0),))[0]

    jac = vmap(jacrev(single), in_dims=(None, 0))(params, x)
    n = x.shape[0]
    return sum(j.reshape(n, -1) @ j.reshape(n, -1).T for j in jac.values())


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def mlp_case(n: int, repeat: int, skip_plain: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    ).eval()
    x = torch.randn(n, 784)
    p = sum(q.numel() for q in model.parameters())
    warm_up(model, x, "trntk0")
    print(f"\n[1] MLP 784-512-512-10 (P = {p:,}, C = 10), exact trNTK0, N = {n}, float32")
    t_gram, k_gram = timed(
        lambda: cn.kernel_matrix(model, x, kernel="trntk0", engine="gram"), repeat
    )
    print(f"  gram engine                 {t_gram:8.3f} s")
    t_jac, k_jac = timed(
        lambda: cn.kernel_matrix(model, x, kernel="trntk0", engine="jacobian"), repeat
    )
    print(f"  jacobian engine             {t_jac:8.3f} s   ({t_jac / t_gram:6.1f}x the gram time)")
    print(f"  max rel. difference gram vs jacobian: {rel(k_gram, k_jac):.2e}")
    need = n * 10 * p * 4
    if skip_plain:
        return
    if available_bytes() < 1.5 * need:
        print(
            f"  plain torch.func skipped: needs {need / 2**30:.1f} GiB of Jacobians, "
            f"{available_bytes() / 2**30:.1f} GiB available (use --n-mlp 256)"
        )
        return
    t_plain, k_plain = timed(lambda: plain_trntk0(model, x), repeat)
    print(
        f"  plain vmap(jacrev) + matmul {t_plain:8.3f} s   ({t_plain / t_gram:6.1f}x the gram "
        f"time; holds {need / 2**30:.1f} GiB of Jacobians)"
    )
    print(f"  max rel. difference gram vs plain: {rel(k_gram, k_plain):.2e}")


def digits_case(repeat: int) -> None:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    model = DigitsMLP().eval()
    p = sum(q.numel() for q in model.parameters())
    warm_up(model, x, "trntk")
    print(f"\n[2] DigitsMLP (P = {p:,}, C = 10), exact trNTK, all {len(x):,} digits, float32")
    t_gram, k_gram = timed(
        lambda: cn.kernel_matrix(model, x, kernel="trntk", engine="gram"), repeat
    )
    print(f"  gram engine                 {t_gram:8.3f} s")
    t_jac, k_jac = timed(lambda: cn.kernel_matrix(model, x, kernel="trntk", engine="jacobian"), 1)
    print(f"  jacobian engine             {t_jac:8.3f} s   ({t_jac / t_gram:6.1f}x the gram time)")
    print(f"  max rel. difference gram vs jacobian: {rel(k_gram, k_jac):.2e}")


def resnet_case(n: int, repeat: int) -> None:
    from captum_ntk.apps.reproduce.paper_models import resnet18_cifar

    model = resnet18_cifar(seed=0).eval()
    x = torch.randn(n, 3, 32, 32)
    p = sum(q.numel() for q in model.parameters())
    entries = n * n
    print(f"\n[3] ResNet-18 CIFAR-shaped (P = {p:,}, C = 10), exact trNTK0, N = {n}, float32")
    fmap = cn.kernels.build_feature_map(model, "trntk0", engine="gram")
    fmap.plan(cn.engine.inputs.ModelInputs.from_user(x[:4]))
    forms = fmap.layer_forms()
    n_gram = sum(v == "gram" for v in forms.values())
    print(f"  plan: {n_gram} layers in Gram form, {len(forms) - n_gram} materialised")
    t_gram, k_gram = timed(
        lambda: cn.kernel_matrix(model, x, kernel="trntk0", engine="gram", batch_size=n), repeat
    )
    print(f"  gram engine      {t_gram:8.2f} s   {entries / t_gram:10.1f} entries/s")
    t_jac, k_jac = timed(lambda: cn.kernel_matrix(model, x, kernel="trntk0", engine="jacobian"), 1)
    print(
        f"  jacobian engine  {t_jac:8.2f} s   {entries / t_jac:10.1f} entries/s "
        f"({t_jac / t_gram:.1f}x the gram time)"
    )
    print(f"  max rel. difference gram vs jacobian: {rel(k_gram, k_jac):.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-mlp", type=int, default=512)
    parser.add_argument("--n-resnet", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--skip-plain", action="store_true")
    args = parser.parse_args()
    print(
        f"captum_ntk bench_exact  date {datetime.date.today()}  torch {torch.__version__}  "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads, "
        f"{'CUDA' if torch.cuda.is_available() else 'no GPU'}"
    )
    mlp_case(args.n_mlp, args.repeat, args.skip_plain)
    digits_case(args.repeat)
    resnet_case(args.n_resnet, 1)


if __name__ == "__main__":
    main()
