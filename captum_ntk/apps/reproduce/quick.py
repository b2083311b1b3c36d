r"""``captum-ntk reproduce --quick``: every CPU-feasible row at reduced sizes, in minutes.

For a newcomer who wants the table before committing hours: each binary row (MNIST2 MLP, MNIST2
CNN, CIFAR2 CNN, FMNIST2 CNN) trains one network on a balanced subset for a few epochs, then
reports the paper's surrogate and this library's default side by side, as a full run does, with
the LDS of both on the MNIST2 rows (32 halves x 2 shared-seed retrainings). The numbers are those
of the reduced setting, not the paper's (the report says so).

The data of each row is looked for under ``--data-root`` in torchvision's layout
(``MNIST/``, ``FashionMNIST/``, ``cifar-10-batches-py/``, each possibly with ``raw/``), or in
``--data-root`` itself; a row whose files are not found is skipped with a line saying where it
looked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .loaders import find_file
from .report import format_lds, format_summary
from .rows import get_row
from .runner import ReproduceConfig, run_reproduce

__all__ = ["QUICK_ROWS", "QuickSize", "find_data_root", "run_quick"]


@dataclass(frozen=True)
class QuickSize:
    """Reduced sizes of a row: training / test examples (balanced), epochs, the retrained
    networks of its LDS ground truth (0: no LDS) and a learning rate (None: the row's)."""

    n_train: int
    n_test: int
    epochs: int
    lds_subsets: int = 0
    lr: float | None = None


#: The CPU-feasible rows and their quick sizes (BENCHMARKS.md, "Reproductions", has the time of
#: the MNIST rows on a 2-core CPU). The MNIST2 CNN at the script's SGD lr 1e-3 stays at chance
#: for 40 epochs of 1000 images (measured: test accuracy 0.50); lr 0.1 trains it to 0.99 in
#: 10 epochs, so the quick run uses 0.1 (the full row keeps 1e-3). The MLP reaches 0.98 in 50.
QUICK_ROWS: dict[str, QuickSize] = {
    "mlp-mnist2": QuickSize(1000, 400, 50, lds_subsets=32),
    "cnn-mnist2": QuickSize(1000, 400, 10, lds_subsets=32, lr=0.1),
    "cnn-cifar2": QuickSize(1000, 400, 5),
    "cnn-fmnist2": QuickSize(1000, 400, 5),
}

_FOLDERS = {
    "mnist": ("MNIST", "mnist"),
    "fmnist": ("FashionMNIST", "fashion-mnist", "fashion_mnist", "FMNIST", "fmnist"),
    "cifar10": ("cifar-10-batches-py", "CIFAR10", "cifar10"),
}
_MARKERS = {
    "mnist": ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"),
    "fmnist": ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"),
    "cifar10": ("data_batch_1",),
}


def find_data_root(root: Path, dataset: str) -> Path | None:
    r"""The folder holding ``dataset``'s files under ``root`` (torchvision's layout first, then
    ``root`` itself for MNIST / CIFAR-10), or None."""
    root = Path(root).expanduser()
    candidates = [root / name for name in _FOLDERS[dataset]]
    if dataset != "fmnist":  # a bare idx folder is taken to be MNIST, not Fashion-MNIST
        candidates.append(root)
    for folder in candidates:
        try:
            find_file(folder, _MARKERS[dataset], ("", "raw", "cifar-10-batches-py"))
        except FileNotFoundError:
            continue
        return folder
    return None


def run_quick(
    base: ReproduceConfig, rows: list[str] | None = None, log: Callable[[str], None] | None = None
) -> dict[str, dict]:
    r"""Runs the quick rows and prints one combined table.

    Args:
        base (ReproduceConfig): the settings shared by the rows (``data_root``: the root
                searched for each row's data; ``out``: the folder of the per-row outputs).
        rows (list of str, optional): a subset of :data:`QUICK_ROWS`. Default: all.
        log (callable, optional): where lines go. Default: ``print``.

    Returns:
        dict: row name -> its ``results.json`` content (rows skipped for missing data absent).
    """
    log = log or print
    names = rows or list(QUICK_ROWS)
    out = Path(base.out or Path("reproduce_output") / "quick")
    results, tables = {}, []
    for name in names:
        spec, size = get_row(name), QUICK_ROWS[name]
        root = find_data_root(Path(base.data_root), spec.dataset)
        if root is None:
            log(
                f"[quick] {name}: skipped, no {spec.dataset} files under {base.data_root} "
                f"(looked in {', '.join(_FOLDERS[spec.dataset])} and the folder itself)"
            )
            continue
        config = replace(
            base,
            row=name,
            data_root=root,
            n_train=size.n_train,
            n_test=size.n_test,
            epochs=size.epochs,
            lr=size.lr if base.lr is None else base.lr,
            lds_subsets=size.lds_subsets if base.lds_subsets == 0 else base.lds_subsets,
            out=out / name,
            plots=False,
            estimate=False,
        )
        results[name] = run_reproduce(config, log=log)
        tables.append((spec.title, results[name]["summary"]))
    if tables:
        log("\n[quick] reduced sizes (not the paper's): " + "; ".join(
            f"{n}: {QUICK_ROWS[n].n_train} train / {QUICK_ROWS[n].n_test} test, "
            f"{QUICK_ROWS[n].epochs} epochs" for n in results
        ))  # fmt: skip
        for name, (title, summary) in zip(results, tables, strict=True):
            log(format_summary(title, summary))
            for line in format_lds(results[name]["rows"]):
                log(f"  {line}")
    return results
