"""Curves that judge a model: sample accuracy, active latent dimensions and the test NLL."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
import torch
from torchvision.utils import make_grid

from cvae_lightning.callbacks.averaging import averaged_weights
from cvae_lightning.evaluation.generation import evaluating, repeat_digits
from cvae_lightning.evaluation.scores import conditional_accuracy, read_digits
from cvae_lightning.harness import files
from cvae_lightning.harness.checkpoints import load_classifier, shipped
from cvae_lightning.harness.loggers import log_image
from cvae_lightning.harness.process import float32_matmul_precision
from cvae_lightning.model.data import NUM_CLASSES

log = logging.getLogger(__name__)


class SampleAccuracy(L.Callback):
    """`samples/accuracy_T<temperature>` (`_mu`: T=0) of fixed-noise samples as the classifier reads them, and
    `samples/misread_T1`, up to `misread_per_digit` misread a digit; CVAE only, warns without a classifier."""

    def __init__(self, classifier_path, n_per_digit=100, temperatures=(1.0, 0.0), misread_per_digit=10):
        self.classifier_path = Path(shipped(classifier_path, ("classifier",)))
        self.n_per_digit, self.temperatures = n_per_digit, tuple(temperatures)
        self.misread_per_digit = misread_per_digit
        self.classifier = None

    def setup(self, trainer, pl_module, stage):
        if not pl_module.hparams.get("n_labels") or self.classifier is not None:
            return
        if self.classifier_path.is_file():
            self.classifier = load_classifier(self.classifier_path, map_location=pl_module.device)
        else:
            missing = f"no classifier at {self.classifier_path}"
            log.warning(f"{missing}: samples/accuracy_* not logged (make classifier)")

    def on_validation_epoch_end(self, trainer, pl_module):
        if self.classifier is None or trainer.sanity_checking:
            return
        model, judge = pl_module.model, self.classifier.to(pl_module.device)
        noise = model.noise(NUM_CLASSES * self.n_per_digit, seed=0)  # the same every epoch
        labels = repeat_digits(self.n_per_digit)
        with evaluating(pl_module):
            for temperature in self.temperatures:
                # temperature 0 decodes the prior mean whatever the noise: one image per digit says it all
                step = self.n_per_digit if temperature == 0 else 1
                images = model.sample(labels=labels[::step], temperature=temperature, noise=noise[::step])
                read = read_digits(judge, images, batch_size=None)
                name = "mu" if temperature == 0 else f"T{temperature:g}"
                accuracy = conditional_accuracy(read, labels[::step])["overall"]
                pl_module.log(f"samples/accuracy_{name}", accuracy)
                if name == "T1" and self.misread_per_digit and trainer.is_global_zero:
                    grid = misread_grid(images.float().cpu(), labels, read, self.misread_per_digit)
                    log_image(trainer.loggers, "samples/misread_T1", grid, step=trainer.global_step)


def misread_grid(images: torch.Tensor, requested: torch.Tensor, read: torch.Tensor, per_digit: int):
    """A row per requested digit of its samples read as another (up to `per_digit`, then black): (1, H, W)."""
    cells = torch.zeros(NUM_CLASSES, per_digit, *images.shape[1:])
    for digit in range(NUM_CLASSES):
        wrong = images[(requested == digit) & (read != digit)][:per_digit]
        cells[digit, : len(wrong)] = wrong
    return make_grid(cells.flatten(0, 1), nrow=per_digit, pad_value=1.0)[:1]


class ActiveUnits(L.Callback):
    """`val/active_units`: latent dimensions whose mean validation KL exceeds `threshold` nats."""

    def __init__(self, threshold: float = 0.01):
        self.threshold = threshold

    def on_validation_epoch_start(self, trainer, pl_module):
        self.kl_sum, self.count = 0.0, 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        # the validation step's own KL terms: no second pass through the encoder
        n = len(batch[0])
        self.kl_sum = self.kl_sum + outputs["kl_per_dim"].detach() * n
        self.count += n

    def on_validation_epoch_end(self, trainer, pl_module):
        if self.count:
            active = (self.kl_sum / self.count > self.threshold).sum().float()
            pl_module.log("val/active_units", active, sync_dist=True)


def dataset_nll(model, loader, k: int, chunk: int = 100, n_images: int | None = None) -> float:
    """The mean IWAE NLL (k samples) of the first `n_images` images `loader` yields (None: all)."""
    total, count = 0.0, 0
    for x, y in loader:
        keep = None if n_images is None else n_images - count
        x, y = x[:keep], y[:keep]
        total -= model.log_likelihood(x, y, k=k, chunk=chunk).sum().item()
        count += len(x)
        if n_images is not None and count >= n_images:
            break
    return total / count


class LogLikelihood(L.Callback):
    """`test/nll_k<k>`: the IWAE bound of k samples of every test image (evaluate.py); `compile`: inductor."""

    def __init__(self, k: int = 1000, chunk: int = 100, compile: bool = False):
        self.k, self.chunk, self.compile = k, chunk, compile

    def setup(self, trainer, pl_module, stage):
        if self.compile:
            pl_module.model.use_compiled("log_weights")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        nll = -pl_module.model.log_likelihood(x, y, k=self.k, chunk=self.chunk)
        pl_module.log(f"test/nll_k{self.k}", nll.mean(), batch_size=len(x), sync_dist=True)


class NLLCurve(L.Callback):
    """`test/nll_k<k>` every `every_n_epochs` epochs and after the last: the IWAE bound of the first
    `n_images` test images (fixed seed, float32, EMA weights), also in `<run dir>/test_nll.json`."""

    def __init__(self, k: int = 100, every_n_epochs: int = 10, n_images: int | None = None, chunk: int = 100):
        self.k, self.every_n_epochs, self.n_images, self.chunk = k, every_n_epochs, n_images, chunk

    def on_fit_start(self, trainer, pl_module):
        self.started, self.cpu_started = time.perf_counter(), time.process_time()

    def on_train_epoch_end(self, trainer, pl_module):
        epoch = trainer.current_epoch + 1  # epochs completed
        if epoch % self.every_n_epochs and epoch < trainer.max_epochs and not trainer.should_stop:
            return
        # its own random draws: the training run's RNG stream (and so exact resume) stays untouched
        with (
            evaluating(pl_module),
            torch.random.fork_rng(devices=[]),
            float32_matmul_precision("highest"),
            averaged_weights(trainer, pl_module),
        ):
            torch.manual_seed(0)
            loader = trainer.datamodule.test_dataloader()
            nll = dataset_nll(pl_module.model, loader, self.k, self.chunk, self.n_images)
        pl_module.log(f"test/nll_k{self.k}", nll, on_epoch=True)
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / "test_nll.json"
            points = json.loads(path.read_text()) if path.is_file() else []
            points = [p for p in points if p["epoch"] < epoch]  # a resumed run rewrites its later points
            # CPU seconds too: unlike wall time they stop while the process is paused or waits for a core
            wall, cpu = time.perf_counter() - self.started, time.process_time() - self.cpu_started
            point = {"epoch": epoch, "step": trainer.global_step, "nll": nll, "seconds": round(wall, 1)}
            point["cpu_seconds"] = round(cpu, 1)
            files.write_text(path, json.dumps([*points, point], indent=1) + "\n")
