r"""kGLM training from an (N, N) kernel on disk, streamed in row blocks.

:func:`fit_streamed` minimises exactly the cross-entropy objective of
:class:`~captum_ntk.surrogate.kglm.KernelGLM` (``loss="log_loss"``, hard labels or soft targets,
``class_weight``, ``alpha`` relative to ``alpha_scale``; see :mod:`captum_ntk.surrogate.objectives`)
with the same deterministic L-BFGS from zeros and the same two reparametrisations (kernel
scale, column centring), but never holds the kernel: each evaluation of the objective and its
gradient streams the kernel once in row blocks,

.. math::
    \mathrm{logits}_B = K_{B,:} W^\top + b, \qquad
    \nabla_W = \sum_B G_B^\top K_{B,:} + \alpha W,

accumulated by autograd block by block. Memory: one row block (``block_rows x N`` numbers) plus
``O(C N)`` for the weights, their gradient and the L-BFGS history (``2 x 50`` vectors of
``C N + C`` numbers). Time per iteration: one read of the kernel and ``4 C N^2`` flops; a
memmapped kernel larger than the page cache is read from disk each iteration.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from torch import Tensor
from tqdm import tqdm

from ._validation import parse_targets
from .kglm import KernelGLM
from .objectives import sample_weight

__all__ = ["fit_streamed"]

_TORCH = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


class _RowBlocks:
    """Row blocks of an (N, N) kernel held as a numpy array / memmap or a Tensor."""

    def __init__(self, kernel: Any, block_rows: int, device: torch.device) -> None:
        if isinstance(kernel, (str, Path)):
            kernel = np.load(kernel, mmap_mode="r")
        if isinstance(kernel, Tensor):
            kernel = kernel.detach().cpu().numpy()
        if not isinstance(kernel, np.ndarray) or kernel.ndim != 2:
            raise TypeError("kernel must be an (N, N) numpy array / memmap, Tensor or .npy path.")
        if kernel.shape[0] != kernel.shape[1]:
            raise ValueError(f"kernel must be square (N, N), got shape {kernel.shape}.")
        if kernel.dtype not in _TORCH:
            raise TypeError(f"kernel must be float32 or float64, got {kernel.dtype}.")
        self.kernel = kernel
        self.n = kernel.shape[0]
        self.dtype = _TORCH[kernel.dtype]
        self.block_rows = max(1, int(block_rows))
        self.device = device

    def __iter__(self):
        for start in range(0, self.n, self.block_rows):
            stop = min(start + self.block_rows, self.n)
            rows = torch.from_numpy(np.array(self.kernel[start:stop]))
            if not bool(torch.isfinite(rows).all()):
                raise ValueError(f"kernel rows {start}:{stop} contain NaN or infinite values.")
            yield start, stop, rows.to(self.device)

    def scale(self) -> float:
        """RMS of the diagonal (or max |K| when it is 0), as ``kernel_scale``."""
        diagonal = torch.cat([rows.diagonal(start) for start, _, rows in self])
        scale = float(diagonal.double().pow(2).mean().sqrt())
        if not (scale > 0 and math.isfinite(scale)):
            scale = max(float(rows.abs().max()) for _, _, rows in self)
        return scale if scale > 0 and math.isfinite(scale) else 1.0

    def column_mean(self) -> Tensor:
        """(N,) mean of the rows, in the kernel's dtype."""
        total = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        for _, _, rows in self:
            total += rows.sum(dim=0)
        return total / self.n


