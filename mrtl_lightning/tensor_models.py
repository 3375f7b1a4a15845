"""The full-rank (paper eq. 1) and CP low-rank (eq. 2) tensor models as plain ``nn.Module``s.

Both compute the linear score ``<W, X> + b`` of a batch (the LightningModule applies the
sigmoid or identity and the loss). ``W``'s modes follow :mod:`mrtl_lightning.modes`: entity
modes, then sparse spatial modes, then feature modes, then dense spatial modes; each spatial
mode is a 2-D grid. A model knows how to

* score a batch without materialising a dense input: entity modes and sparse spatial modes
  select slices of ``W`` by index (gather), only the dense block is contracted;
* evaluate its L2 and spatial penalties (:mod:`mrtl_lightning.regularizers`);
* return a finegrained copy of itself at a finer resolution (:mod:`mrtl_lightning.upsampling`);
* (full rank) decompose itself with CP-ALS into the low-rank model that it initialises.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import tensorly as tl
import torch
from tensorly.decomposition import parafac
from torch import nn

from mrtl_lightning.modes import Resolution, TensorSpec
from mrtl_lightning.regularizers import (
    apply_kernel,
    axis_kernel,
    broadcast_plane,
    cp_spatial_penalty,
    full_rank_spatial_penalty,
    kernel_row_sums,
    mode_scale,
    smooth_accumulate,
)
from mrtl_lightning.upsampling import upsample

Masks = Mapping[str, torch.Tensor | None]


class EntityBias(nn.Module):
    """A bias per entity of every entity mode (summed), or one scalar when there is none."""

    def __init__(self, spec: TensorSpec):
        super().__init__()
        self.entity_names = [name for name, _ in spec.entity_modes]
        sizes = {name: size for name, size in spec.entity_modes} or {"offset": 1}
        self.values = nn.ParameterDict(
            {name: nn.Parameter(torch.zeros(n)) for name, n in sizes.items()}
        )

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not self.entity_names:
            return self.values["offset"]
        entity = batch["entity"]
        return sum(self.values[name][entity[:, j]] for j, name in enumerate(self.entity_names))


class TensorModel(nn.Module):
    """What the full-rank and CP models share: modes, resolution, masks, kernels and bias.

    Args:
        spec: the data's modes and task.
        resolution: grid of every spatial mode.
        masks: (rows, cols) bool per spatial mode, True where the cell has data; None or a
            missing key when every cell has.
    """

    def __init__(self, spec: TensorSpec, resolution: Resolution, masks: Masks | None = None):
        super().__init__()
        self.spec = spec
        self.resolution = dict(resolution)
        self.bias = EntityBias(spec)
        masks = masks or {}
        self.masked_modes = []
        for mode in spec.spatial_modes:
            mask = masks.get(mode.name)
            if mask is not None:
                if tuple(mask.shape) != tuple(self.resolution[mode.name]):
                    raise ValueError(
                        f"mask of spatial mode {mode.name!r} has shape {tuple(mask.shape)}, "
                        f"expected the grid {self.resolution[mode.name]}"
                    )
                self.register_buffer(f"mask_{mode.name}", mask.bool().clone())
                self.masked_modes.append(mode.name)
        self._kernels: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def mask(self, name: str) -> torch.Tensor | None:
        return getattr(self, f"mask_{name}") if name in self.masked_modes else None

    def masks(self) -> dict[str, torch.Tensor | None]:
        return {mode.name: self.mask(mode.name) for mode in self.spec.spatial_modes}

    def num_cells(self, name: str) -> int:
        rows, cols = self.resolution[name]
        return rows * cols

    def kernels(self, name: str, sigma: float, like: torch.Tensor):
        """Per-axis RBF kernels of a spatial mode, built once per sigma, dtype and device."""
        rows, cols = self.resolution[name]
        key = (name, sigma, like.dtype, like.device)
        if key not in self._kernels:
            self._kernels[key] = (
                axis_kernel(rows, sigma, like.dtype, like.device),
                axis_kernel(cols, sigma, like.dtype, like.device),
            )
        return self._kernels[key]

    def l2_scale(self) -> float:
        """Product of every spatial mode's :func:`mode_scale` (resolution-invariant L2)."""
        return math.prod(
            mode_scale(self.num_cells(m.name), m.encoding == "dense")
            for m in self.spec.spatial_modes
        )

    def add_penalty_gradients(self, l2: float, spatial: float, sigma: float) -> None:
        """Add the gradient of ``l2 · L2 + spatial · Σ_s R_s`` to every weight's ``.grad``.

        The LightningModule calls this after the data loss's backward pass, so penalties never
        enter the autograd graph of a step. This generic version differentiates
        :meth:`penalties`; the full-rank model overrides it with an allocation-free one.
        """
        parameters = self.weight_parameters()
        with torch.enable_grad():
            l2_value, spatial_value = self.penalties(sigma)
            gradients = torch.autograd.grad(l2 * l2_value + spatial * spatial_value, parameters)
        with torch.no_grad():
            for parameter, gradient in zip(parameters, gradients):
                if parameter.grad is None:
                    parameter.grad = gradient
                else:
                    parameter.grad.add_(gradient)

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the biases: the ones gradient criteria and penalties look at."""
        return [p for name, p in self.named_parameters() if not name.startswith("bias.")]

    def _check_refines(self, resolution: Resolution) -> None:
        for name, grid in resolution.items():
            old = self.resolution[name]
            if grid[0] < old[0] or grid[1] < old[1]:
                raise ValueError(
                    f"cannot finegrain spatial mode {name!r} from {old} to the coarser {grid}"
                )


class FullRankTensor(TensorModel):
    """The full-rank weight tensor ``W`` of eq. 1.

    ``weight`` has shape (entity sizes..., (H, C) per sparse mode..., feature sizes...,
    (H, C) per dense mode...).

    Args:
        init_scale: standard deviation of the normal initialisation.
        generator: random generator of the initialisation (seeded by the caller).
    """

    def __init__(
        self,
        spec: TensorSpec,
        resolution: Resolution,
        masks: Masks | None = None,
        init_scale: float = 0.01,
        generator: torch.Generator | None = None,
    ):
        super().__init__(spec, resolution, masks)
        shape = self.weight_shape()
        self.weight = nn.Parameter(torch.randn(shape, generator=generator) * init_scale)

    def weight_shape(self) -> list[int]:
        shape = [size for _, size in self.spec.entity_modes]
        for mode in self.spec.sparse_modes:
            shape += list(self.resolution[mode.name])
        shape += [size for _, size in self.spec.feature_modes]
        for mode in self.spec.dense_modes:
            shape += list(self.resolution[mode.name])
        return shape

    def spatial_axes(self) -> dict[str, tuple[int, int]]:
        """Axes (rows, cols) of every spatial mode in ``weight``."""
        axes = {}
        axis = len(self.spec.entity_modes)
        for mode in self.spec.sparse_modes:
            axes[mode.name] = (axis, axis + 1)
            axis += 2
        axis += len(self.spec.feature_modes)
        for mode in self.spec.dense_modes:
            axes[mode.name] = (axis, axis + 1)
            axis += 2
        return axes

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(batch,) scores ``<W, X> + b``; sparse modes gather the cells they mark."""
        target = batch["target"]
        size = target.shape[0]
        sparse = self.spec.sparse_modes
        entity_sizes = [n for _, n in self.spec.entity_modes]
        cells = [self.num_cells(mode.name) for mode in sparse]
        weight = self.weight.reshape(*entity_sizes, *cells, -1)  # (..., dense block)

        # Index tensors broadcast to (batch, slots of sparse mode 1, slots of mode 2, ...).
        index = []
        for j in range(len(entity_sizes)):
            index.append(batch["entity"][:, j].view(size, *[1] * len(sparse)))
        slot_weights = None
        for s, mode in enumerate(sparse):
            shape = [size] + [1] * len(sparse)
            shape[1 + s] = -1
            index.append(batch["cells"][mode.name].view(shape))
            values = batch["values"][mode.name].view(shape)
            slot_weights = values if slot_weights is None else slot_weights * values

        if self.spec.has_dense_block:
            dense = batch["dense"].reshape(size, -1)  # (batch, dense block)
            if not index:
                scores = dense @ weight.reshape(-1)
            else:
                gathered = weight[tuple(index)]  # (batch, slots..., dense block)
                dense = dense.view(size, *[1] * len(sparse), -1)
                scores = (gathered * dense).sum(-1)
        else:
            scores = weight[tuple(index)][..., 0]
        if slot_weights is not None:
            scores = (scores * slot_weights).reshape(size, -1).sum(1)
        return scores + self.bias(batch)

    def masked_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` with the masked cells of every spatial mode set to zero."""
        for name, axes in self.spatial_axes().items():
            mask = self.mask(name)
            if mask is not None:
                weight = weight * broadcast_plane(mask.to(weight.dtype), weight.ndim, axes)
        return weight

    def penalties(self, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Resolution-normalised (L2, spatial) penalties; spatial is eq. 3 summed over modes."""
        weight = self.weight
        l2_scale = self.l2_scale()
        masked = self.masked_weight(weight)
        l2 = l2_scale * torch.sum(masked * masked)
        spatial = weight.new_zeros(())
        for name, axes in self.spatial_axes().items():
            # Masked cells of every mode are already zero in ``masked``: they take no part.
            raw = full_rank_spatial_penalty(
                masked, axes, self.kernels(name, sigma, weight), self.mask(name)
            )
            spatial = spatial + raw * (l2_scale / self.num_cells(name))
        return l2, spatial

    @torch.no_grad()
    def add_penalty_gradients(self, l2: float, spatial: float, sigma: float) -> None:
        """Penalty gradients added in place: ``2 l2 s W + 4 λ Σ_s n_s (κ_s ⊙ W − K_s W)``.

        Without masks every term is linear in ``W`` with a separable kernel: the κ and L2
        terms fold into one broadcast multiplier (one pass), and each spatial mode's ``K_s W``
        takes two kernel passes that accumulate into ``.grad`` through one reused workspace.
        A step thus allocates nothing of the size of ``W`` (the models with masks use the
        generic autograd version; they are the small dense-field ones).
        """
        if self.masked_modes:
            super().add_penalty_gradients(l2, spatial, sigma)
            return
        weight = self.weight
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        gradient = weight.grad
        scale = self.l2_scale()
        diagonal = weight.new_full([1] * weight.ndim, 2.0 * l2 * scale)
        smoothing = []
        for name, axes in self.spatial_axes().items():
            kernels = self.kernels(name, sigma, weight)
            coefficient = 4.0 * spatial * scale / self.num_cells(name)
            kappa = broadcast_plane(kernel_row_sums(kernels, None), weight.ndim, axes)
            diagonal = diagonal + coefficient * kappa
            smoothing.append((axes, kernels, coefficient))
        gradient.addcmul_(weight, diagonal)
        if spatial:
            if getattr(self, "_workspace", None) is None or self._workspace.shape != weight.shape:
                self._workspace = torch.empty_like(weight)
            for axes, kernels, coefficient in smoothing:
                smooth_accumulate(weight, gradient, self._workspace, axes, kernels, -coefficient)

    @torch.no_grad()
    def finegrained(self, resolution: Resolution, masks: Masks | None = None) -> FullRankTensor:
        """A copy at the finer ``resolution``; only spatial weights are upsampled (§4.2)."""
        self._check_refines(resolution)
        masks = masks or {}
        weight = self.weight.detach()
        for mode in self.spec.spatial_modes:
            axes = self.spatial_axes()[mode.name]
            weight = upsample(
                weight,
                axes,
                resolution[mode.name],
                mode.interpolation,
                self.mask(mode.name),
                masks.get(mode.name),
            )
        model = FullRankTensor(self.spec, resolution, masks, init_scale=0.0)
        model.weight.data.copy_(weight)
        model.bias.load_state_dict(self.bias.state_dict())
        return model.to(self.weight.device)

    def mode_tensor(self) -> torch.Tensor:
        """``W`` with each spatial grid flattened to one mode, masked cells zeroed."""
        weight = self.masked_weight(self.weight.detach())
        shape = [n for _, n in self.spec.entity_modes]
        shape += [self.num_cells(m.name) for m in self.spec.sparse_modes]
        shape += [n for _, n in self.spec.feature_modes]
        shape += [self.num_cells(m.name) for m in self.spec.dense_modes]
        return weight.reshape(shape)

    @torch.no_grad()
    def decompose(
        self,
        cp_rank: int,
        n_iter_max: int = 200,
        tol: float = 1e-9,
        init: str = "svd",
        seed: int = 0,
    ) -> tuple[CPTensor, float]:
        """CP-ALS of ``W`` (tensorly, PyTorch backend) into the low-rank model it initialises.

        The CP weights are folded into the factors so that every factor's column k has the same
        norm; masked cells get zero factor rows.

        Returns:
            (the CP model, relative reconstruction error ``||W − Ŵ|| / ||W||``).
        """
        target = self.mode_tensor().double().cpu()
        with tl.backend_context("pytorch"):
            weights, factors = parafac(
                target,
                cp_rank,
                n_iter_max=n_iter_max,
                tol=tol,
                init=init,
                random_state=seed,
                normalize_factors=True,
            )
            estimate = tl.cp_to_tensor((weights, factors))
        error = float(
            torch.linalg.norm(target - estimate) / torch.linalg.norm(target).clamp_min(1e-30)
        )
        factors = balance_factors(weights, factors)
        model = CPTensor(self.spec, self.resolution, self.masks(), cp_rank, init_scale=0.0)
        model.load_mode_factors(factors)
        model.bias.load_state_dict(self.bias.state_dict())
        return model.to(self.weight.device), error


def balance_factors(weights: torch.Tensor, factors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Fold CP weights into the factors, giving column k of every factor the same norm.

    ``Σ_k w_k Π_m F_m[:, k]`` equals ``Σ_k Π_m G_m[:, k]`` with ``G_m[:, k] = F_m[:, k] / n_mk ·
    (w_k Π_m n_mk)^(1/M)``, where ``n_mk`` is the norm of ``F_m[:, k]``.
    """
    norms = torch.stack([torch.linalg.norm(f, dim=0) for f in factors])  # (modes, rank)
    norms = norms.clamp_min(1e-30)
    magnitude = (weights.abs() * norms.prod(0)) ** (1.0 / len(factors))
    sign = torch.sign(weights)
    sign[sign == 0] = 1.0
    balanced = [f / n * magnitude for f, n in zip(factors, norms)]
    balanced[0] = balanced[0] * sign
    return balanced


class CPTensor(TensorModel):
    """The rank-K CP model of eq. 2: one (size, K) factor per mode; spatial ones are (H, C, K).

    Args:
        cp_rank: the number K of latent factors.
        init_scale: typical magnitude of the entries of ``W`` at a random initialisation
            (each factor is drawn so that their product has about that standard deviation).
        generator: random generator of the initialisation.
    """

    def __init__(
        self,
        spec: TensorSpec,
        resolution: Resolution,
        masks: Masks | None,
        cp_rank: int,
        init_scale: float = 0.01,
        generator: torch.Generator | None = None,
    ):
        super().__init__(spec, resolution, masks)
        if cp_rank < 1:
            raise ValueError(f"cp_rank {cp_rank} must be at least 1; set model.cp_rank")
        self.cp_rank = cp_rank
        shapes = self.factor_shapes()
        # Product of M factors with entries of std s has std s^M sqrt(K): pick s to hit init_scale.
        scale = (init_scale / math.sqrt(cp_rank)) ** (1.0 / len(shapes)) if init_scale > 0 else 0.0
        # Filled one by one: ParameterDict sorts the keys of a plain dict, and the factors
        # must stay in the order of the modes of W.
        self.factors = nn.ParameterDict()
        for name, shape in shapes.items():
            self.factors[name] = nn.Parameter(
                torch.randn(*shape, cp_rank, generator=generator) * scale
            )

    def factor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every factor without the rank axis, in the order of the modes of ``W``."""
        shapes: dict[str, tuple[int, ...]] = {name: (n,) for name, n in self.spec.entity_modes}
        for mode in self.spec.sparse_modes:
            shapes[mode.name] = tuple(self.resolution[mode.name])
        shapes.update({name: (n,) for name, n in self.spec.feature_modes})
        for mode in self.spec.dense_modes:
            shapes[mode.name] = tuple(self.resolution[mode.name])
        return shapes

    def load_mode_factors(self, factors: list[torch.Tensor]) -> None:
        """Set the factors from (mode size, K) matrices in mode order (spatial grids flattened)."""
        for (name, shape), factor in zip(self.factor_shapes().items(), factors):
            self.factors[name].data.copy_(factor.reshape(*shape, self.cp_rank))

    def flat_factor(self, name: str) -> torch.Tensor:
        """(mode size, K) factor of a mode, spatial grids flattened."""
        return self.factors[name].reshape(-1, self.cp_rank)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(batch,) scores: the product over modes of each sample's (batch, K) contraction."""
        product = None

        def multiply(part: torch.Tensor) -> None:
            nonlocal product
            product = part if product is None else product * part

        for j, (name, _) in enumerate(self.spec.entity_modes):
            multiply(self.factors[name][batch["entity"][:, j]])
        for mode in self.spec.sparse_modes:
            rows = self.flat_factor(mode.name)[batch["cells"][mode.name]]  # (batch, slots, K)
            multiply((rows * batch["values"][mode.name][..., None]).sum(1))
        if self.spec.has_dense_block:
            multiply(self._contract_dense(batch["dense"]))
        return product.sum(-1) + self.bias(batch)

    def _contract_dense(self, dense: torch.Tensor) -> torch.Tensor:
        """Contract the (batch, features..., grids...) block with its factors, last mode first.

        The last (largest, spatial) mode goes through one matmul, which shrinks the block to
        (batch, ..., K); the remaining modes are then contracted keeping K as a diagonal.
        """
        size = dense.shape[0]
        names = [name for name, _ in self.spec.feature_modes]
        names += [mode.name for mode in self.spec.dense_modes]
        sizes = [math.prod(self.factor_shapes()[name]) for name in names]
        block = dense.reshape(size, *sizes)
        last = self.flat_factor(names[-1])
        block = (block.reshape(-1, sizes[-1]) @ last).reshape(size, *sizes[:-1], self.cp_rank)
        for name in reversed(names[:-1]):
            block = (block * self.flat_factor(name)).sum(-2)
        return block

    def grams(self) -> dict[str, torch.Tensor]:
        """(K, K) Gram matrix ``Fᵀ F`` of every factor (masked cells excluded)."""
        grams = {}
        for name in self.factors:
            factor = self.flat_factor(name)
            mask = self.mask(name) if name in self.masked_modes else None
            if mask is not None:
                factor = factor * mask.reshape(-1, 1).to(factor.dtype)
            grams[name] = factor.T @ factor
        return grams

    def penalties(self, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Resolution-normalised (L2 of the factors, spatial eq. 3 of ``W`` summed over modes)."""
        grams = self.grams()
        l2 = 0.0
        for name, gram in grams.items():
            scale = 1.0
            if name in self.resolution:
                scale = mode_scale(self.num_cells(name), self.spec.mode(name).encoding == "dense")
            l2 = l2 + scale * torch.trace(gram)
        l2_scale = self.l2_scale()
        spatial = grams[next(iter(grams))].new_zeros(())
        for mode in self.spec.spatial_modes:
            others = [gram for name, gram in grams.items() if name != mode.name]
            factor = self.factors[mode.name]
            raw = cp_spatial_penalty(
                factor, others, self.kernels(mode.name, sigma, factor), self.mask(mode.name)
            )
            spatial = spatial + raw * (l2_scale / self.num_cells(mode.name))
        return l2, spatial

    @torch.no_grad()
    def add_penalty_gradients(self, l2: float, spatial: float, sigma: float) -> None:
        """Closed-form gradients of the penalties, added to the factors' ``.grad`` in place.

        With ``M_s = diag(κ) − K`` and ``H_s`` the Hadamard product of the other modes' Grams,
        ``R_s = 2 tr(H_s F_sᵀ M_s F_s)``, so ``∂R_s/∂F_s = 4 M_s F_s H_s`` and, for another
        mode t, ``∂R_s/∂F_t = 4 F_t (C_s ⊙ H_{s,−t})`` with ``C_s = F_sᵀ M_s F_s``. A dozen
        small matrix products replace the autograd graph of :meth:`penalties`, whose per-op
        overhead would dominate a low-rank training step.
        """
        names = list(self.factors)
        factors, gradients = {}, {}
        for name in names:
            parameter = self.factors[name]
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            gradients[name] = parameter.grad.view(-1, self.cp_rank)
            factor = self.flat_factor(name)
            mask = self.mask(name) if name in self.masked_modes else None
            if mask is not None:
                factor = factor * mask.reshape(-1, 1).to(factor.dtype)
            factors[name] = factor
        grams = {name: factor.T @ factor for name, factor in factors.items()}

        for name in names:
            scale = 1.0
            if name in self.resolution:
                scale = mode_scale(self.num_cells(name), self.spec.mode(name).encoding == "dense")
            gradients[name].add_(factors[name], alpha=2.0 * l2 * scale)
        if not spatial:
            return
        l2_scale = self.l2_scale()
        for mode in self.spec.spatial_modes:
            coefficient = 4.0 * spatial * l2_scale / self.num_cells(mode.name)
            factor = factors[mode.name]
            rows, cols = self.resolution[mode.name]
            kernels = self.kernels(mode.name, sigma, factor)
            mask = self.mask(mode.name)
            kappa = kernel_row_sums(kernels, mask).reshape(-1, 1)
            smoothed = apply_kernel(factor.reshape(rows, cols, -1), kernels, (0, 1))
            difference = kappa * factor - smoothed.reshape(factor.shape)  # M_s F_s
            if mask is not None:
                difference = difference * mask.reshape(-1, 1).to(factor.dtype)
            others = [name for name in names if name != mode.name]
            hadamard = torch.ones_like(grams[mode.name])
            for name in others:
                hadamard = hadamard * grams[name]
            gradients[mode.name].addmm_(difference, hadamard, alpha=coefficient)
            cross = factor.T @ difference  # C_s
            for name in others:
                partial = cross.clone()
                for other in others:
                    if other != name:
                        partial = partial * grams[other]
                gradients[name].addmm_(factors[name], partial, alpha=coefficient)

    @torch.no_grad()
    def finegrained(self, resolution: Resolution, masks: Masks | None = None) -> CPTensor:
        """A copy at the finer ``resolution``: spatial factors upsampled, the rest copied."""
        self._check_refines(resolution)
        masks = masks or {}
        model = CPTensor(self.spec, resolution, masks, self.cp_rank, init_scale=0.0)
        for name, factor in self.factors.items():
            factor = factor.detach()
            if name in self.resolution:
                mode = self.spec.mode(name)
                factor = upsample(
                    factor,
                    (0, 1),
                    resolution[name],
                    mode.interpolation,
                    self.mask(name),
                    masks.get(name),
                )
            model.factors[name].data.copy_(factor)
        model.bias.load_state_dict(self.bias.state_dict())
        return model.to(next(self.parameters()).device)

    def to_dense(self) -> torch.Tensor:
        """The full tensor ``W`` in mode order, spatial grids flattened (for tests and analysis)."""
        factors = [self.flat_factor(name).detach() for name in self.factors]
        with tl.backend_context("pytorch"):
            return tl.cp_to_tensor((torch.ones(self.cp_rank, dtype=factors[0].dtype), factors))

    def spatial_factors(self) -> dict[str, torch.Tensor]:
        """(K, H, C) latent factors of every spatial mode, NaN at masked cells."""
        images = {}
        for mode in self.spec.spatial_modes:
            factor = self.factors[mode.name].detach().float().cpu().permute(2, 0, 1).clone()
            mask = self.mask(mode.name)
            if mask is not None:
                factor[:, ~mask.cpu()] = float("nan")
            images[mode.name] = factor
        return images
