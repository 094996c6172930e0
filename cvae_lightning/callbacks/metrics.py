"""Curves that judge a model while it trains: sample accuracy (is a requested 3 read as a 3?) and the
number of active latent dimensions."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch

from cvae_lightning.data import NUM_CLASSES

log = logging.getLogger(__name__)


class SampleAccuracy(L.Callback):
    """Conditional accuracy of fixed-noise samples each epoch, judged by the project's classifier:
    `samples/accuracy_T<temperature>` and `_mu` (z = the prior mean), so learning progress is a curve.

    CVAE only; skipped (with one warning) when the classifier checkpoint is missing: `make classifier`.
    """

    def __init__(self, classifier_path: str, n_per_digit: int = 100, temperatures=(1.0, 0.0), seed: int = 0):
        self.classifier_path = Path(classifier_path)
        self.n_per_digit, self.temperatures, self.seed = n_per_digit, tuple(temperatures), seed
        self.classifier = None

    def setup(self, trainer, pl_module, stage):
        from cvae_lightning.classifier import load_classifier

        if not getattr(pl_module, "n_classes", 0) or self.classifier is not None:
            return
        if self.classifier_path.is_file():
            self.classifier = load_classifier(self.classifier_path, map_location=pl_module.device)
        else:
            log.warning(
                f"no classifier at {self.classifier_path}: samples/accuracy_* not logged (make classifier)"
            )

    def on_validation_epoch_end(self, trainer, pl_module):
        if self.classifier is None or trainer.sanity_checking:
            return
        from cvae_lightning.scores import conditional_accuracy

        noise = pl_module.noise(NUM_CLASSES * self.n_per_digit, seed=self.seed)
        labels = torch.arange(NUM_CLASSES).repeat_interleave(self.n_per_digit)
        was_training = pl_module.training
        pl_module.eval()
        for temperature in self.temperatures:
            # temperature 0 decodes the prior mean whatever the noise: one image per digit says it all
            step = self.n_per_digit if temperature == 0 else 1
            images = pl_module.sample(labels=labels[::step], temperature=temperature, noise=noise[::step])
            judge = self.classifier.to(pl_module.device)
            accuracy = conditional_accuracy(judge, images, labels[::step])["overall"]
            name = "mu" if temperature == 0 else f"T{temperature:g}"
            pl_module.log(f"samples/accuracy_{name}", accuracy)  # the same on every rank
        pl_module.train(was_training)


class ActiveUnits(L.Callback):
    """`val/active_units`: latent dimensions whose mean KL over the validation set exceeds `threshold`
    nats; the rest are unused by the encoder (posterior collapse)."""

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
