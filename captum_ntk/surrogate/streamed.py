r"""kGLM training from an (N, N) kernel on disk, streamed in row blocks.

:func:`fit_streamed` minimises the objectives of
:class:`~captum_ntk.surrogate.kglm.KernelGLM` (``alpha`` relative to ``alpha_scale``,
``class_weight``, unpenalised intercept; see :mod:`captum_ntk.surrogate.objectives`), to the
iterative solver's tolerance ``tol``, but never holds the kernel: every pass reads it once in
row blocks ``K_B`` (``block_rows x N``).

- ``loss="log_loss"`` (hard labels or soft targets): the same deterministic L-BFGS from zeros and
  the same two reparametrisations (kernel scale, column centring); each evaluation of the
  objective and its gradient is one pass,

  .. math::
      \mathrm{logits}_B = K_{B,:} W^\top + b, \qquad
      \nabla_W = \sum_B G_B^\top K_{B,:} + \alpha W,

  accumulated by autograd block by block.
- ``loss="squared"`` (real targets, e.g. logits or probabilities): conjugate gradients, one
  independent CG per target column, on the normal equations that
  :class:`~captum_ntk.surrogate.objectives.SquaredSystem` solves directly,
  :math:`(K_c^\top D K_c + \alpha I)\,W^\top = K_c^\top D (Z - \bar z)` with
  :math:`K_c = K/s - 1\mu^\top`, in float64. Each iteration is one pass,
  :math:`u_B = K_{c,B} p`, :math:`q \mathrel{+}= K_{c,B}^\top D_B u_B`; the iteration stops when
  every column's residual :math:`r_j` is below ``tol`` times its right-hand side's norm
  :math:`\|b_j\|`. The smallest eigenvalue of the system is at least the rescaled penalty
  :math:`a = \alpha\sigma^2/s^2`, so column :math:`j` of :math:`W^\top s` is within
  :math:`\|r_j\| / a \le \mathrm{tol}\,\|b_j\| / a` (Euclidean norm) of the exact solve:
  a small ``alpha`` needs a small ``tol`` (at ``tol=1e-7``, 240 examples: 8.6e-7 relative at
  ``alpha=1e-2``, 1.7e-4 at ``alpha=1e-6``). A warm start is used for a column only where its
  residual is below :math:`\|b_j\|` (better than zeros); the other columns start from zeros.

Both start with one pass for the kernel's scale and (weighted) column means (and the squared
loss's right-hand side), and can be warm-started from a previous fit.

Memory: one row block (``block_rows x N`` numbers, twice that in float64 for the squared loss)
plus ``O(C N)`` for the weights, gradients and the L-BFGS history (``2 x 50`` vectors of
``C N + C`` numbers) or the CG vectors (4 of ``N x m``). Time per pass: one read of the kernel
and about ``4 C N^2`` flops. A memmapped kernel (or a ``.npy`` path) is read with plain file
reads into a block buffer, so the resident memory is the block, not the file; a file larger
than the page cache is read from disk on every pass.
"""

from __future__ import annotations

import math
import mmap
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from torch import Tensor
from tqdm import tqdm

from ._validation import Targets, parse_targets
from .kglm import KernelGLM
from .objectives import sample_weight

__all__ = ["fit_streamed"]

_TORCH = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
_LOSSES = ("log_loss", "squared")


