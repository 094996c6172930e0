"""Builds datamodule, model, callbacks, logger and trainer from a composed config, then fits and tests."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

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


DDP_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def one_job_per_ddp_launch():
    """Lets each job of a Hydra multirun train on several processes with Lightning's `ddp` strategy.

    Lightning re-runs `sys.argv` (plus `hydra.run.dir=<HydraConfig run.dir>`) for ranks > 0: inside a
    multirun job that re-runs the whole sweep, in a new sweep dir. Here the children get this job's own
    overrides and its output dir instead, and the launcher's environment and process group are cleared
    after the job, so that the next job launches its own children rather than waiting for them.
    """
    argv, env = list(sys.argv), {k: os.environ.get(k) for k in DDP_LAUNCH_ENV}
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        hydra_cfg = HydraConfig.get()
        sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
        with read_write(hydra_cfg), open_dict(hydra_cfg):
            hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        if env["LOCAL_RANK"] is None:  # the launching process: forget this job's DDP world
            for key, value in env.items():
                os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()


@contextmanager
def float32_matmul_precision(precision: str):
    """torch's float32 matmul precision while training; process-wide, so restored afterwards."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def nvml_available() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


def skip_failing_nvml_check() -> None:
    """Lightning switches torch's CUDA check to NVML (fork-safe on GPU machines). Where there is no NVML (no
    NVIDIA driver) torch then dlopens it in vain and asks the CUDA runtime anyway, on every call, and every
    optimizer step makes one: ~0.1 ms a step. Without the switch it asks the runtime at once: same answer."""
    if not nvml_available():
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)


@contextmanager
def process_settings(flush_denormal: bool, matmul_precision: str):
    """The process-wide torch settings training runs with (conf/train.yaml's `flush_denormal` and
    `matmul_precision`); the matmul precision is restored afterwards."""
    # first, before any parallel op: OpenMP's worker threads copy the setting from this thread as they start
    torch.set_flush_denormal(flush_denormal)
    skip_failing_nvml_check()
    with float32_matmul_precision(matmul_precision):
        yield


def train(cfg: DictConfig) -> float | None:
    """Fits (and tests) the configured model; returns `cfg.optimized_metric` for Hydra sweepers."""
    validate(cfg)
    settings = process_settings(cfg.get("flush_denormal", False), cfg.get("matmul_precision", "highest"))
    with settings, one_job_per_ddp_launch():
        return _train(cfg)


def _train(cfg: DictConfig) -> float | None:
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
    batch, processes = cfg.data.batch_size, trainer.world_size
    rank_zero_info(
        f"{processes} process(es) x batch {batch} = effective batch {processes * batch} per step, "
        f"lr {cfg.model.get('lr')} (not rescaled)"
    )

    start = time.perf_counter()
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        raise Interrupted(
            f"stopped by SIGTERM at step {trainer.global_step}; resume with the same overrides plus "
            f"hydra.run.dir={cfg.paths.output_dir} ckpt_path=last"
        ) from None
    fit_seconds = time.perf_counter() - start
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None

    # validation and test metrics of the best checkpoint (the validation pass is not logged again)
    loggers, trainer.loggers = trainer.loggers, []
    metrics = trainer.validate(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)[0]
    trainer.loggers = loggers
    if cfg.get("test"):
        metrics |= trainer.test(model, datamodule=datamodule, ckpt_path=best or None)[0]

    results = {
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
        "metrics": {k: float(v) for k, v in sorted(metrics.items())},
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "fit_seconds": round(fit_seconds, 2),
        "best_checkpoint": best,
    }
    if trainer.is_global_zero:
        Path(cfg.paths.output_dir, "results.json").write_text(json.dumps(results, indent=2))
        log.info("results: " + json.dumps(results))
    hparams = OmegaConf.to_container(cfg, resolve=True)
    hparams = {k: hparams[k] for k in ("model", "data", "trainer", "seed") if k in hparams}
    for logger in trainer.loggers:  # the HPARAMS tab: runs of a sweep side by side with their metrics
        logger.log_hyperparams(hparams, metrics={f"hparams/{k}": v for k, v in results["metrics"].items()})
        # on disk now: TensorBoard's writer holds events back for up to 2 minutes, and exiting drops them
        logger.finalize("success")
    return results["metrics"].get(cfg.optimized_metric)
