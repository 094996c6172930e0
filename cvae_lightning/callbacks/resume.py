"""What makes a resumed run equal an uninterrupted one: RNG states, last.ckpt each epoch and on interrupt."""

from __future__ import annotations

import logging
import random
import subprocess
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cvae_lightning.errors import WriteError
from cvae_lightning.harness import checkpoints, compat, slurm

log = logging.getLogger(__name__)


class RNGStateCheckpoint(L.Callback):
    """The RNG states in every checkpoint, restored after the resume-time sanity check has drawn its own."""

    _to_restore: dict[str, torch.Tensor] | None = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """torch (CPU, CUDA), numpy and python RNG states, as tensors that `weights_only` loading accepts."""
        version, state, gauss = random.getstate()
        _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
        states = {
            "torch": torch.get_rng_state(),
            "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
            "numpy_rest": torch.tensor([np_pos, np_has_gauss, np_gauss], dtype=torch.float64),
            "python": torch.tensor(state, dtype=torch.int64),
            "python_rest": torch.tensor([version, np.nan if gauss is None else gauss], dtype=torch.float64),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            states["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
        return states

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self._to_restore = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._to_restore is None:
            return
        states, self._to_restore = self._to_restore, None
        torch.set_rng_state(states["torch"])
        pos, has_gauss, gauss = states["numpy_rest"].tolist()
        keys = states["numpy_keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, int(pos), int(has_gauss), gauss))
        version, gauss = states["python_rest"].tolist()
        random.setstate((int(version), tuple(states["python"].tolist()), None if np.isnan(gauss) else gauss))
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(list(states["cuda"]))


class CheckpointOnInterrupt(Checkpoint):
    """Writes (and keeps) `last.ckpt` when training stops on an exception, unless the weights are not finite;
    under SLURM requeues the job (up to `max_requeues` times) when `requeue_signal`, which stops training at
    the end of its step as SIGTERM does, stopped it: Lightning's and submitit's requeue save mid-step."""

    def __init__(self, dirpath: str, filename="last", requeue_signal: str | None = "SIGUSR2", max_requeues=3):
        self.ckpt_path = f"{dirpath}/{filename}.ckpt"
        self.max_requeues = max_requeues
        self.requeued = False
        if requeue_signal:
            slurm.catch_requeue_signal(requeue_signal)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if slurm.job_id() is None:
            return
        signalled = bool(slurm.requeue_signal())
        if trainer.world_size > 1:  # every rank stops after the same step, or the others wait for it forever
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        if signalled and not trainer.received_sigterm:
            compat.stop_at_end_of_step(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        # under DDP a save is collective: only a SIGTERM (or the requeue signal) stops every rank at one step
        collective = trainer.world_size == 1 or isinstance(exception, SIGTERMException)
        if collective and not isinstance(exception, WriteError):  # a write that failed: the last one stays
            try:
                self._save(trainer, pl_module)
            except WriteError as error:  # the last.ckpt before it is whole: resume (or requeue) from there
                log.warning(f"no checkpoint written on interrupt: {error}")
        # requeued even when nothing new was saved (signalled while starting): nothing is lost
        if slurm.requeue_signal() and trainer.is_global_zero:
            if slurm.restarts() >= self.max_requeues:
                log.warning(f"not requeued: the job was requeued {slurm.restarts()} times (max_requeues)")
                return
            try:
                slurm.requeue()
                self.requeued = True
            except (OSError, subprocess.CalledProcessError) as error:  # the run still ends with its hint
                log.warning(f"scontrol requeue failed: {getattr(error, 'stderr', None) or error}")

    def _save(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # nothing trained yet, or stopped inside a validation: the last periodic last.ckpt resumes exactly
        state = trainer.state
        if state.fn != "fit" or state.stage != RunningStage.TRAINING or trainer.global_step == 0:
            return
        path = Path(self.ckpt_path)
        if path.is_file() and checkpoints.read(path)["global_step"] == trainer.global_step:
            return  # stopped at an epoch's end, whose last.ckpt (LastCheckpoint) holds this state
        if not all(torch.isfinite(p).all() for p in pl_module.parameters()):
            log.warning("weights are not finite: no checkpoint written on interrupt")
            return
        trainer.save_checkpoint(self.ckpt_path)
        log.info(f"checkpoint written on interrupt at step {trainer.global_step}: {self.ckpt_path}")


class LastCheckpoint(ModelCheckpoint):
    """last.ckpt at the end of every epoch (after its validation), and within epochs every
    `every_n_train_steps` or `train_time_interval`: `save_last=True` rewrites it at an epoch's end only with a
    top-k save. Within an epoch its last batch is skipped: saved before validation, it resumes without it."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx + 1 < trainer.num_training_batches:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # checkpoint callbacks run last, in config order: the saved top-k state has this epoch's score
        compat.save_last_checkpoint(self, trainer)
