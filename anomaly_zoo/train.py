"""`python -m anomaly_zoo.train [overrides] [-m]`: fit, then test. Logic lives in anomaly_zoo.runner."""

import hydra
from omegaconf import DictConfig

from anomaly_zoo.errors import clear_messages
from anomaly_zoo.runner import run_job


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@clear_messages
def main(cfg: DictConfig) -> float | None:
    result = run_job(cfg, fit=True)
    objective = result.get("objective") if result else None  # the validation loss, for hydra/sweeper=optuna
    if objective is None and _searching():
        raise ValueError(
            f"hydra/sweeper=optuna minimises the validation loss (val/loss), and method={cfg.method.get('name')} "
            "logged none (it needs a learning method and dataset.val_ratio > 0); tune it with a grid sweep (-m) "
            "and compare the runs on held-out data instead"
        )
    return objective


def _searching() -> bool:
    """Inside a hyper-parameter search (the Optuna sweeper), where a trial must return a number."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return "optuna" in str(HydraConfig.get().sweeper.get("_target_", "")).lower()
    except ValueError:  # no Hydra context (called directly)
        return False


if __name__ == "__main__":
    main()
