"""Throughput of the kernel engine against plain torch.func and TRAK's projector.

Prints a table (and writes JSON with --json) of examples/s or kernel entries/s for:

* floor: one batched forward+backward (the cost of one gradient per example, amortised);
* plain torch.func: vmap(jacrev) / vmap(grad) over functional_call, the whole batch at once;
* captum_ntk: exact trNTK0 (kernel entries/s), Jacobians, proj-pNTK and proj-trNTK features;
* TRAK BasicProjector (pip `traker`) fed the same per-example gradients, proj-pNTK features.

Usage::

    python benchmarks/bench_engine.py --model mlp --device cpu
    python benchmarks/bench_engine.py --model resnet18 --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

import captum_ntk as cn
from captum_ntk.engine.data.inputs import ModelInputs
from captum_ntk.kernels import build_feature_map


def make_model(name: str) -> tuple[nn.Module, Callable[[int], torch.Tensor]]:
    torch.manual_seed(0)
    if name == "mlp":
        model = nn.Sequential(
            nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
        )
        return model.eval(), lambda n: torch.randn(n, 784)
    from captum_ntk.apps.reproduce.paper_models import resnet18_cifar

    return resnet18_cifar().eval(), lambda n: torch.randn(n, 3, 32, 32)


def timed(fn: Callable[[], object], device: torch.device, repeat: int = 3) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["mlp", "resnet18"], default="mlp")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="examples per block")
    parser.add_argument("--n-kernel", type=int, default=None, help="N for the exact trNTK0")
    parser.add_argument("--projection-dim", type=int, default=10240)
    parser.add_argument("--skip-trak", action="store_true")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (CUDA)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    model, make_x = make_model(args.model)
    model = model.to(device)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    num_params = sum(p.numel() for p in params.values())
    big = args.model == "resnet18"
    bs = args.batch or (16 if big and device.type == "cuda" else (4 if big else 64))
    x = make_x(bs).to(device)
    results: dict[str, float] = {}

    def single(p, xi):
        return functional_call(model, (p, buffers), (xi[None],))[0]

    # floor: batched forward + backward
    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    results["floor fwd+bwd (ex/s)"] = bs / timed(fwd_bwd, device)
    results["torch.func vmap(grad) (ex/s)"] = bs / timed(
        lambda: vmap(grad(lambda p, xi: single(p, xi).sum()), in_dims=(None, 0))(params, x), device
    )
    results["torch.func vmap(jacrev) (ex/s)"] = bs / timed(
        lambda: vmap(jacrev(single), in_dims=(None, 0))(params, x), device
    )
    inputs = ModelInputs.from_user(x)
    fmap = build_feature_map(model, "trntk0")
    results["captum_ntk Jacobian block (ex/s)"] = bs / timed(lambda: fmap(inputs), device)

    n_kernel = args.n_kernel or (64 if big else 256)
    xk = make_x(n_kernel).to(device)
    t = timed(lambda: cn.kernel_matrix(model, xk, kernel="trntk0", batch_size=bs), device, repeat=1)
    results[f"captum_ntk exact trNTK0 N={n_kernel} (entries/s)"] = n_kernel * n_kernel / t

    k = min(args.projection_dim, num_params - 1)
    for kernel in ("proj_pntk", "proj_trntk"):
        pmap = build_feature_map(model, kernel, projection_dim=k)
        results[f"captum_ntk {kernel} K={k} features (ex/s)"] = bs / timed(
            lambda pmap=pmap: pmap(inputs), device, repeat=2
        )

    if not args.skip_trak:
        try:
            from trak.projectors import BasicProjector, ProjectionType

            proj = BasicProjector(
                num_params, k, 0, ProjectionType.rademacher, device, block_size=100
            )
            gmap = build_feature_map(model, "pntk0")

            def trak_features():
                g = torch.cat(gmap.function.summed_gradient(inputs), dim=1)
                return proj.project(g, model_id=0)

            results[f"TRAK BasicProjector proj-pNTK K={k} (ex/s)"] = bs / timed(
                trak_features, device, repeat=1
            )
        except Exception as exc:  # noqa: BLE001 - report and continue
            print(f"TRAK skipped: {type(exc).__name__}: {exc}")

    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu"
    )
    header = (
        f"{args.model} P={num_params:,} C=10 batch={bs} device={name} torch={torch.__version__} "
        f"threads={torch.get_num_threads()} tf32={args.tf32}"
    )
    print(header)
    for key, value in results.items():
        print(f"  {key:<55s} {value:>12,.1f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"setup": header, "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
