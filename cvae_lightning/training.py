"""Builds datamodule, model, callbacks, logger and trainer from a composed config, then fits and tests."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from cvae_lightning.config import ConfigError, validate

log = logging.getLogger(__name__)


class Interrupted(RuntimeError):
    """Training stopped by a signal; last.ckpt holds the state to resume from."""


def instantiate_group(group: DictConfig | None, **kwargs) -> list:
    """Objects of a config group whose entries each have a `_target_` (callbacks, loggers)."""
    return [instantiate(entry, **kwargs) for entry in (group or {}).values() if entry and "_target_" in entry]


def resume_checkpoint(cfg: DictConfig) -> Path | None:
    """The checkpoint named by `ckpt_path` (`last`: the run dir's checkpoints/last.ckpt), which must exist."""
    if cfg.get("ckpt_path") is None:
        return None
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    path = last if cfg.ckpt_path == "last" else Path(cfg.ckpt_path)
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} is not allowed: no checkpoint at {path}; "
            "to resume a run pass its folder and `last`: hydra.run.dir=<run dir> ckpt_path=last"
        )
    return path


def train(cfg: DictConfig) -> float | None:
    """Fits (and tests) the configured model; returns `cfg.optimized_metric` for Hydra sweepers."""
    validate(cfg)
    ckpt_path = resume_checkpoint(cfg)
    L.seed_everything(cfg.seed, workers=True)

    datamodule: L.LightningDataModule = instantiate(cfg.data)
    model: L.LightningModule = instantiate(cfg.model)
    # TensorBoard drops events logged after the checkpoint by the interrupted run, so the stream stays one
    purge = {"purge_step": torch.load(ckpt_path, weights_only=True)["global_step"] + 1} if ckpt_path else {}
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=instantiate_group(cfg.get("callbacks")),
        logger=instantiate_group(cfg.get("logger"), **purge),
    )
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        raise Interrupted(
            f"stopped by SIGTERM at step {trainer.global_step}; resume with the same overrides plus "
            f"hydra.run.dir={cfg.paths.output_dir} ckpt_path=last"
        ) from None
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