def fit_streamed(
    kernel: Any,
    y: Any,
    *,
    alpha: float,
    alpha_scale: float | str | None = "auto",
    class_weight: str | None = "balanced",
    num_classes: int | None = None,
    max_iter: int = 1000,
    tol: float = 1e-7,
    block_rows: int = 4096,
    device: torch.device | str | None = None,
    show_progress: bool = False,
) -> KernelGLM:
    r"""Fits a cross-entropy kGLM on an (N, N) train kernel streamed in row blocks.

    Args:
        kernel (numpy.ndarray, numpy.memmap, Tensor or path): (N, N) float32/float64 train
                kernel, e.g. ``np.load("kernel.npy", mmap_mode="r")`` from a kernel store.
        y (Tensor or ndarray): (N,) integer labels, or soft targets (N, C) / (N,).
        alpha (float): L2 strength relative to the kernel's scale (>= 0), as ``KernelGLM``.
        alpha_scale (str, float or None): ``"auto"`` (RMS of the diagonal), a float, or None.
        class_weight (str or None): ``"balanced"`` or None.
        num_classes (int, optional): total classes for hard labels (all must be present).
        max_iter (int): L-BFGS iterations. Default: 1000.
        tol (float): gradient tolerance of the rescaled problem. Default: 1e-7.
        block_rows (int): kernel rows per block (memory: ``block_rows x N`` numbers).
        device (torch.device or str, optional): default: CUDA when available, else CPU.
        show_progress (bool): tqdm bar over objective evaluations.

    Returns:
        KernelGLM: fitted (``coef_`` (n_logits, N), ``intercept_``), usable as any KernelGLM.

    Raises:
        ValueError: ``alpha="auto"`` (needs held-out sub-kernels: choose alpha in memory on a
                subset), targets that are not labels or probabilities (the squared loss needs
                an N x N solve: use KernelGLM), or absent classes.
    """
    if isinstance(alpha, str) or not (alpha >= 0 and math.isfinite(alpha)):
        raise ValueError(
            f"fit_streamed needs a fixed alpha >= 0, got {alpha!r}; choose it with "
            "KernelGLM(alpha='auto') on a subset that fits in memory."
        )
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    blocks = _RowBlocks(kernel, block_rows, device)
    targets = parse_targets(y, blocks.n, num_classes, "log_loss")
    if targets.present.numel() < targets.classes.numel():
        raise ValueError(
            "some classes have no training example; fit_streamed needs every class present "
            "(KernelGLM handles absent classes in memory)."
        )
    glm = KernelGLM(
        alpha=alpha,
        alpha_scale=alpha_scale,
        class_weight=class_weight,
        max_iter=max_iter,
        tol=tol,
        device=device,
    )
    glm._check_params()
    kernel_scale = blocks.scale()
    sigma = {"auto": kernel_scale, None: 1.0}.get(alpha_scale, alpha_scale)  # type: ignore[arg-type]
    weight = sample_weight(targets.group, int(targets.classes.numel()), class_weight)
    coef, intercept, n_iter = _lbfgs(
        blocks,
        targets,
        weight,
        float(alpha) * float(sigma) ** 2,
        kernel_scale,
        glm,
        show_progress,
    )
    glm.coef_, glm.intercept_ = coef.cpu(), intercept.cpu()
    glm.classes_ = targets.classes
    glm.alpha_, glm.kernel_scale_ = float(alpha), float(sigma)
    glm.penalty_ = float(alpha) * float(sigma) ** 2
    glm.target_kind_, glm.n_train_, glm.n_iter_ = targets.kind, blocks.n, n_iter
    glm.backend_, glm.cv_results_ = "torch", None
    return glm


def _lbfgs(blocks, targets, weight, penalty, scale, glm, show_progress):
    """The L-BFGS of ``objectives._lbfgs`` with a streamed closure."""
    dtype, device, n = blocks.dtype, blocks.device, blocks.n
    weight = (weight / n).to(device=device, dtype=dtype)
    values = targets.values.to(device)
    target = values if targets.kind == "labels" and not targets.one_logit else values.to(dtype)
    scaled_alpha = penalty / scale**2
    column_mean = blocks.column_mean() / scale
    with torch.inference_mode(False), torch.enable_grad():
        coef = torch.zeros(targets.n_out, n, dtype=dtype, device=device, requires_grad=True)
        shifted = torch.zeros(targets.n_out, dtype=dtype, device=device, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [coef, shifted],
            lr=1.0,
            max_iter=glm.max_iter,
            max_eval=glm.max_iter * 2,
            tolerance_grad=glm.tol,
            tolerance_change=min(glm.tol * 1e-3, 10 * torch.finfo(dtype).eps),
            history_size=50,
            line_search_fn="strong_wolfe",
        )
        bar = tqdm(desc="streamed kGLM evaluations", disable=not show_progress)

        def closure() -> Tensor:
            optimizer.zero_grad()
            total = torch.zeros((), dtype=dtype, device=device)
            for start, stop, rows in blocks:
                bias = shifted - coef @ column_mean
                logits = torch.addmm(bias, rows, coef.T, alpha=1.0 / scale)
                if targets.one_logit:
                    losses = F.binary_cross_entropy_with_logits(
                        logits[:, 0], target[start:stop], reduction="none"
                    )
                else:
                    losses = F.cross_entropy(logits, target[start:stop], reduction="none")
                loss = (losses * weight[start:stop]).sum()
                loss.backward()
                total += loss.detach()
            reg = 0.5 * scaled_alpha * (coef * coef).sum()
            reg.backward()
            bar.update(1)
            return total + reg.detach()

        optimizer.step(closure)
        bar.close()
    n_iter = int(optimizer.state[coef].get("n_iter", 0))
    if n_iter >= glm.max_iter:
        warnings.warn(
            f"fit_streamed reached max_iter={glm.max_iter} L-BFGS iterations before the "
            f"gradient fell below tol={glm.tol}; increase max_iter or alpha.",
            ConvergenceWarning,
            stacklevel=3,
        )
    with torch.no_grad():
        intercept = shifted - coef @ column_mean
    return coef.detach() / scale, intercept.detach(), n_iter
