"""Finegraining of spatial weights to a finer grid (paper §4.2).

* **Nearest** (sparse one-/multi-hot inputs): every fine cell takes the weight of the coarse
  cell that contains its centre. With an integer ratio each fine cell lies inside exactly one
  coarse cell, so an event discretised at the fine grid meets the weight it met at the coarse
  grid and predictions are *identical*. With a non-integer ratio (8×10 → 20×25) a fine cell can
  straddle two coarse cells and predictions change for events near the boundary.
* **Bilinear** (dense fields averaged over cells): the weights are interpolated as a smooth
  field and multiplied by ``D_r / D_{r+1}``, so that a field averaged over the finer cells
  gives approximately the same prediction. Masked cells (land) neither contribute to the
  interpolation (mask-normalised) nor receive weight; the rescaling uses the numbers of valid
  cells, which equals ``D_r / D_{r+1}`` when nothing is masked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mrtl_lightning.grids import parent_cells
from mrtl_lightning.modes import Grid


def upsample_nearest(tensor: torch.Tensor, axes: Grid, grid: Grid) -> torch.Tensor:
    """Nearest-neighbour upsampling of the grid at ``axes`` (rows, cols) to ``grid``."""
    for axis, size in zip(axes, grid):
        parents = parent_cells(size, tensor.shape[axis]).to(tensor.device)
        tensor = tensor.index_select(axis, parents)
    return tensor


def upsample_bilinear(
    tensor: torch.Tensor,
    axes: Grid,
    grid: Grid,
    mask: torch.Tensor | None = None,
    fine_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mask-aware bilinear upsampling of the grid at ``axes`` to ``grid``, rescaled by D_r/D_{r+1}.

    Args:
        tensor: weights with the coarse grid (H, C) at ``axes``.
        grid: the finer (H', C').
        mask: (H, C) bool, valid coarse cells (None: all).
        fine_mask: (H', C') bool, valid fine cells (None: all); weights there are set to 0.
    """
    rows_axis, cols_axis = axes
    moved = torch.movedim(tensor, (rows_axis, cols_axis), (-2, -1))
    batch_shape, coarse = moved.shape[:-2], moved.shape[-2:]
    planes = moved.reshape(-1, 1, *coarse)
    valid = torch.ones(coarse, dtype=tensor.dtype, device=tensor.device)
    if mask is not None:
        valid = mask.to(tensor.dtype)

    def interpolate(images: torch.Tensor) -> torch.Tensor:
        return F.interpolate(images, size=tuple(grid), mode="bilinear", align_corners=False)

    weight = interpolate(valid[None, None])
    fine = interpolate(planes * valid) / weight.clamp_min(1e-12)
    fine = torch.where(weight > 1e-12, fine, torch.zeros_like(fine))
    fine_valid = torch.ones(grid, dtype=tensor.dtype, device=tensor.device)
    if fine_mask is not None:
        fine_valid = fine_mask.to(tensor.dtype)
    fine = fine * fine_valid
    ratio = valid.sum() / fine_valid.sum().clamp_min(1.0)
    fine = (fine * ratio).reshape(*batch_shape, *grid)
    return torch.movedim(fine, (-2, -1), (rows_axis, cols_axis)).contiguous()


def upsample(
    tensor: torch.Tensor,
    axes: Grid,
    grid: Grid,
    interpolation: str,
    mask: torch.Tensor | None = None,
    fine_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Finegrain the grid at ``axes`` by the mode's scheme ("nearest" or "bilinear")."""
    if tuple(tensor.shape[axis] for axis in axes) == tuple(grid):
        return tensor
    if any(tensor.shape[axis] > size for axis, size in zip(axes, grid)):
        raise ValueError(
            f"cannot finegrain a {tuple(tensor.shape[a] for a in axes)} grid to the coarser "
            f"{tuple(grid)}; every resolution of the schedule must refine the previous one"
        )
    if interpolation == "nearest":
        return upsample_nearest(tensor, axes, grid)
    if interpolation == "bilinear":
        return upsample_bilinear(tensor, axes, grid, mask, fine_mask)
    raise ValueError(f"unknown interpolation {interpolation!r}; expected 'nearest' or 'bilinear'")
