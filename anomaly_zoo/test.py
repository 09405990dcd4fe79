"""`python -m anomaly_zoo.test [overrides] [-m]`: evaluate a training-free method or a checkpoint."""

import hydra
from omegaconf import DictConfig

from anomaly_zoo.runner import run_job


@hydra.main(version_base="1.3", config_path="../conf", config_name="test")
def main(cfg: DictConfig) -> None:
    run_job(cfg, fit=False)


if __name__ == "__main__":
    main()
