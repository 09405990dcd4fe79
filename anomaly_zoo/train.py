"""`python -m anomaly_zoo.train [overrides] [-m]`: fit, then test. Logic lives in anomaly_zoo.runner."""

import hydra
from omegaconf import DictConfig

from anomaly_zoo.errors import clear_messages
from anomaly_zoo.runner import run_job


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@clear_messages
def main(cfg: DictConfig) -> float | None:
    result = run_job(cfg, fit=True)
    return result.get("objective") if result else None  # the validation loss, for hydra/sweeper=optuna


if __name__ == "__main__":
    main()
