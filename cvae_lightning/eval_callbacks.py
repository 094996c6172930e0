"""What is logged each epoch to judge a CVAE while it trains: style transfer, interpolation, sample
accuracy (is a requested 3 read as a 3?) and the number of active latent dimensions."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch

from cvae_lightning.callbacks import _EpochImageLogger
from cvae_lightning.data import NUM_CLASSES
from cvae_lightning.generation import lerp, style_transfer

log = logging.getLogger(__name__)


class StyleTransfer(_EpochImageLogger):
    """Fixed validation digits (first column) encoded, then decoded with every label 0-9: the same
    handwriting, another digit. CVAE only."""

    tag = "samples/style_transfer"

    def __init__(self, n_images: int = 8):
        self.n_images = n_images
        self.nrow = NUM_CLASSES + 1

    def on_validation_epoch_end(self, trainer, pl_module):
        if pl_module.n_classes:
            super().on_validation_epoch_end(trainer, pl_module)

    def images(self, trainer, pl_module):
        x, y = next(iter(trainer.val_dataloaders))
        x, y = x[: self.n_images].to(pl_module.device), y[: self.n_images].to(pl_module.device)
        return style_transfer(pl_module, x, y)


class Interpolation(_EpochImageLogger):
    """Decoded straight lines in z between two fixed prior draws, one row per digit (CVAE) or per
    pair of draws (VAE): smooth rows mean a smooth latent space."""

    tag = "samples/interpolation"

    def __init__(self, steps: int = 10, seed: int = 1):
        self.nrow, self.seed = steps, seed

    def images(self, trainer, pl_module):
        generator = torch.Generator().manual_seed(self.seed)
        shape = (NUM_CLASSES, pl_module.hparams.latent_dim)
        a, b = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
        noise = lerp(a, b, self.nrow)
        if pl_module.n_classes:
            return pl_module.sample(torch.arange(NUM_CLASSES).repeat_interleave(self.nrow), noise=noise)
        return pl_module.sample(len(noise), noise=noise)


class SampleAccuracy(L.Callback):
    """Conditional accuracy of fixed-noise samples each epoch, judged by the project's classifier:
    `samples/accuracy_T<temperature>` and `_mu` (z = the prior mean), so learning progress is a curve.

    Skipped (with one warning) when the classifier checkpoint is missing: `make classifier` writes it.
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
        from cvae_lightning.evaluation import conditional_accuracy

        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(NUM_CLASSES * self.n_per_digit, pl_module.hparams.latent_dim, generator=generator)
        labels = torch.arange(NUM_CLASSES).repeat_interleave(self.n_per_digit)
        was_training = pl_module.training
        pl_module.eval()
        for temperature in self.temperatures:
            # temperature 0 decodes the prior mean whatever the noise: one image per digit says it all
            step = self.n_per_digit if temperature == 0 else 1
            images = pl_module.sample(labels[::step], temperature=temperature, noise=noise[::step])
            accuracy = conditional_accuracy(self.classifier.to(pl_module.device), images, labels[::step])[
                "overall"
            ]
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
