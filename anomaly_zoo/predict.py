"""`python -m anomaly_zoo.predict method=... [ckpt_path=...] input=DIR output=DIR [threshold=...]`."""

import hydra
from omegaconf import DictConfig

from anomaly_zoo.errors import clear_messages
from anomaly_zoo.runner import predict


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
@clear_messages
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
