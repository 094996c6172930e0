"""The training loss: its scalars logged on the steps the loggers write, training stopped when not finite."""

from __future__ import annotations

import lightning as L
import torch

from cvae_lightning.errors import NonFiniteLossError
from cvae_lightning.harness import compat


class LogTrainingScalars(L.Callback):
    """`train/nelbo`, `train/recon`, `train/kl` (`train/niwae_k<k>`, `train/kl_weight` while not 1) from the
    step's outputs, only on the steps the loggers write: `self.log` every step costs a CPU run 10-35%."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not (trainer.fast_dev_run or compat.logs_this_step(trainer)):
            return
        for name, value in pl_module.scalars(outputs).items():
            shown = name == pl_module.loss_name
            pl_module.log(f"train/{name}", value, prog_bar=shown, batch_size=len(batch[0]))
        if outputs.get("kl_weight", 1.0) != 1.0:
            pl_module.log("train/kl_weight", outputs["kl_weight"])


class StopOnNonFiniteLoss(L.Callback):
    """Stops training when the loss is not finite, before that step's backward (the weights stay the last good
    ones); on `defer_on` devices the checks gather there and are read only where the host waits anyway."""

    def __init__(self, defer_on: tuple[str, ...] = ("cuda",)):
        self.defer_on = tuple(defer_on)
        self._pending: tuple[int, torch.Tensor] | None = None  # (first unread step, all finite since)

    def on_before_backward(self, trainer, pl_module, loss):
        finite = torch.isfinite(loss.detach())
        if finite.device.type not in self.defer_on:
            if not finite:
                self._stop(f"step {trainer.global_step}", loss)
            return
        since, earlier = self._pending or (trainer.global_step, True)
        self._pending = (since, finite & earlier)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._pending is None:
            return
        if not (compat.logs_this_step(trainer) or batch_idx + 1 >= trainer.num_training_batches):
            return
        (since, finite), self._pending = self._pending, None
        if not finite:
            last = trainer.global_step - 1
            where = f"step {since}" if since == last else f"a step from {since} to {last}"
            self._stop(where, outputs["loss"])

    @staticmethod
    def _stop(where: str, loss: torch.Tensor):
        fix = "lower model.optimizer.lr, or check the data"
        raise NonFiniteLossError(f"non-finite loss at {where} (loss={loss.item():.4g}); {fix}")
