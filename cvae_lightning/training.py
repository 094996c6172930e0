"""Builds datamodule, model, callbacks, logger and trainer from a composed config, then fits and tests."""

from __future__ import annotations

import logging

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cvae_lightning.config import validate

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list:
    """Objects of a config group whose entries each have a `_target_` (callbacks, loggers)."""
    return [instantiate(entry) for entry in (group or {}).values() if entry and "_target_" in entry]


def train(cfg: DictConfig) -> float | None:
    """Fits (and tests) the configured model; returns `cfg.optimized_metric` for Hydra sweepers."""
    validate(cfg)
    L.seed_everything(cfg.seed, workers=True)

    datamodule: L.LightningDataModule = instantiate(cfg.data)
    model: L.LightningModule = instantiate(cfg.model)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=instantiate_group(cfg.get("callbacks")),
        logger=instantiate_group(cfg.get("logger")),
    )
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(model, datamodule=datamodule)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        log.info(f"best checkpoint: {best}")

    if cfg.get("test"):
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})

    if trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_score is not None:
        metrics[cfg.optimized_metric] = float(trainer.checkpoint_callback.best_model_score)
    log.info("metrics: " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items())))
    return metrics.get(cfg.optimized_metric)
