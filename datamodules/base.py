"""The DataModule contract shared by every dataset, and the batch-at-a-time data path.

A dataset is prepared once (read, clean, split), then *viewed* at any resolution of the
schedule: sparse spatial inputs are re-discretised from continuous positions, dense fields are
regridded. Batches are dictionaries of tensors:

* ``"entity"``: (batch, entity modes) long — index of each entity mode (absent if none);
* ``"cells"`` / ``"values"``: {sparse mode: (batch, k)} — flat cell indices at the current grid
  and their input values (0 pads unused slots); absent if no sparse mode;
* ``"dense"``: (batch, *feature sizes, rows, cols per dense mode) — the dense input block,
  0 at masked cells; absent if no feature or dense mode;
* ``"target"``: (batch,) float — label (0/1) or regression target.

Batches are gathered with one indexing operation per tensor (never a Python loop over
samples), and the sampler shards every global batch across DDP ranks itself, so each rank
sees ``batch_size / world_size`` samples per step and the averaged gradient equals the
single-process one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mrtl_lightning.modes import Grid, Resolution, TensorSpec, as_resolution

SPLITS = ("train", "val", "test")


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """Write a cache file so that no reader ever sees it half written.

    Several DDP processes may prepare the same data at once: each writes a temporary file in
    the target folder and renames it into place (atomic on one file system).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, suffix=".npz.partial")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def index_batch(tree: Any, index: torch.Tensor) -> Any:
    """Select rows ``index`` of every tensor in a nested dict of tensors."""
    if isinstance(tree, Mapping):
        return {key: index_batch(value, index) for key, value in tree.items()}
    return tree[index]


class TensorBatchDataset(Dataset):
    """Samples held as tensors with a leading sample axis, indexed a whole batch at a time.

    Args:
        tensors: nested dict of tensors that all have the same first dimension.
    """

    def __init__(self, tensors: Mapping[str, Any]):
        sizes = {int(t.shape[0]) for t in _leaves(tensors)}
        if len(sizes) != 1:
            raise ValueError(f"all tensors of a split need the same number of samples, got {sizes}")
        self.tensors = tensors
        self.num_samples = sizes.pop()

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: torch.Tensor) -> dict[str, Any]:
        return index_batch(self.tensors, index)


def _leaves(tree: Any) -> Iterator[torch.Tensor]:
    if isinstance(tree, Mapping):
        for value in tree.values():
            yield from _leaves(value)
    else:
        yield tree


