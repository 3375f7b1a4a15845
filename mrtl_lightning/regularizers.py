"""L2 and spatial RBF regularisation (paper eqs. 3–4) without the D×D kernel matrix.

The RBF kernel of eq. 4, ``K[d, d'] = exp(-||d - d'||² / σ)``, on a regular grid factorises
into one kernel per axis, ``K = K_rows ⊗ K_cols``, because the squared distance is the sum of
the squared row and column offsets. Applying ``K`` to weights therefore takes two small matrix
products along the grid's two axes: O(D·(H + C)) time and O(H² + C²) memory instead of O(D²).

Cell distances are measured in fractions of the domain along each axis (cell centres at
``(i + 0.5) / H``), so the same σ describes the same physical smoothness at every resolution.

Eq. 3 sums ``K[d, d'] ||W_d − W_d'||²`` over all pairs of cells ``d, d'``, where ``W_d`` is the
slice of ``W`` at cell ``d``. Expanding the square with ``κ_d = Σ_d' K[d, d']``:

    R = 2 Σ_d κ_d ||W_d||² − 2 Σ_{d,d'} K[d, d'] <W_d, W_d'>.

Masked cells (land, ice) take no part: they are zeroed in ``W`` and left out of ``κ``.

**Normalisation across resolutions.** The paper's sums grow with the number of cells, so a
fixed λ would regularise fine grids more than coarse ones. We divide both terms so that they
do not change when weights are finegrained: sums over the cells of a spatial mode become
means, and weights of dense (averaged-field) modes, which finegraining scales by
``D_r / D_{r+1}``, are first multiplied by ``D``. :func:`mode_scale` gives the factor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mrtl_lightning.grids import cell_centres
from mrtl_lightning.modes import Grid


def axis_kernel(size: int, sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """(size, size) RBF kernel between the cell centres of one axis, eq. 4 along that axis."""
    if sigma <= 0:
        raise ValueError(f"sigma {sigma} must be positive (the RBF width of eq. 4)")
    centres = cell_centres(size)
    squared = (centres[:, None] - centres[None, :]) ** 2
    return torch.exp(-squared / sigma).to(dtype=dtype, device=device)


def apply_along(tensor: torch.Tensor, matrix: torch.Tensor, axis: int) -> torch.Tensor:
    """Multiply ``tensor`` by the square ``matrix`` along ``axis``, without moving axes.

    The tensor is viewed as (before, axis, after) so the product is one batched matmul.
    """
    size = tensor.shape[axis]
    before = math.prod(tensor.shape[:axis])
    viewed = tensor.reshape(before, size, -1)
    return torch.matmul(matrix, viewed).reshape(tensor.shape)


def apply_kernel(tensor: torch.Tensor, kernels: tuple[torch.Tensor, torch.Tensor], axes: Grid):
    """Apply the separable grid kernel ``K_rows ⊗ K_cols`` to the two axes ``axes``."""
    rows_axis, cols_axis = axes
    return apply_along(apply_along(tensor, kernels[0], rows_axis), kernels[1], cols_axis)


def smooth_accumulate(
    weight: torch.Tensor,
    out: torch.Tensor,
    workspace: torch.Tensor,
    axes: Grid,
    kernels: tuple[torch.Tensor, torch.Tensor],
    alpha: float,
) -> None:
    """``out += alpha · (K_rows ⊗ K_cols) weight`` along ``axes``, in place, allocation-free.

    The column kernel is applied into ``workspace`` (same shape as ``weight``); the row kernel
    then accumulates straight into ``out`` (``addmm_``/``baddbmm_``), so the two passes read and
    write each full-size tensor once and no temporary of that size is created.
    """
    rows_axis, cols_axis = axes
    shape = weight.shape
    before, size, after = (
        math.prod(shape[:cols_axis]),
        shape[cols_axis],
        math.prod(shape[cols_axis + 1 :]),
    )
    if after == 1:
        torch.matmul(weight.view(before, size), kernels[1], out=workspace.view(before, size))
    else:
        torch.matmul(
            kernels[1], weight.view(before, size, after), out=workspace.view(before, size, after)
        )
    before, size, after = (
        math.prod(shape[:rows_axis]),
        shape[rows_axis],
        math.prod(shape[rows_axis + 1 :]),
    )
    if before == 1:
        out.view(size, after).addmm_(kernels[0], workspace.view(size, after), alpha=alpha)
    else:
        out.view(before, size, after).baddbmm_(
            kernels[0].expand(before, size, size), workspace.view(before, size, after), alpha=alpha
        )


def kernel_row_sums(
    kernels: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None
) -> torch.Tensor:
    """(H, C) ``κ_d = Σ_d' K[d, d']`` over valid cells ``d'`` (all cells when no mask)."""
    if mask is None:
        return kernels[0].sum(1)[:, None] * kernels[1].sum(1)[None, :]
    # Both axis kernels are symmetric: K_rows · mask · K_cols.
    return kernels[0] @ mask.to(kernels[0].dtype) @ kernels[1]


