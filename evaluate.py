"""Evaluate a trained CVAE/VAE: `python evaluate.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt`.

Writes metrics.json, metrics.md and confusion_matrix.png beside the checkpoint and prints the table
(see conf/eval.yaml for eval.k, eval.n_per_digit, ...; `eval.cas=true` adds the Classification Accuracy
Score, which trains a classifier on the model's samples).
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from cvae_lightning.errors import one_line_errors

    one_line_errors(evaluate)(cfg)


def evaluate(cfg: DictConfig) -> None:
    from cvae_lightning import checkpoints
    from cvae_lightning.classifier import load_classifier
    from cvae_lightning.data import MNISTDataModule, load_split
    from cvae_lightning.errors import ConfigError
    from cvae_lightning.scores import evaluate, write_report

    if not cfg.ckpt_path:
        raise ConfigError("ckpt_path is required, e.g. ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt")
    model = checkpoints.load(cfg.ckpt_path)
    classifier = load_classifier(cfg.classifier_path)
    datamodule = MNISTDataModule(data_dir=cfg.paths.data_dir)
    datamodule.prepare_data()
    datamodule.setup("test")
    # CAS generates as many of each digit as the 60k real training images hold
    train_labels = load_split(cfg.paths.data_dir, train=True)[1] if cfg.eval.get("cas") else None
    metrics = evaluate(
        model,
        classifier,
        datamodule.test_images,
        datamodule.test_labels,
        binarize=checkpoints.binary_pixels(checkpoints.read(cfg.ckpt_path)),
        seed=cfg.seed,
        train_labels=train_labels,
        **cfg.eval,
    )
    out_dir = Path(cfg.out_dir or Path(cfg.ckpt_path).parent)
    paths = write_report(metrics, out_dir, title=str(cfg.ckpt_path))
    print(paths[1].read_text())
    print("wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
