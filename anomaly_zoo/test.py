"""`python -m anomaly_zoo.test [overrides] [-m]`: evaluate a training-free method or a checkpoint."""

import hydra
from omegaconf import DictConfig

from anomaly_zoo.errors import clear_messages
from anomaly_zoo.runner import run_job


@hydra.main(version_base="1.3", config_path="../conf", config_name="test")
@clear_messages
def main(cfg: DictConfig) -> None:
    run_job(cfg, fit=False)


if __name__ == "__main__":
    main()
