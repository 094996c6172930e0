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
    from cvae_lightning.harness.slurm import catch_requeue_signal

    catch_requeue_signal()  # before the heavy imports: SLURM may send it while a short job starts
    from cvae_lightning.errors import one_line_errors
    from cvae_lightning.harness.training import train

    return one_line_errors(train)(cfg)


if __name__ == "__main__":
    import cvae_lightning.harness.runs  # noqa: F401  (registers conf/hydra's resolvers)
    import cvae_lightning.harness.slurm  # noqa: F401  (and conf/hydra/launcher/slurm.yaml's)
    from cvae_lightning.errors import one_line_errors
    from cvae_lightning.harness.config import check_group_choices

    one_line_errors(check_group_choices)(sys.argv[1:], ROOT / "conf")
    main()