class _RowBlocks:
    """Row blocks of an (N, N) kernel held as a numpy array / memmap, a Tensor or a .npy file.

    Attributes:
        passes (list of float): wall-clock seconds of every finished pass (read and the work
                    done on the blocks in between).
    """

    def __init__(self, kernel: Any, block_rows: int, device: torch.device) -> None:
        if isinstance(kernel, (str, Path)):
            kernel = np.load(kernel, mmap_mode="r")
        if isinstance(kernel, Tensor):
            kernel = kernel.detach().cpu().numpy()
        if not isinstance(kernel, np.ndarray) or kernel.ndim != 2:
            shape = getattr(kernel, "shape", None)
            raise TypeError(
                "kernel must be an (N, N) numpy array / memmap, Tensor or .npy path, got "
                f"{type(kernel).__name__} with shape {shape}."
            )
        if kernel.shape[0] != kernel.shape[1]:
            raise ValueError(f"kernel must be square (N, N), got shape {kernel.shape}.")
        if kernel.dtype not in _TORCH:
            raise TypeError(f"kernel must be float32 or float64, got {kernel.dtype}.")
        if isinstance(block_rows, bool) or int(block_rows) != block_rows or block_rows < 1:
            raise ValueError(f"block_rows must be a positive integer, got {block_rows!r}.")
        self.kernel = kernel
        self.n = kernel.shape[0]
        self.dtype = _TORCH[kernel.dtype]
        self.block_rows = int(block_rows)
        self.device = device
        self.passes: list[float] = []
        # A whole-file memmap (not a view of one) is read with file reads: no mapped pages
        # accumulate in the process's resident memory.
        whole_file = isinstance(kernel, np.memmap) and isinstance(kernel.base, mmap.mmap)
        self.file = kernel.filename if whole_file and kernel.flags.c_contiguous else None
        self.offset = int(kernel.offset) if self.file else 0
        self._buffers: dict[str, Tensor] = {}

    def _buffer(self, name: str, rows: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A block-sized buffer kept across blocks and passes (fresh pages are slow to map)."""
        buffer = self._buffers.get(name)
        if buffer is None:
            size = min(self.block_rows, self.n)
            buffer = torch.empty(size, self.n, dtype=dtype, device=device)
            self._buffers[name] = buffer
        return buffer[:rows]

    def _read(self, handle: Any, start: int, stop: int) -> Tensor:
        """Rows ``start:stop`` (valid until the next block is read)."""
        block = self.kernel[start:stop]
        in_memory = block.flags.c_contiguous and block.flags.writeable
        if handle is None and in_memory and not isinstance(block, np.memmap):
            return torch.from_numpy(block)  # in memory already: no copy
        rows = self._buffer("read", stop - start, self.dtype, torch.device("cpu"))
        if handle is None:
            np.copyto(rows.numpy(), block)
            return rows
        view = memoryview(rows.numpy()).cast("B")
        handle.seek(self.offset + start * self.n * rows.element_size())
        done = 0
        while done < len(view):
            count = handle.readinto(view[done:])
            if not count:
                raise ValueError(f"kernel file {self.file} is shorter than its (N, N) header.")
            done += count
        return rows

    def __iter__(self) -> Iterator[tuple[int, int, Tensor]]:
        """Yields ``(start, stop, rows)``; ``rows`` may be overwritten by the next block."""
        begin = time.perf_counter()
        handle = open(self.file, "rb", buffering=0) if self.file else None  # noqa: SIM115
        try:
            for start in range(0, self.n, self.block_rows):
                stop = min(start + self.block_rows, self.n)
                rows = self._read(handle, start, stop)
                low, high = torch.aminmax(rows)  # NaN propagates; far cheaper than isfinite
                if not (math.isfinite(float(low)) and math.isfinite(float(high))):
                    raise ValueError(f"kernel rows {start}:{stop} contain NaN or infinite values.")
                yield start, stop, rows.to(self.device)
        finally:
            if handle is not None:
                handle.close()
        self.passes.append(time.perf_counter() - begin)

    def float64(self, rows: Tensor) -> Tensor:
        """``rows`` in float64 (a reused buffer for float32 kernels)."""
        if rows.dtype == torch.float64:
            return rows
        return self._buffer("float64", rows.shape[0], torch.float64, self.device).copy_(rows)

    def summary(self, vectors: Tensor) -> tuple[float, Tensor]:
        r"""One pass: ``kernel_scale`` (RMS of the diagonal) and ``K^T vectors`` in float64.

        Args:
            vectors (Tensor): ``(N, c)`` float64 on ``device``.

        Returns:
            tuple: the scale (max ``|K|`` when the diagonal is 0, else 1) and ``(N, c)``.
        """
        total = torch.zeros(self.n, vectors.shape[1], dtype=torch.float64, device=self.device)
        square_sum = 0.0
        for start, stop, rows in self:
            square_sum += float(rows.diagonal(start).double().pow(2).sum())
            total.addmm_(self.float64(rows).T, vectors[start:stop])
        scale = math.sqrt(square_sum / self.n)
        if not (scale > 0 and math.isfinite(scale)):
            scale = max(float(rows.abs().max()) for _, _, rows in self)
        return (scale if scale > 0 and math.isfinite(scale) else 1.0), total


def fit_streamed(
    kernel: Any,
    y: Any,
    *,
    alpha: float,
    alpha_scale: float | str | None = "auto",
    loss: str = "log_loss",
    class_weight: str | None = "balanced",
    num_classes: int | None = None,
    max_iter: int = 1000,
    tol: float = 1e-7,
    block_rows: int = 4096,
    warm_start: KernelGLM | None = None,
    device: torch.device | str | None = None,
    show_progress: bool = False,
) -> KernelGLM:
    r"""Fits a kGLM on an (N, N) train kernel streamed in row blocks.

    Args:
        kernel (numpy.ndarray, numpy.memmap, Tensor or path): (N, N) float32/float64 train
                kernel, e.g. ``np.load("kernel.npy", mmap_mode="r")`` from a kernel store.
        y (Tensor or ndarray): ``log_loss``: (N,) integer labels, or soft targets (N, C) /
                (N,); ``squared``: real targets (N,) or (N, m).
        alpha (float): L2 strength relative to the kernel's scale (>= 0), as ``KernelGLM``.
        alpha_scale (str, float or None): ``"auto"`` (RMS of the diagonal), a float, or None.
        loss (str): ``"log_loss"`` (L-BFGS) or ``"squared"`` (conjugate gradients).
        class_weight (str or None): ``"balanced"`` or None.
        num_classes (int, optional): total classes for hard labels (all must be present), or
                the width check of ``KernelGLM`` for soft / real targets.
        max_iter (int): L-BFGS or CG iterations. Default: 1000.
        tol (float): ``log_loss``: largest gradient entry of the rescaled problem; ``squared``:
                residual of each column of the normal equations relative to its right-hand
                side, which bounds the coefficients' error by ``tol * |b_j| / a`` (module
                docstring): lower it for small ``alpha``. Default: 1e-7.
        block_rows (int): kernel rows per block (memory: ``block_rows x N`` numbers).
        warm_start (KernelGLM, optional): a fit with the same loss and N (e.g. at a nearby
                ``alpha``) whose ``coef_`` / ``intercept_`` start the iterations; needs
                ``alpha > 0``.
        device (torch.device or str, optional): default: CUDA when available, else CPU.
        show_progress (bool): tqdm bar over the passes over the kernel.

    Returns:
        KernelGLM: fitted (``coef_`` (n_logits, N), ``intercept_``), usable as any KernelGLM;
        ``n_iter_`` iterations and ``pass_seconds_``, the seconds of each pass over the kernel.

    Raises:
        ValueError: ``alpha="auto"`` (needs held-out sub-kernels: choose alpha in memory on a
                subset), targets that do not fit the loss, absent classes, a kernel that is not
                square or holds NaN / inf, a ``warm_start`` of another shape, or a
                ``warm_start`` with ``alpha=0``.
    """
    glm = _estimator(alpha, alpha_scale, loss, class_weight, max_iter, tol)
    glm.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    blocks = _RowBlocks(kernel, block_rows, glm.device)
    targets = parse_targets(y, blocks.n, num_classes, loss)
    if targets.present.numel() < targets.classes.numel():
        raise ValueError(
            "some classes have no training example; fit_streamed needs every class present "
            "(KernelGLM handles absent classes in memory)."
        )
    init = _warm_start(warm_start, loss, targets.n_out, blocks.n, alpha)
    weight = sample_weight(targets.group, int(targets.classes.numel()), class_weight)
    solve = _conjugate_gradients if loss == "squared" else _lbfgs
    with tqdm(desc=f"streamed kGLM ({loss}) passes", disable=not show_progress) as bar:
        blocks.passes = _Counted(bar)
        coef, intercept, n_iter, scale = solve(blocks, targets, weight, alpha, glm, init)
    glm.coef_, glm.intercept_ = coef.cpu(), intercept.cpu()
    glm.classes_, glm.target_kind_, glm.n_train_ = targets.classes, targets.kind, blocks.n
    glm.alpha_, glm.kernel_scale_ = float(alpha), _sigma(glm, scale)
    glm.penalty_ = float(alpha) * glm.kernel_scale_**2
    glm.n_iter_, glm.backend_, glm.cv_results_ = n_iter, "torch", None
    glm.pass_seconds_ = list(blocks.passes)
    return glm


def _estimator(
    alpha: float, alpha_scale: Any, loss: str, class_weight: Any, max_iter: int, tol: float
) -> KernelGLM:
    """The (unfitted) KernelGLM that ``fit_streamed`` fills, its options checked."""
    if isinstance(alpha, str) or not (alpha >= 0 and math.isfinite(alpha)):
        raise ValueError(
            f"fit_streamed needs a fixed alpha >= 0, got {alpha!r}; choose it with "
            "KernelGLM(alpha='auto') on a subset that fits in memory."
        )
    if loss not in _LOSSES:
        raise ValueError(f"loss must be one of {_LOSSES}, got {loss!r}.")
    glm = KernelGLM(
        alpha=alpha,
        alpha_scale=alpha_scale,
        loss=loss,
        class_weight=class_weight,
        max_iter=max_iter,
        tol=tol,
    )
    glm._check_params()
    return glm


class _Counted(list):
    """A list of pass times that advances a tqdm bar on each append."""

    def __init__(self, bar: tqdm) -> None:
        super().__init__()
        self.bar = bar

    def append(self, seconds: float) -> None:
        super().append(seconds)
        self.bar.update(1)


def _warm_start(
    glm: KernelGLM | None, loss: str, n_out: int, n: int, alpha: float
) -> tuple[Tensor, Tensor]:
    """``(coef (n_out, N), intercept (n_out,))`` float64 of a previous fit, or zeros."""
    if glm is None:
        return torch.zeros(n_out, n, dtype=torch.float64), torch.zeros(n_out, dtype=torch.float64)
    if not isinstance(glm, KernelGLM) or not hasattr(glm, "coef_"):
        raise TypeError("warm_start must be a fitted KernelGLM (e.g. from fit_streamed).")
    if alpha == 0:
        raise ValueError(
            "warm_start needs alpha > 0: at alpha=0 the minimiser is not unique (any direction "
            "the centred kernel maps to 0 can be added), and iterations from a warm start end "
            "at the one nearest it, not at the minimum-norm solution KernelGLM returns. Drop "
            "warm_start (a start from zeros reaches the minimum-norm one) or use alpha > 0."
        )
    if tuple(glm.coef_.shape) != (n_out, n) or getattr(glm, "loss", loss) != loss:
        raise ValueError(
            f"warm_start has coef_ of shape {tuple(glm.coef_.shape)} and loss "
            f"{getattr(glm, 'loss', None)!r}; this fit needs ({n_out}, {n}) and {loss!r}: "
            "warm-start from a fit on the same kernel, targets and loss."
        )
    return glm.coef_.detach().cpu().double(), glm.intercept_.detach().cpu().double()


def _sigma(glm: KernelGLM, scale: float) -> float:
    """The ``alpha_scale`` in use: the kernel's ``scale`` for ``"auto"``, 1 for None."""
    return float({"auto": scale, None: 1.0}.get(glm.alpha_scale, glm.alpha_scale))  # type: ignore[arg-type]


