r"""``captum-ntk featurize`` and ``captum-ntk score``: disk stores from the shell.

::

    captum-ntk featurize --model mymodels:make_model --data mydata:train_set \
        --kernel proj_pntk --projection-dim 4096 --store runs/train
    captum-ntk score --store runs/train --model mymodels:make_model --data mydata:test_set \
        --k 10 --output runs/top10.npz

``--model`` and ``--data`` name factories ``module:function`` (or ``path/to/file.py:function``)
called without arguments: the first returns the ``nn.Module`` (with its trained weights), the
second the data (a Dataset, an in-order DataLoader, a list of examples or a batch). Both commands
resume from what is on disk and, under ``torchrun --nproc_per_node=R``, shard the blocks over
the ranks (NCCL on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["add_store_parsers", "load_factory", "run_featurize", "run_score"]


def load_factory(spec: str) -> Any:
    r"""The callable named by ``module:function`` or ``path/to/file.py:function``.

    Raises:
        ValueError: a malformed spec, a missing module or function.
    """
    module_name, sep, attribute = spec.rpartition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"expected 'module:function' or 'file.py:function', got {spec!r}")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.exists():
            raise ValueError(f"no such file {module_name!r} (in {spec!r})")
        loaded = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(loaded)  # type: ignore[arg-type]
        loaded.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        module = importlib.import_module(module_name)
    if not hasattr(module, attribute):
        raise ValueError(f"{module_name!r} has no attribute {attribute!r} (in {spec!r})")
    return getattr(module, attribute)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="MODULE:FN", help="model factory")
    parser.add_argument("--data", required=True, metavar="MODULE:FN", help="data factory")
    parser.add_argument("--device", default=None, help="compute device (default: the model's)")
    parser.add_argument("--eval-mode", action="store_true", help="kernel of the eval-mode model")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_store_parsers(commands: Any) -> None:
    """Adds the ``featurize`` and ``score`` subcommands to ``captum-ntk``'s subparsers."""
    feat = commands.add_parser(
        "featurize",
        help="write a dataset's kernel features into a resumable disk store",
        description="Stream a dataset through a model's feature map into a disk store "
        "(resumes; sharded over torchrun ranks).",
    )
    _common(feat)
    feat.add_argument("--store", required=True, type=Path, metavar="DIR", help="store folder")
    feat.add_argument("--kernel", default="proj_pntk", help="proj_pntk, proj_trntk, ck, embedding")
    feat.add_argument("--projection-dim", type=int, default=None, metavar="K")
    feat.add_argument("--projection", default="rademacher")
    feat.add_argument("--seed", type=int, default=0)
    feat.add_argument(
        "--precision", default="fp32", choices=("fp32", "tf32", "bf16"), help="projection matmuls"
    )
    feat.add_argument("--layers", default=None, help="comma-separated module names")
    feat.add_argument("--batch-size", type=int, default=256, help="examples per block")
    feat.add_argument("--dtype", default=None, choices=("float32", "float64", "float16"))
    score = commands.add_parser(
        "score",
        help="test x train kernel or top-k training examples from a feature store",
        description="Featurize test data with the train store's options, then write the "
        "top-k training examples per test example (--k) or the whole test x train kernel.",
    )
    _common(score)
    score.add_argument("--store", required=True, type=Path, metavar="DIR", help="train store")
    score.add_argument(
        "--test-store",
        type=Path,
        default=None,
        metavar="DIR",
        help="store of the test features (default: STORE/test)",
    )
    score.add_argument("--k", type=int, default=None, help="top-k per test example")
    score.add_argument("--opponents", action="store_true", help="lowest k instead of highest")
    score.add_argument(
        "--output",
        required=True,
        type=Path,
        help="an .npz for --k (indices, scores), else a folder for kernel.npy",
    )


