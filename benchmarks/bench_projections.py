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
- ``speed``: examples/s of proj_pntk and proj_trntk features (``build_feature_map``) for each
  projection, on the models of ``--models`` (``benchmarks/models.py``: ``mlp`` 784-512-512-10,
  ``resnet`` CIFAR ResNet-18, ``minilm`` a MiniLM-sized BERT classifier over 32 padded tokens),
  at K = 1024 on the CPU and 10240 with ``--device cuda``, against two baselines sharing the
  plain torch.func per-example gradients (``vmap(grad)`` / ``vmap(jacrev)`` of ``functional_call``;
  Hugging Face models through ``trim_padding`` / ``prepare_inputs`` / ``vmap_safe``): a dense
  ``torch.randn`` K x P matrix (generated once if it takes at most 4 GiB on the CPU / 24 GiB on
  CUDA, else blockwise per batch, as printed) and TRAK's ``BasicProjector``. On the CPU, when
  K x P floats exceed 4 GiB, dense kinds (plain, TRAK, rademacher) are timed on K / 8 rows
  (``--timed-scale``) and their projection time multiplied by 8 (generation and matmul are linear
  in K), and Gaussian is skipped (its generation time per pass is printed).

Usage of the speed section::

    OMP_NUM_THREADS=2 python benchmarks/bench_projections.py --sections speed \
        --models mlp,resnet,minilm [--device cpu|cuda] [--quick]

- ``mnist2``: seconds for the 4000 x 4000 train kernel of an MNIST2-shaped MLP
  784-100-100-100-100-1 (random inputs): exact trntk against proj_trntk at the default K.
- ``precision``: error of precision="bf16" against "fp32" (features and kernel) and speed.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from models import MODEL_NAMES, BenchModel, build_model, mlp
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, vmap
from torch.utils.data import TensorDataset

import captum_ntk as cn
from captum_ntk.apps.datasets import load_digits_tensors
from captum_ntk.apps.models import DigitsCNN, train_classifier
from captum_ntk.engine.data.inputs import ModelInputs
from captum_ntk.engine.projection.dense import RandomProjection
from captum_ntk.kernels.matrix import build_feature_map
from captum_ntk.metrics import faithfulness

PROJECTIONS = ("rademacher", "gaussian", "sjlt", "kronecker")
KS = (1024, 4096, 10240)


