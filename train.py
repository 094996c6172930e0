"""Train a (C)VAE on MNIST: `python train.py model=cvae trainer.max_epochs=5` (see conf/train.yaml)."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cvae_lightning.errors import one_line_errors
from cvae_lightning.harness import runs, slurm  # noqa: F401  (they register conf/hydra's resolvers)
from cvae_lightning.harness.config import check_group_choices

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    slurm.catch_requeue_signal()  # before torch loads: SLURM may send it while a short job starts
    from cvae_lightning.harness.training import train  # here, not above: a SLURM job unpickles main first

    return one_line_errors(train)(cfg)


if __name__ == "__main__":
    one_line_errors(check_group_choices)(sys.argv[1:], ROOT / "conf")
    main()