def _init_distributed() -> None:
    """Joins the process group a launcher (torchrun) describes in the environment."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")


def _device(args: argparse.Namespace) -> str | None:
    if args.device is None and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return args.device


def _featurize(args, options: dict, store: Path, dtype=None):
    from ..engine.data.streaming import StreamingSource
    from ..engine.modes import check_mode
    from ..kernels.matrix import build_feature_map
    from ..store import featurize

    model = load_factory(args.model)()
    data = load_factory(args.data)()
    device = _device(args)
    if device is not None:
        model = model.to(device)
    with check_mode(model, args.eval_mode):
        fmap = build_feature_map(
            model,
            options["kernel"],
            layers=options["layers"],
            projection_dim=options.get("projection_dim"),
            projection=options["projection"],
            seed=options["seed"],
            device=device,
            dtype=dtype,
            precision=options.get("precision") or "fp32",
        )
        source = StreamingSource(data, options["block_size"], "data")
        return fmap, featurize(fmap, source, store, options, show_progress=not args.no_progress)


def run_featurize(args: argparse.Namespace) -> int:
    """``captum-ntk featurize``: writes (or resumes) the store; prints its summary."""
    from ..kernels.registry import kernel_spec

    _init_distributed()
    kernel_spec(args.kernel)
    options = {
        "kernel": args.kernel,
        "projection": args.projection,
        "seed": args.seed,
        "projection_dim": args.projection_dim,
        "precision": args.precision,
        "block_size": args.batch_size,
        "layers": args.layers.split(",") if args.layers else None,
    }
    dtype = getattr(torch, args.dtype) if args.dtype else None
    _, store = _featurize(args, options, args.store, dtype)
    print(
        f"{args.store}: {store.num_examples} examples, features {store.metadata['feature_shape']}"
        f" ({store.features.dtype}), data fingerprint {store.metadata['data_fingerprint'][:16]}"
    )
    return 0


def run_score(args: argparse.Namespace) -> int:
    """``captum-ntk score``: top-k (``--k``) or the whole test x train kernel from a store."""
    from ..kernels.registry import kernel_spec
    from ..store import FeatureStore, StoreMismatchError, streaming_topk, write_kernel

    _init_distributed()
    train = FeatureStore.load(args.store)
    meta = train.metadata
    # every feature option comes from the train store: the test features must be the same map
    fields = ("kernel", "projection", "seed", "projection_dim", "layers", "precision")
    options = {k: meta.get(k) for k in fields}
    options["block_size"] = meta["block_size"]
    dtype = getattr(torch, meta["dtype"].replace("torch.", ""))
    fmap, test = _featurize(args, options, args.test_store or args.store / "test", dtype)
    if test.metadata["model_fingerprint"] != meta["model_fingerprint"]:
        raise StoreMismatchError(
            "The model differs from the one the train store was written with (mismatching "
            "field: model_fingerprint); featurize the training data again with this model."
        )
    normalize = kernel_spec(meta["kernel"]).normalized
    device = fmap.function.device
    if args.k is not None:
        scores, indices = streaming_topk(
            test,
            train,
            args.k,
            largest=not args.opponents,
            normalize=normalize,
            device=device,
            show_progress=not args.no_progress,
        )
        if int(os.environ.get("RANK", "0")) == 0:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            np.savez(args.output, indices=indices.numpy(), scores=scores.numpy())
        print(f"top-{args.k} of {train.num_examples} for {test.num_examples} tests: {args.output}")
        return 0
    kernel = write_kernel(
        test,
        train,
        args.output,
        normalize=normalize,
        device=device,
        show_progress=not args.no_progress,
    )
    print(f"kernel {kernel.shape} written to {args.output / 'kernel.npy'}")
    return 0


def run_store_command(args: argparse.Namespace) -> int:
    """Runs ``featurize`` or ``score``; errors in the inputs print a message and return 2."""
    try:
        return run_featurize(args) if args.command == "featurize" else run_score(args)
    except ValueError as error:
        print(f"captum-ntk {args.command}: error: {error}", file=sys.stderr)
        return 2
    finally:
        _leave_distributed()


def _leave_distributed() -> None:
    """Leaves the process group together (a rank tearing gloo down early can abort its peer)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
