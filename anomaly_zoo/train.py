"""`python -m anomaly_zoo.train [overrides] [-m]`: fit, then test. Logic lives in anomaly_zoo.runner."""

import hydra
from omegaconf import DictConfig

from anomaly_zoo.runner import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run(cfg, fit=True)


if __name__ == "__main__":
    main()
