"""Train a (C)VAE on MNIST: `python train.py model=cvae trainer.max_epochs=5` (see conf/train.yaml)."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from cvae_lightning.config import ConfigError
    from cvae_lightning.data import DataError
    from cvae_lightning.models import CheckpointError, NonFiniteLossError
    from cvae_lightning.training import Interrupted, train

    try:
        return train(cfg)
    except (ConfigError, DataError, CheckpointError, NonFiniteLossError, Interrupted) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    from cvae_lightning.config import ConfigError, check_group_choices

    try:
        check_group_choices(sys.argv[1:], ROOT / "conf")
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None
    main()