def mode_scale(num_cells: int, dense: bool) -> float:
    """Factor that makes one spatial mode's sums resolution-invariant (module docstring).

    A sum over the mode's cells becomes a mean (``1 / D``); dense modes' weights, which
    scale as ``1 / D`` under finegraining, are measured as ``D · W`` (``D²`` on squares).
    """
    return float(num_cells) if dense else 1.0 / num_cells


class _SpatialPenalty(torch.autograd.Function):
    """Eq. 3 for one spatial mode of a full-rank tensor, with its gradient from the forward.

    The gradient ``4 (κ ⊙ W − K W)`` reuses the kernel product of the forward pass, so the
    backward costs one multiply-add instead of two more kernel passes.
    """

    @staticmethod
    def forward(ctx, weight, kernels_rows, kernels_cols, kappa, mask, axes):
        masked = weight if mask is None else weight * mask
        smoothed = apply_kernel(masked, (kernels_rows, kernels_cols), axes)
        weighted = masked * kappa
        value = 2.0 * (torch.sum(weighted * masked) - torch.sum(smoothed * masked))
        gradient = 4.0 * (weighted - smoothed)
        if mask is not None:
            gradient = gradient * mask
        ctx.save_for_backward(gradient)
        return value

    @staticmethod
    def backward(ctx, grad_output):
        (gradient,) = ctx.saved_tensors
        return grad_output * gradient, None, None, None, None, None


def broadcast_plane(plane: torch.Tensor, ndim: int, axes: Grid) -> torch.Tensor:
    """View an (H, C) plane so it broadcasts against a tensor whose grid sits at ``axes``."""
    shape = [1] * ndim
    shape[axes[0]], shape[axes[1]] = plane.shape
    return plane.reshape(shape)


def full_rank_spatial_penalty(
    weight: torch.Tensor,
    axes: Grid,
    kernels: tuple[torch.Tensor, torch.Tensor],
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 3 for the spatial mode at ``axes`` (rows, cols) of a full-rank weight tensor.

    Args:
        weight: the weight tensor, any number of modes; the mode's grid occupies ``axes``.
        kernels: per-axis kernels from :func:`axis_kernel`, (H, H) and (C, C).
        mask: (H, C) bool, True where the cell has data; None when every cell has.

    Returns:
        The unnormalised sum of eq. 3 (a scalar).
    """
    kappa = broadcast_plane(kernel_row_sums(kernels, mask), weight.ndim, axes)
    mask_b = None if mask is None else broadcast_plane(mask.to(weight.dtype), weight.ndim, axes)
    return _SpatialPenalty.apply(weight, kernels[0], kernels[1], kappa, mask_b, axes)


def cp_spatial_penalty(
    factor: torch.Tensor,
    other_grams: Sequence[torch.Tensor],
    kernels: tuple[torch.Tensor, torch.Tensor],
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 3 for one spatial mode of a CP tensor, from its factor and the others' Gram matrices.

    With ``W = Σ_k F[:, k] ⊗ (other factors)_k``, ``<W_d, W_d'> = Σ_kl F[d, k] F[d', l] G_kl``
    where ``G`` is the Hadamard product of the other modes' Gram matrices, so

        R = 2 Σ_kl G_kl (Σ_d κ_d F[d, k] F[d, l] − (Fᵀ K F)_kl).

    Args:
        factor: (H, C, K) factor of the spatial mode.
        other_grams: (K, K) Gram matrices ``Fᵀ F`` of every other mode.
        kernels, mask: as in :func:`full_rank_spatial_penalty`.
    """
    if mask is not None:
        factor = factor * mask[..., None].to(factor.dtype)
    kappa = kernel_row_sums(kernels, mask)
    smoothed = apply_kernel(factor, kernels, (0, 1))  # (H, C, K)
    flat = factor.reshape(-1, factor.shape[-1])
    cross = flat.T @ (kappa.reshape(-1, 1) * flat) - flat.T @ smoothed.reshape(flat.shape)
    others = torch.ones_like(cross)
    for gram in other_grams:
        others = others * gram
    return 2.0 * torch.sum(others * cross)