def _penalty(glm: KernelGLM, alpha: float, scale: float) -> float:
    """The penalty of the rescaled problem (kernel divided by ``scale``)."""
    return float(alpha) * _sigma(glm, scale) ** 2 / scale**2


def _lbfgs(blocks, targets, weight, alpha, glm, init):
    """The L-BFGS of ``objectives._lbfgs`` with a streamed closure."""
    dtype, device, n = blocks.dtype, blocks.device, blocks.n
    ones = torch.ones(n, 1, dtype=torch.float64, device=device)
    scale, column_sum = blocks.summary(ones)
    column_mean = (column_sum[:, 0] / n / scale).to(dtype)
    scaled_alpha = _penalty(glm, alpha, scale)
    weight = (weight / n).to(device=device, dtype=dtype)
    values = targets.values.to(device)
    target = values if targets.kind == "labels" and not targets.one_logit else values.to(dtype)
    with torch.inference_mode(False), torch.enable_grad():
        coef = (init[0] * scale).to(device, dtype).requires_grad_(True)
        shifted = (init[1].to(device, dtype) + coef.detach() @ column_mean).requires_grad_(True)
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
            return total + reg.detach()

        optimizer.step(closure)
    n_iter = int(optimizer.state[coef].get("n_iter", 0))
    _warn_max_iter(n_iter, glm, "L-BFGS", "the gradient")
    with torch.no_grad():
        intercept = shifted - coef @ column_mean
    return coef.detach() / scale, intercept.detach(), n_iter, scale


