"""``python -m mrtl_lightning``: the Hydra app over ``conf/`` (see README for examples)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from mrtl_lightning.launch import launch


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    # Resolve Hydra's interpolations (output directory, job name) while Hydra is running, so
    # the config can be handed to DDP workers and tests as plain values.
    OmegaConf.resolve(cfg)
    summary = launch(cfg)
    return summary[cfg.optimized_metric]


if __name__ == "__main__":
    main()