def digits(image: bool, n_train: int, n_test: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x_tr, y_tr, x_te, y_te = load_digits_tensors(image=image, seed=0)
    return x_tr[:n_train], y_tr[:n_train], x_te[:n_test], y_te[:n_test]


def upsample(x: Tensor) -> Tensor:
    """8 x 8 digits as 28 x 28 images (MNIST-shaped)."""
    return F.interpolate(x.reshape(-1, 1, 8, 8), size=(28, 28), mode="bilinear")


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
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


def feature_rate(model, kernel, projection, k, x, batch, device=None) -> float:
    fmap = build_feature_map(model, kernel, projection=projection, projection_dim=k, device=device)
    fmap(ModelInputs.from_user(x[:2], "x"))  # plan, caches
    _, secs = timed(lambda: [
        fmap(ModelInputs.from_user(x[i : i + batch], "x")) for i in range(0, len(x), batch)
    ])  # fmt: skip
    return len(x) / secs


class TimedCall:
    """Wraps a callable and adds up the wall time spent in it."""

    def __init__(self, fn) -> None:
        self.fn, self.secs = fn, 0.0

    def __call__(self, *args):
        out, secs = timed(lambda: self.fn(*args))
        self.secs += secs
        return out


@dataclass
class SpeedSetup:
    """One (model, kernel) measurement: K, examples, batch and the timed-rows scale of dense kinds."""

    bench: BenchModel
    kernel: str
    k: int
    n: int
    batch: int
    device: torch.device
    #: dense projections are timed on K / scale rows, their projection time multiplied by scale
    scale: int = 1

    @property
    def k_timed(self) -> int:
        return self.k // self.scale

    def blocks(self):
        x = ModelInputs.from_user(self.bench.inputs(self.n, self.device), "x")
        return [x.slice(i, min(i + self.batch, self.n)) for i in range(0, self.n, self.batch)]


def library_rate(setup: SpeedSetup, projection: str, engine: str = "auto") -> float:
    """Examples/s of ``build_feature_map`` features (dense kinds extrapolated from K / scale rows).

    ``engine="auto"`` takes per-example gradients from ``torch.func``, ``engine="gram"`` from
    the Gram engine's capture (the ``sjlt (captured gradients)`` row)."""
    dense = projection in ("rademacher", "gaussian")
    k = setup.k_timed if dense else setup.k
    model, p = setup.bench.model, setup.bench.num_params
    blocks = setup.blocks()
    try:
        fmap = build_feature_map(model, setup.kernel, projection=projection, projection_dim=k,
                                 device=setup.device, engine=engine)  # fmt: skip
        fmap(blocks[0].slice(0, 1))  # plan, caches
        fmap(blocks[0])
    except RuntimeError as err:  # report and measure the torch.func gradient path instead
        print(f"  {projection}: engine='auto' failed ({str(err)[:160]}); engine='jacobian' used")
        fmap = build_feature_map(model, setup.kernel, projection=projection, projection_dim=k,
                                 device=setup.device, engine="jacobian")  # fmt: skip
    if dense and setup.scale > 1:  # the K-row matrix is regenerated per pass: so must K / scale
        fmap.projection = RandomProjection(p, k, projection, 0, setup.device,
                                           cache_bytes=0, scratch_bytes=fmap.projection.scratch_bytes)  # fmt: skip
    fmap(blocks[0].slice(0, 1))  # plan, caches
    if dense:
        fmap.projection = TimedCall(fmap.projection)
    _, secs = timed(lambda: [fmap(b) for b in blocks])
    if dense:
        secs += (setup.scale - 1) * fmap.projection.secs
    return setup.n / secs


def plain_gradients(model: nn.Module, kernel: str, inputs: ModelInputs) -> Tensor:
    """Per-example gradients the plain torch.func way: vmap(grad) (pntk) / vmap(jacrev) (trntk).

    Returns (B, P) summed-logit gradients or (B C, P) per-logit ones. Hugging Face models go
    through ``trim_padding`` / ``prepare_inputs`` / ``vmap_safe`` (the documented recipe).
    """
    params = {name: p.detach() for name, p in model.named_parameters()}
    context, args = contextlib.nullcontext(), inputs.args
    keys: list[str] = []
    if inputs.kwargs:  # Hugging Face
        from captum_ntk.integrations import huggingface as hf

        kwargs = hf.prepare_inputs(model, hf.trim_padding(inputs.kwargs))
        keys, args, context = list(kwargs), tuple(kwargs.values()), hf.vmap_safe(model)

    def logits(p, *values):
        if keys:
            out = functional_call(model, p, (), {k: v[None] for k, v in zip(keys, values)})
            return out.logits[0]
        return functional_call(model, p, tuple(v[None] for v in values))[0]

    fn = grad(lambda p, *v: logits(p, *v).sum()) if kernel == "proj_pntk" else jacrev(logits)
    with context:
        out = vmap(fn, in_dims=(None,) + (0,) * len(args))(params, *args)
    rows = inputs.num_examples * (1 if kernel == "proj_pntk" else next(iter(out.values())).shape[1])
    return torch.cat([g.reshape(rows, -1) for g in out.values()], dim=1)


def blockwise_dense(g: Tensor, k: int, rows: int) -> Tensor:
    """g @ S.T for a K x P ``torch.randn`` matrix generated ``rows`` rows at a time."""
    return torch.cat([g @ torch.randn(min(rows, k - r), g.shape[1], device=g.device).T
                      for r in range(0, k, rows)], dim=1)  # fmt: skip


def baseline_rates(setup: SpeedSetup, cap: int) -> dict[str, float]:
    """Examples/s of plain vmap gradients with a dense randn projection, and with TRAK's."""
    p, k, dev = setup.bench.num_params, setup.k_timed, setup.device
    rows = max(1, min(k, cap // 8 // (4 * p)))
    whole = setup.scale == 1 and k * p * 4 <= cap
    if whole:
        dense, secs = timed(lambda: torch.randn(k, p, device=dev))
        how = f"randn K x P once ({secs:.1f}s, not counted), one matmul per batch"
    else:
        how = f"randn generated blockwise, {rows} rows x P at a time, per batch"
    try:
        from trak.projectors import BasicProjector, ProjectionType
    except ImportError:
        BasicProjector = None
    trak_block = max(1, min(100, k, cap // 8 // (4 * p)))
    if BasicProjector is not None:
        trak = BasicProjector(p, k, 0, ProjectionType.rademacher, dev, block_size=trak_block)
    t_grad, t_plain, t_trak = 0.0, 0.0, 0.0
    blocks = setup.blocks()
    plain_gradients(setup.bench.model, setup.kernel, blocks[0].slice(0, 1))  # warm-up
    for block in blocks:
        g, secs = timed(lambda b=block: plain_gradients(setup.bench.model, setup.kernel, b))
        t_grad += secs
        t_plain += timed(lambda g=g: g @ dense.T if whole else blockwise_dense(g, k, rows))[1]
        if BasicProjector is not None:
            t_trak += timed(lambda g=g: trak.project(g, model_id=0))[1]
        g = None
    print(f"  plain dense: {how}")
    print(f"  per-example gradients alone (vmap, no projection): {setup.n / t_grad:.2f} ex/s"
          " (a bound for every projection of materialised gradients)")  # fmt: skip
    if setup.scale > 1:
        print(f"  dense kinds timed on K/{setup.scale} = {k} rows, projection time x{setup.scale}"
              f" (generation and matmul are linear in K; gradients timed once)")  # fmt: skip
    rates = {"plain vmap + dense randn": setup.n / (t_grad + setup.scale * t_plain)}
    if BasicProjector is not None:
        name = f"plain vmap + TRAK BasicProjector(block {trak_block})"
        rates[name] = setup.n / (t_grad + setup.scale * t_trak)
    return rates


#: (proj_pntk examples, proj_trntk examples, batch, batch for proj_trntk) on the CPU / CUDA
SPEED_SIZES = {
    "cpu": {"mlp": (512, 128, 64, 64), "resnet": (16, 8, 8, 4), "minilm": (16, 16, 8, 8)},
    "cuda": {"mlp": (8192, 2048, 512, 256), "resnet": (512, 128, 128, 32),
             "minilm": (512, 256, 128, 64)},
}  # fmt: skip


def speed_model(bench: BenchModel, device: torch.device, k: int, quick: bool,
                projections: tuple[str, ...], scale: int) -> None:  # fmt: skip
    """Prints examples/s of every projection and both baselines for proj_pntk and proj_trntk."""
    bench.model.to(device)
    p = bench.num_params
    cap = (24 if device.type == "cuda" else 4) << 30  # bytes a dense matrix may take
    scale = scale if k * p * 4 > cap and device.type == "cpu" else 1
    n_p, n_t, b_p, b_t = SPEED_SIZES[device.type][bench.name]
    for kernel, n, batch in (("proj_pntk", n_p, b_p), ("proj_trntk", n_t, b_t)):
        n = max(batch, n // 4) if quick else n
        setup = SpeedSetup(bench, kernel, k, n, batch, device, scale)
        print(f"\n{kernel} features, {bench.title} (P={p:,}), K={k}, {n} examples, "
              f"batch {batch}, {device.type}:")  # fmt: skip
        rates, notes = baseline_rates(setup, cap), []
        for projection in projections:
            gen = projection == "gaussian" and device.type == "cpu"
            if gen and (kernel == "proj_trntk" or scale > 1):
                rate = GENERATION_RATES.get("gaussian", 13e6)
                notes.append(f"  {projection}: skipped on the CPU (seeded Gaussian generation runs"
                             f" at {rate / 1e6:.1f} M entries/s: {k * p / rate:.0f}s per gradient pass)")  # fmt: skip
                continue
            if gen:
                notes.append(f"  {projection}: measured on one batch ({batch} examples)")
            sub = SpeedSetup(bench, kernel, k, batch, batch, device, scale) if gen else setup
            rates[projection] = library_rate(sub, projection)
            if projection == "sjlt":  # the same projection on captured gradients
                rates["sjlt (captured gradients)"] = library_rate(sub, projection, "gram")
        plain = rates["plain vmap + dense randn"]
        for name, rate in rates.items():
            print(f"  {name:42} {rate:9.2f} ex/s  ({rate / plain:6.2f}x plain)", flush=True)
        if notes:
            print("\n".join(notes), flush=True)
    bench.model.to("cpu")


def section_speed(quick: bool, projections: tuple[str, ...] = PROJECTIONS,
                  models: tuple[str, ...] = ("mlp",), device: str = "cpu",
                  k: int | None = None, scale: int = 8) -> None:  # fmt: skip
    torch.manual_seed(0)
    dev = torch.device(device)
    k = k or (10240 if dev.type == "cuda" else 1024)
    print(f"\nspeed: K={k} on {dev}; plain = torch.func vmap(grad) (proj_pntk) or vmap(jacrev) "
          "(proj_trntk) per-example gradients, then a dense K x P randn projection")  # fmt: skip
    if dev.type == "cpu":
        generation_rates()
    for name in models:
        speed_model(build_model(name), dev, k, quick, projections, scale)


#: entries/s of the seeded generators, as measured by ``generation_rates``
GENERATION_RATES: dict[str, float] = {}


def generation_rates() -> None:
    """Entries/s of the seeded dense K x P generator (what an uncached dense projection pays)."""
    from captum_ntk.engine.projection.dense import projection_block

    for kind in ("rademacher", "gaussian"):
        projection_block(1024, 0, 512, kind)
        _, secs = timed(lambda kind=kind: projection_block(1024, 0, 4096, kind))
        GENERATION_RATES[kind] = 1024 * 4096 / secs
        print(f"  seeded {kind} generation: {GENERATION_RATES[kind] / 1e6:.1f} M entries/s")


def section_mnist2(quick: bool) -> None:
    torch.manual_seed(0)
    net = mlp(784, 100, 100, 100, 100, 1).eval()
    n = 1000 if quick else 4000
    x = torch.randn(n, 784)
    print(f"\nMNIST2-shaped MLP 784-100-100-100-100-1 (P=109,001), {n} x {n} train kernel:")
    _, secs = timed(lambda: cn.kernel_matrix(net, x, kernel="trntk"))
    print(f"  exact trntk (engine auto): {secs:.2f}s")
    runs = (("sjlt", "auto"), ("kronecker", "jacobian"), ("kronecker", "auto"))
    for projection, engine in runs:
        _, secs = timed(lambda p=projection, e=engine: cn.kernel_matrix(
            net, x, kernel="proj_trntk", projection=p, engine=e
        ))  # fmt: skip
        form = (
            {"auto": "Gram form", "jacobian": "features"}[engine]
            if projection == "kronecker"
            else ""
        )
        print(f"  proj_trntk {projection:10} {form:9} (default K=10240): {secs:.2f}s")
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
    parser.add_argument("--models", default=None,
                        help="residual: cnn,mlp (default both); speed: mlp,resnet,minilm "
                        "(default mlp)")  # fmt: skip
    parser.add_argument("--projections", default=",".join(PROJECTIONS), help="speed section")
    parser.add_argument("--device", default="cpu", help="speed section: cpu or cuda")
    parser.add_argument("--projection-dim", type=int, default=None,
                        help="speed section K (default 1024 on cpu, 10240 on cuda)")  # fmt: skip
    parser.add_argument("--timed-scale", type=int, default=8,
                        help="speed, CPU, K x P over 4 GiB: dense kinds timed on K / this rows")  # fmt: skip
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{time.strftime('%Y-%m-%d')}")  # fmt: skip
    for name in args.sections.split(","):
        if name == "residual":
            section_residual(args.quick, args.models or "cnn,mlp")
            continue
        if name == "speed":
            models = tuple((args.models or "mlp").split(","))
            unknown = set(models) - set(MODEL_NAMES)
            if unknown:
                parser.error(f"speed models {sorted(unknown)} unknown; choose from {MODEL_NAMES}")
            section_speed(args.quick, tuple(args.projections.split(",")), models,
                          args.device, args.projection_dim, args.timed_scale)  # fmt: skip
            continue
        {"mnist2": section_mnist2,
         "precision": section_precision}[name](args.quick)  # fmt: skip


if __name__ == "__main__":
    main()
