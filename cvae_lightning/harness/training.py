"""Builds datamodule, model, callbacks, logger and trainer from a composed config, then fits and tests."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from cvae_lightning.callbacks.resume import CheckpointOnInterrupt
from cvae_lightning.errors import Error, Interrupted, WriteError
from cvae_lightning.harness import checkpoints, compat, files, loggers, slurm
from cvae_lightning.harness.config import build, validate
from cvae_lightning.harness.process import in_multirun, one_job_per_ddp_launch, process_settings

log = logging.getLogger(__name__)

# what a collective raises (gloo) on the ranks left when another process of the run has ended
PEER_ENDED = "by peer"

# what every logger shows as hyperparameters after a run's own overrides: what tells runs apart
KEY_HPARAMS = tuple(
    "model.latent_dim model.n_labels model.encoder._target_ model.encoder.hidden_dims model.prior._target_ "
    "model.optimizer._target_ model.optimizer.lr model.scheduler._target_ model.beta model.kl_warmup_epochs "
    "model.objective model.k data.batch_size data.binarize trainer.max_epochs trainer.devices "
    "trainer.precision seed".split()
)
PLUMBING = ("paths.", "hydra.", "callbacks.", "logger.", "extras.", "debug")  # overrides that are no hparams


def build_group(group: DictConfig | None, key: str, **kwargs) -> list:
    """Objects of a config group's entries that have a `_target_` (callbacks)."""
    items = (group or {}).items()
    return [build(entry, f"{key}.{name}", **kwargs) for name, entry in items if entry and "_target_" in entry]


def train(cfg: DictConfig) -> float | None:
    """Fits (and tests) the configured model; returns `cfg.optimized_metric`. A sweep's job that fails on a
    project error records it in its results.json and returns None, for the others to run on."""
    try:
        validate(cfg)
        with process_settings(cfg.flush_denormal, cfg.matmul_precision), one_job_per_ddp_launch():
            return _train(cfg)
    except Error as error:
        if isinstance(error, Interrupted) or not in_multirun():
            raise
        overrides = list(HydraConfig.get().overrides.task)
        failed = {"overrides": overrides, "status": "failed", "error": str(error)}
        log.error(f"error: {error}")
        try:
            files.write_text(Path(cfg.paths.output_dir, "results.json"), json.dumps(failed, indent=2))
        except WriteError as unwritten:  # a full disk: its log says why the summary misses it
            log.error(f"error: {unwritten}")
        return None


def _train(cfg: DictConfig) -> float | None:
    L.seed_everything(cfg.seed, workers=True)
    datamodule: L.LightningDataModule = build(cfg.data, "data")
    model: L.LightningModule = build(cfg.model, "model")
    ckpt_path, step = checkpoints.resume_point(
        cfg.get("ckpt_path"), cfg.paths.output_dir, checkpoints.model_kind(model), slurm.restarts()
    )
    # Lightning's SLURM auto-requeue (mid-step) off: callbacks.checkpoint_on_interrupt's stops after a step
    plugins = list(build(cfg.trainer.get("plugins") or [], "trainer.plugins"))
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    trainer: L.Trainer = build(
        cfg.trainer,
        "trainer",
        callbacks=build_group(cfg.get("callbacks"), "callbacks"),
        logger=loggers.build_loggers(cfg.get("logger"), cfg.paths.output_dir, step if ckpt_path else None),
        plugins=plugins or None,
    )
    batch, processes = cfg.data.batch_size, trainer.world_size
    rank_zero_info(
        f"{processes} process(es) x batch {batch} = effective batch {processes * batch} per step, "
        f"lr {OmegaConf.select(cfg, 'model.optimizer.lr')} (not rescaled)"
    )

    run_loggers, status = trainer.loggers, "failed"
    try:
        metric = _fit_and_test(cfg, trainer, model, datamodule, ckpt_path)
        status = "success"
        return metric
    finally:  # a sweep's next job opens its own runs
        loggers.close(run_loggers, status)


def _fit_and_test(cfg: DictConfig, trainer: L.Trainer, model, datamodule, ckpt_path) -> float | None:
    start = time.perf_counter()
    resume = f"resume with the same overrides plus hydra.run.dir={cfg.paths.output_dir} ckpt_path=last"
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except WriteError as error:  # the checkpoints before it are whole: the run goes on from them
        raise WriteError(f"{error}; the checkpoints before it are whole: free space, then {resume}") from None
    except RuntimeError as error:  # its own reason is the other rank's one line, not this rank's traceback
        if trainer.world_size > 1 and PEER_ENDED in str(error):
            why = "another process of this run ended first (its error says why)"
            raise Interrupted(f"rank {trainer.global_rank} stopped: {why}") from None
        raise
    except SIGTERMException:
        if any(isinstance(c, CheckpointOnInterrupt) and c.requeued for c in trainer.callbacks):
            resume = f"SLURM job {slurm.job_id()} requeued (restart {slurm.restarts() + 1}): it resumes "
            resume += "from its run dir's checkpoints/last.ckpt"
        stopped = f"stopped by {slurm.requeue_signal() or 'SIGTERM'} at step {trainer.global_step}"
        raise Interrupted(f"{stopped}; {resume}") from None
    fit_seconds = time.perf_counter() - start
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None

    # the best checkpoint's metrics (the validation pass not logged again)
    with compat.without_loggers(trainer):
        validated = trainer.validate(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    metrics = validated[0] if validated else {}  # data.val_size=0: no validation set
    if cfg.get("test"):
        metrics |= trainer.test(model, datamodule=datamodule, ckpt_path=best or None)[0]

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    results = {
        "overrides": overrides,
        "metrics": {k: float(v) for k, v in sorted(metrics.items())},
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "fit_seconds": round(fit_seconds, 2),
        "best_checkpoint": best,
    }
    if trainer.is_global_zero:
        files.write_text(Path(cfg.paths.output_dir, "results.json"), json.dumps(results, indent=2))
        log.info("results: " + json.dumps(results))
        # a sweep's runs side by side with their metrics
        hparam_metrics = {f"hparams/{k}": v for k, v in results["metrics"].items()}
        loggers.log_hyperparameters(
            trainer.loggers, key_hparams(cfg, overrides), hparam_metrics, trainer.global_step
        )
    return results["metrics"].get(cfg.optimized_metric)


def key_hparams(cfg: DictConfig, overrides: list[str]) -> dict[str, object]:
    """The run's own overrides, then KEY_HPARAMS; no paths or plumbing; lists as text (one value each)."""
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o]
    keys = [k for k in keys if not k.startswith(PLUMBING) and not k.endswith("dir")]
    keys = [k for k in keys if not k.endswith("_target_") or k.startswith("model.")]
    hparams = {}
    for key in [*keys, *KEY_HPARAMS]:
        value = OmegaConf.select(cfg, key, default=None)
        if key not in hparams and value is not None and not OmegaConf.is_dict(value):
            hparams[key] = str(list(value)) if OmegaConf.is_list(value) else value
    return hparams