def _warn_max_iter(n_iter: int, glm: KernelGLM, method: str, quantity: str) -> None:
    if n_iter >= glm.max_iter:
        warnings.warn(
            f"fit_streamed reached max_iter={glm.max_iter} {method} iterations before "
            f"{quantity} fell below tol={glm.tol}; increase max_iter or alpha.",
            ConvergenceWarning,
            stacklevel=4,
        )


class _NormalEquations:
    r"""Streamed products with ``K_c^T D K_c + a I`` (float64, kernel divided by its scale).

    Args:
        blocks (_RowBlocks): the kernel.
        targets (Targets): real targets.
        weight (Tensor): ``(N,)`` example weights.
    """

    def __init__(self, blocks: _RowBlocks, targets: Targets, weight: Tensor) -> None:
        n, device = blocks.n, blocks.device
        self.blocks = blocks
        z = targets.values.to(device=device, dtype=torch.float64).reshape(n, -1)
        self.d = (weight.to(device=device, dtype=torch.float64) / n)[:, None]
        self.scale, sums = blocks.summary(torch.cat([self.d, self.d * z], dim=1))
        sums /= self.scale  # k^T [d, d z] with k = K / scale
        total = self.d.sum()
        self.mean = sums[:, 0] / total  # weighted column means mu
        self.z_mean = (self.d * z).sum(dim=0) / total
        # K_c^T D (z - z_mean), as sum_i d_i (z_i - z_mean) = 0 drops the mu term.
        self.rhs = sums[:, 1:] - sums[:, :1] * self.z_mean

    def apply(self, vectors: Tensor, penalty: float) -> Tensor:
        """``(K_c^T D K_c + penalty I) vectors`` for ``(N, m)`` vectors, one pass."""
        out = torch.zeros_like(vectors)
        shift = self.mean @ vectors
        weighted_sum = torch.zeros_like(shift)
        for start, stop, rows in self.blocks:
            k = self.blocks.float64(rows)
            weighted = self.d[start:stop] * ((k @ vectors) / self.scale - shift)
            out.addmm_(k.T, weighted, alpha=1.0 / self.scale)
            weighted_sum += weighted.sum(dim=0)
        return out - self.mean[:, None] * weighted_sum + penalty * vectors