class ShardedBatchSampler(Sampler):
    """Yields, per step, this rank's share of one global batch of sample indices.

    Global batch ``b`` holds positions ``b * batch_size ...`` of a permutation of the split
    (seeded by ``seed`` and the epoch when shuffling); rank ``r`` of ``world_size`` takes every
    ``world_size``-th of them starting at ``r``. Every rank therefore runs the same number of
    steps, and with a mean loss the all-reduced gradient is the full batch's.

    Args:
        num_samples: size of the split.
        batch_size: global batch size, summed over ranks.
        shuffle: draw a fresh permutation every epoch.
        seed: base seed of the permutation.
        rank, world_size: this process's place in the DDP group.
        drop_last: drop a final global batch smaller than ``batch_size`` (one with fewer
            samples than ranks is always dropped, or a rank would be left without data).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ):
        if batch_size < world_size:
            raise ValueError(
                f"batch size {batch_size} is smaller than the {world_size} DDP processes; "
                "raise dataset.batch_size"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _num_batches(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        # A last batch with fewer samples than ranks would leave a rank without data.
        keep_rest = rest > 0 and not self.drop_last and rest >= self.world_size
        return full + int(keep_rest)

    def __len__(self) -> int:
        return self._num_batches()

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator)
        else:
            order = torch.arange(self.num_samples)
        for batch in range(self._num_batches()):
            members = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            yield members[self.rank :: self.world_size]


class TensorDataModule(pl.LightningDataModule):
    """Base class of the datasets: a prepared dataset viewed at a changeable resolution.

    Subclasses load and split their data in :meth:`setup`, then implement :attr:`spec`,
    :meth:`build_split` and :meth:`targets`; they may refine :meth:`check_resolution` (what
    grids the data supports), :meth:`mask` (cells without data) and :meth:`plot_spatial`.

    Args:
        batch_size: global training batch size (split evenly over DDP processes).
        eval_batch_size: batch size for validation and test; defaults to ``batch_size``.
        seed: seed of the data split and of the shuffling.
    """

    def __init__(self, batch_size: int = 128, eval_batch_size: int | None = None, seed: int = 0):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size} must be a positive integer")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.seed = seed
        self._resolution: Resolution | None = None
        self._datasets: dict[str, Dataset] = {}

    # ----- what a dataset provides ------------------------------------------------------------

    @property
    def spec(self) -> TensorSpec:
        """Modes and task of the model this data trains; available after :meth:`setup`."""
        raise NotImplementedError

    def build_split(self, split: str, resolution: Resolution) -> Dataset:
        """The samples of ``split`` ("train", "val" or "test") at ``resolution``."""
        raise NotImplementedError

    def targets(self, split: str) -> torch.Tensor:
        """(samples,) targets of a split; they do not depend on the resolution."""
        raise NotImplementedError

    def check_resolution(self, resolution: Resolution) -> None:
        """Raise ``ValueError`` naming the grid and the fix if the data cannot be viewed at it."""
        as_resolution(self.spec, resolution)

    def mask(self, mode: str, grid: Grid) -> torch.Tensor | None:
        """(rows, cols) bool, True where a spatial mode's cell has data; None if all have."""
        return None

    def baselines(self, split: str) -> dict[str, torch.Tensor]:
        """Reference predictions for ``split`` to report beside the model, by name."""
        return {}

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary of the prepared data for ``summary.json``."""
        return {f"{split}_samples": int(len(self.targets(split))) for split in SPLITS}

    def plot_spatial(self, ax, mode: str, image, **imshow_kwargs):
        """Draw one (rows, cols) image of spatial mode ``mode`` on ``ax``; returns the artist."""
        return ax.imshow(image, origin="upper", interpolation="nearest", **imshow_kwargs)

    # ----- resolution -------------------------------------------------------------------------

    @property
    def resolution(self) -> Resolution:
        if self._resolution is None:
            raise RuntimeError("no resolution set yet: call set_resolution() first")
        return dict(self._resolution)

    def set_resolution(self, resolution: Mapping[str, Grid]) -> None:
        """View the data at ``resolution``; the next dataloaders serve it."""
        resolution = as_resolution(self.spec, resolution)
        if resolution == self._resolution:
            return
        self.check_resolution(resolution)
        self._resolution = resolution
        self._datasets = {}

    def dataset(self, split: str) -> Dataset:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if split not in self._datasets:
            self._datasets[split] = self.build_split(split, self.resolution)
        return self._datasets[split]

    # ----- dataloaders ------------------------------------------------------------------------

    def _place(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _loader(self, split: str) -> DataLoader:
        dataset = self.dataset(split)
        rank, world_size = self._place()
        training = split == "train"
        if training and self.batch_size % world_size:
            raise ValueError(
                f"batch_size {self.batch_size} does not split evenly over {world_size} DDP "
                f"processes; use a multiple of {world_size}"
            )
        if training:
            sampler = ShardedBatchSampler(
                len(dataset),
                self.batch_size,
                shuffle=True,
                seed=self.seed,
                rank=rank,
                world_size=world_size,
            )
            if self.trainer is not None:
                sampler.set_epoch(self.trainer.current_epoch)
        else:
            # Evaluation covers every sample exactly once: each rank takes a strided shard, so
            # ranks may run one batch more or less (metrics are reduced once per epoch).
            sampler = torch.arange(len(dataset))[rank::world_size].split(self.eval_batch_size)
        return DataLoader(dataset, batch_size=None, sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    # ----- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        resolution = (
            None
            if self._resolution is None
            else {name: list(grid) for name, grid in self._resolution.items()}
        )
        return {"resolution": resolution}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("resolution") is not None:
            self.set_resolution({k: tuple(v) for k, v in state_dict["resolution"].items()})
