"""Tiny checkpoints (a few training steps on real MNIST) for the evaluation, generation and notebook tests."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from cvae_lightning import CVAE, VAE, MNISTDataModule
from cvae_lightning.classifier import Classifier


def fit_tiny(model: L.LightningModule, path: Path, data_dir: Path, steps: int = 3, **data) -> Path:
    """Trains `steps` batches on CPU without logger or callbacks and saves the checkpoint at `path`."""
    torch.manual_seed(0)
    trainer = L.Trainer(
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir), batch_size=64, **data))
    trainer.save_checkpoint(path)
    return path


def tiny_cvae(path: Path, data_dir: Path, **hparams) -> Path:
    return fit_tiny(CVAE(**{"latent_dim": 2, "hidden_dims": [32], **hparams}), path, data_dir)


def tiny_vae(path: Path, data_dir: Path) -> Path:
    return fit_tiny(VAE(latent_dim=2, hidden_dims=[32]), path, data_dir)


def tiny_classifier(path: Path, data_dir: Path) -> Path:
    return fit_tiny(Classifier(channels=[4, 8], features=16), path, data_dir)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, data_dir) -> dict[str, Path]:
    """{"cvae", "vae", "classifier"}: checkpoints after 3 training steps (seconds on CPU)."""
    out = tmp_path_factory.mktemp("tiny")
    return {
        "cvae": tiny_cvae(out / "cvae" / "last.ckpt", data_dir),
        "vae": tiny_vae(out / "vae" / "last.ckpt", data_dir),
        "classifier": tiny_classifier(out / "classifier.ckpt", data_dir),
    }
