"""Geometry of regular 2-D grids over a fixed domain: cells, discretisation and regridding.

Every grid of a spatial mode covers the same rectangular domain, whatever its resolution.
Positions are given as fractions of the domain along each axis, in ``[0, 1)``; cell ``(i, j)``
of an ``H × W`` grid covers rows ``[i/H, (i+1)/H)`` and columns ``[j/W, (j+1)/W)`` and is
stored at flat index ``i * W + j``.
"""

from __future__ import annotations

import numpy as np
import torch

from mrtl_lightning.modes import Grid


def cell_centres(size: int) -> torch.Tensor:
    """Centres of ``size`` equal cells of the unit interval, shape (size,)."""
    return (torch.arange(size, dtype=torch.float64) + 0.5) / size


def discretise(position: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Flat index of the cell of ``grid`` that holds each position.

    Args:
        position: (..., 2) fractions of the domain as (row, column), in ``[0, 1)``; values on
            the far edge (exactly 1) fall in the last cell.

    Returns:
        (...,) long tensor of flat cell indices ``row * cols + col``.
    """
    rows, cols = grid
    row = torch.clamp((position[..., 0] * rows).floor().long(), 0, rows - 1)
    col = torch.clamp((position[..., 1] * cols).floor().long(), 0, cols - 1)
    return row * cols + col


def parent_cells(fine: int, coarse: int) -> torch.Tensor:
    """For each of ``fine`` cells of an axis, the ``coarse`` cell that contains its centre.

    With an integer ratio this is the exact parent (``i // ratio``), so nearest-neighbour
    upsampling through it represents the same piecewise-constant function at the finer grid.
    """
    return torch.clamp((cell_centres(fine) * coarse).floor().long(), 0, coarse - 1)


def overlap_matrix(coarse: int, fine: int) -> np.ndarray:
    """Length of the overlap of each coarse cell with each fine cell of the unit interval.

    Returns:
        (coarse, fine) array; row ``i`` sums to ``1 / coarse``. Works for any two sizes, so a
        conservative (area-aware) regridding between grids whose ratio is not an integer uses
        the same formula as block averaging.
    """
    coarse_edges = np.arange(coarse + 1) / coarse
    fine_edges = np.arange(fine + 1) / fine
    lower = np.maximum(coarse_edges[:-1, None], fine_edges[None, :-1])
    upper = np.minimum(coarse_edges[1:, None], fine_edges[None, 1:])
    return np.clip(upper - lower, 0.0, None)


def conservative_regrid(
    field: np.ndarray, grid: Grid, row_weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted average of a gridded field onto a coarser grid of the same domain.

    Each target cell is the average of the source cells it overlaps, weighted by overlap area
    (times ``row_weights``, e.g. the cosine of latitude) and counting only valid (non-NaN)
    source cells. Integer and non-integer ratios go through the same overlap weights.

    Args:
        field: (..., rows, cols) source values, NaN where there is no data (land, ice).
        grid: target (rows, cols); each must not exceed the source's.
        row_weights: (rows,) relative area of a source cell in each row; uniform if None.

    Returns:
        (values, valid): (..., grid rows, grid cols) averages, NaN where no valid source cell
        overlaps, and the (grid rows, grid cols) boolean mask of target cells with data in
        every leading slice.
    """
    source_rows, source_cols = field.shape[-2:]
    rows, cols = grid
    if rows > source_rows or cols > source_cols:
        raise ValueError(
            f"cannot coarsen a {source_rows}×{source_cols} field to the finer grid {rows}×{cols}; "
            "every grid of the schedule must be at most the native grid"
        )
    row_overlap = overlap_matrix(rows, source_rows)
    if row_weights is not None:
        row_overlap = row_overlap * np.asarray(row_weights, dtype=np.float64)[None, :]
    col_overlap = overlap_matrix(cols, source_cols)

    valid = ~np.isnan(field)
    filled = np.where(valid, field, 0.0).astype(np.float64)
    # (..., R, C) -> (..., rows, cols) by two separable contractions.
    total = np.einsum("ir,...rc,jc->...ij", row_overlap, filled, col_overlap, optimize=True)
    weight = np.einsum(
        "ir,...rc,jc->...ij", row_overlap, valid.astype(np.float64), col_overlap, optimize=True
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(weight > 0, total / np.where(weight > 0, weight, 1.0), np.nan)
    has_data = weight > 0
    mask = has_data.reshape(-1, rows, cols).all(axis=0) if has_data.ndim > 2 else has_data
    return values.astype(field.dtype, copy=False), mask