def _conjugate_gradients(blocks, targets, weight, alpha, glm, init):
    """Squared-loss kGLM: one CG per target column on the streamed normal equations."""
    system = _NormalEquations(blocks, targets, weight)
    scale, penalty = system.scale, _penalty(glm, alpha, system.scale)
    solution = (init[0].T * scale).to(system.rhs.device)
    residual = system.rhs.clone()
    threshold = glm.tol * system.rhs.norm(dim=0)
    if bool(solution.any()):
        residual -= system.apply(solution, penalty)
        # A warm start no better than zeros (e.g. on a right-hand side of 0, whose threshold is
        # 0) would have to shrink its residual past any relative tolerance: start from zeros.
        cold = residual.norm(dim=0) >= system.rhs.norm(dim=0)
        solution[:, cold], residual[:, cold] = 0.0, system.rhs[:, cold]
    direction, squared = residual.clone(), residual.pow(2).sum(dim=0)
    n_iter = 0
    while n_iter < glm.max_iter:
        active = squared.sqrt() > threshold
        if not bool(active.any()):
            break
        product = system.apply(direction, penalty)
        curvature = (direction * product).sum(dim=0)
        step = torch.where(active & (curvature > 0), squared / curvature, 0.0)
        solution += step * direction
        residual -= step * product
        new_squared = residual.pow(2).sum(dim=0)
        beta = torch.where(active & (squared > 0), new_squared / squared, 0.0)
        direction = residual + beta * direction
        squared, n_iter = new_squared, n_iter + 1
    if bool((squared.sqrt() > threshold).any()):
        _warn_max_iter(n_iter, glm, "conjugate-gradient", "the relative residual")
    coef = solution.T / scale
    intercept = system.z_mean - solution.T @ system.mean
    return coef.to(blocks.dtype), intercept.to(blocks.dtype), n_iter, scale
