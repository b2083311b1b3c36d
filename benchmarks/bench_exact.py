"""Exact kernels: the per-layer Gram engine against per-example Jacobians, side by side.

Prints wall times (best of ``--repeat``) of exact trNTK0 / trNTK computed three ways:

* gram: ``cn.kernel_matrix(..., engine="gram")`` (per-layer Grams of layer inputs and output
  gradients; see ``captum_ntk.engine.gram``);
* jacobian: ``cn.kernel_matrix(..., engine="jacobian")`` (blockwise per-example Jacobians);
* plain torch.func: ``vmap(jacrev(f))`` over all N examples, then one matmul per parameter of the
  flattened Jacobians (N x C x P numbers held at once).

Cases: the 784-512-512-10 MLP at N=512 (all three ways) and N=2048 (Gram engine only: the plain
way would hold N x C x P float32 Jacobians, 54.9 GB, and the printout says so), ``DigitsMLP`` on
all 1,797 sklearn digits (trNTK), and the CIFAR-shaped ResNet-18 (trNTK0 kernel entries/s; the
Jacobian engine only up to N = ``--jacobian-max-n``).

Usage::

    python benchmarks/bench_exact.py
    python benchmarks/bench_exact.py --n-mlp 256 --n-resnet 4 --repeat 1
    python benchmarks/bench_exact.py --device cuda --n-resnet 2048
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


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Tensor], repeat: int) -> tuple[float, Tensor]:
    """Best wall time of ``repeat`` runs."""
    best, out = float("inf"), None
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
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


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def mlp_case(
    n: int, repeat: int, skip_plain: bool, device: torch.device, jacobian_max_n: int
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    ).eval()
    model.to(device)
    x = torch.randn(n, 784).to(device)
    p = sum(q.numel() for q in model.parameters())
    warm_up(model, x, "trntk0")
    entries = n * n
    print(f"\n[1] MLP 784-512-512-10 (P = {p:,}, C = 10), exact trNTK0, N = {n}, float32, {device}")
    t_gram, k_gram = timed(
        lambda: cn.kernel_matrix(model, x, kernel="trntk0", engine="gram"), repeat
    )
    print(f"  gram engine                 {t_gram:8.3f} s   {entries / t_gram:12.0f} entries/s")
    if n <= jacobian_max_n:
        t_jac, k_jac = timed(
            lambda: cn.kernel_matrix(model, x, kernel="trntk0", engine="jacobian"), repeat
        )
        print(
            f"  jacobian engine             {t_jac:8.3f} s   {entries / t_jac:12.0f} entries/s"
            f"   ({t_jac / t_gram:6.1f}x the gram time)"
        )
        print(f"  max rel. difference gram vs jacobian: {rel(k_gram, k_jac):.2e}")
    else:
        print(f"  jacobian engine skipped (N > --jacobian-max-n {jacobian_max_n})")
    need = n * 10 * p * 4
    if skip_plain:
        return
    if available_bytes(device) < 1.5 * need:
        print(
            f"  plain vmap(jacrev) skipped: it holds all N x C x P float32 Jacobians at once, "
            f"{n:,} x 10 x {p:,} x 4 bytes = {need / 1e9:.1f} GB ({need / 2**30:.1f} GiB); "
            f"{available_bytes(device) / 2**30:.1f} GiB available"
        )
        return
    t_plain, k_plain = timed(lambda: plain_trntk0(model, x), repeat)
    print(
        f"  plain vmap(jacrev) + matmul {t_plain:8.3f} s   {entries / t_plain:12.0f} entries/s"
        f"   ({t_plain / t_gram:6.1f}x the gram time; holds {need / 2**30:.1f} GiB of Jacobians)"
    )
    print(f"  max rel. difference gram vs plain: {rel(k_gram, k_plain):.2e}")


def digits_case(repeat: int, device: torch.device) -> None:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (torch.tensor(data.data, dtype=torch.float32) / 16.0).to(device)
    model = DigitsMLP().eval().to(device)
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


def resnet_case(n: int, repeat: int, device: torch.device, jacobian_max_n: int) -> None:
    from captum_ntk.apps.reproduce.paper_models import resnet18_cifar

    model = resnet18_cifar(seed=0).eval().to(device)
    x = torch.randn(n, 3, 32, 32).to(device)
    p = sum(q.numel() for q in model.parameters())
    entries = n * n
    batch = n if n <= 256 else None  # None: the memory-budgeted automatic block size
    print(f"\n[3] ResNet-18 CIFAR-shaped (P = {p:,}, C = 10), exact trNTK0, N = {n}, float32")
    fmap = cn.kernels.build_feature_map(model, "trntk0", engine="gram")
    fmap.plan(cn.engine.data.inputs.ModelInputs.from_user(x[:4]))
    forms = fmap.layer_forms()
    n_gram = sum(v == "gram" for v in forms.values())
    print(f"  plan: {n_gram} layers in Gram form, {len(forms) - n_gram} materialised")
    t_gram, k_gram = timed(
        lambda: cn.kernel_matrix(model, x, kernel="trntk0", engine="gram", batch_size=batch),
        repeat,
    )
    print(f"  gram engine      {t_gram:8.2f} s   {entries / t_gram:10.1f} entries/s")
    if n > jacobian_max_n:
        print(f"  jacobian engine skipped (N > --jacobian-max-n {jacobian_max_n})")
        return
    t_jac, k_jac = timed(lambda: cn.kernel_matrix(model, x, kernel="trntk0", engine="jacobian"), 1)
    print(
        f"  jacobian engine  {t_jac:8.2f} s   {entries / t_jac:10.1f} entries/s "
        f"({t_jac / t_gram:.1f}x the gram time)"
    )
    print(f"  max rel. difference gram vs jacobian: {rel(k_gram, k_jac):.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-mlp", default="512,2048", help="comma-separated N of the MLP case")
    parser.add_argument("--n-resnet", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--jacobian-max-n", type=int, default=512,
                        help="largest N timed with the Jacobian engine")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--cases", default="mlp,digits,resnet")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"captum_ntk bench_exact  date {datetime.date.today()}  torch {torch.__version__}  "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads, "
        f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}"
    )
    cases = args.cases.split(",")
    if "mlp" in cases:
        for n in (int(v) for v in args.n_mlp.split(",")):
            mlp_case(n, args.repeat, args.skip_plain, device, args.jacobian_max_n)
    if "digits" in cases:
        digits_case(args.repeat, device)
    if "resnet" in cases:
        resnet_case(args.n_resnet, 1, device, args.jacobian_max_n)


if __name__ == "__main__":
    main()
