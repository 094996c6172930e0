"""Evaluate a trained CVAE/VAE: `python evaluate.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt`.

Composes the data module and trainer from conf/eval.yaml as train.py does (the checkpoint's own data
settings, its binarization among them, on top), tests the model with the callbacks of `callbacks` (the IWAE
NLL), then judges its samples with the project's classifier. Writes metrics.json, metrics.md and
confusion_matrix.png beside the checkpoint and prints the table.
"""

import os
from pathlib import Path

import hydra
import lightning as L
import rich
from omegaconf import DictConfig

from cvae_lightning.errors import check_bool, check_int, one_line_errors
from cvae_lightning.evaluation.scores import sample_scores, write_report
from cvae_lightning.harness import checkpoints
from cvae_lightning.harness.config import build
from cvae_lightning.harness.runs import config_tree
from cvae_lightning.harness.training import build_group
from cvae_lightning.model.data import BINARIZE, load_split

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    one_line_errors(evaluate)(cfg)


def evaluate(cfg: DictConfig) -> dict:
    check_bool("eval.cas", cfg.eval.cas)  # before any work: the test pass takes minutes
    check_int("eval.cas_epochs", cfg.eval.cas_epochs, 1)
    module = checkpoints.load_module(cfg.ckpt_path, weights=cfg.weights)
    classifier = checkpoints.load_classifier(cfg.classifier_path)
    trained_on = checkpoints.data_config(checkpoints.read(cfg.ckpt_path))
    rich.print(config_tree(cfg))  # as train.py's, once the values and files are known good
    binarize = trained_on.get("binarize", "none")
    datamodule = build(cfg.data, "data", binarize=binarize)

    L.seed_everything(cfg.seed, verbose=False)
    trainer = build(
        cfg.trainer, "trainer", callbacks=build_group(cfg.get("callbacks"), "callbacks"), logger=False
    )
    tested = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    test = {name.removeprefix("test/"): value for name, value in sorted(tested.items())}
    k = cfg.callbacks.log_likelihood.k if cfg.get("callbacks") and "log_likelihood" in cfg.callbacks else 0
    if k:
        test["nll"] = test.pop(f"nll_k{k}")
    n_images = min(
        len(datamodule.test_images), trainer.num_test_batches[0] * datamodule.hparams.eval_batch_size
    )
    metrics = {
        "model": "CVAE" if module.model.n_labels else "VAE",
        "weights": cfg.weights,
        "test_images": n_images,
        "k": k,
        "test": test,
    }

    # CAS generates as many of each digit as the 60k real training images hold
    train_labels = load_split(cfg.paths.data_dir, train=True)[1] if cfg.eval.get("cas") else None
    metrics |= sample_scores(
        module.model,
        classifier,
        datamodule.test_images,
        datamodule.test_labels,
        binarize=BINARIZE[binarize],
        seed=cfg.seed,
        train_labels=train_labels,
        **cfg.eval,
    )
    out_dir = Path(cfg.out_dir or Path(cfg.ckpt_path).parent)
    paths = write_report(metrics, out_dir, title=str(cfg.ckpt_path))
    print(paths[1].read_text())
    print("wrote " + ", ".join(str(p) for p in paths))
    return metrics


if __name__ == "__main__":
    main()
