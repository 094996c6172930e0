"""Image grids logged after every validation epoch, and the latent codes in TensorBoard's projector."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid

from cvae_lightning.evaluation.generation import evaluating, lerp, repeat_digits, style_transfer
from cvae_lightning.harness.loggers import holds_images, log_image
from cvae_lightning.model.cvae import CVAE
from cvae_lightning.model.data import NUM_CLASSES


class ImageLogger(L.Callback):
    """`images` (drawn in eval mode) as one grid `tag` of width `nrow` after every validation epoch."""

    tag = ""
    nrow = 10

    def applies(self, model: CVAE) -> bool:
        return True

    def images(self, trainer: L.Trainer, model: CVAE) -> torch.Tensor:
        raise NotImplementedError

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not holds_images(trainer.loggers) or trainer.sanity_checking or not self.applies(pl_module.model):
            return
        with evaluating(pl_module):
            grid = make_grid(self.images(trainer, pl_module.model).float().cpu(), self.nrow, pad_value=1.0)
        log_image(trainer.loggers, self.tag, grid[:1], step=trainer.global_step)


def _validation_batch(trainer: L.Trainer, n: int):
    """The first n validation images and their labels, from as many batches as it takes."""
    batches = []
    for batch in trainer.val_dataloaders:
        batches.append(batch)
        if sum(len(x) for x, _ in batches) >= n:
            break
    return tuple(torch.cat(parts)[:n] for parts in zip(*batches, strict=True))


class GeneratedDigits(ImageLogger):
    """Digits decoded from the same noise every epoch: a CVAE's row per digit, a column per "handwriting"."""

    tag = "samples/generated"

    def __init__(self, n_per_digit: int = 10, seed: int = 0):
        self.nrow, self.seed = n_per_digit, seed

    def images(self, trainer, model):
        labels = repeat_digits(self.nrow)
        if model.n_labels:  # the same noise in every row: one handwriting per column
            noise = model.noise(self.nrow, seed=self.seed).repeat(NUM_CLASSES, 1)
            return model.sample(labels=labels, noise=noise)
        return model.sample(noise=model.noise(len(labels), seed=self.seed))


class Reconstructions(ImageLogger):
    """A fixed batch of validation images (top row) above their reconstructions (bottom row)."""

    tag = "samples/reconstructions"

    def __init__(self, n_images: int = 16):
        self.nrow = n_images

    def images(self, trainer, model):
        x, labels = _validation_batch(trainer, self.nrow)
        recon = model.reconstruct(x, labels)
        return torch.cat([x.to(recon.device), recon])


class StyleTransfer(ImageLogger):
    """Fixed validation digits (first column) decoded as every digit 0-9 in their handwriting. CVAE only."""

    tag = "samples/style_transfer"
    nrow = NUM_CLASSES + 1

    def __init__(self, n_images: int = 8):
        self.n_images = n_images

    def applies(self, model):
        return model.n_labels > 0

    def images(self, trainer, model):
        return style_transfer(model, *_validation_batch(trainer, self.n_images))


class Interpolation(ImageLogger):
    """Straight lines in z between two fixed prior draws, decoded: a row per digit (CVAE) or pair of draws."""

    tag = "samples/interpolation"

    def __init__(self, steps: int = 10, seed: int = 1):
        self.nrow, self.seed = steps, seed

    def images(self, trainer, model):
        a, b = model.noise(NUM_CLASSES, NUM_CLASSES, seed=self.seed)
        return model.sample(labels=repeat_digits(self.nrow), noise=lerp(a, b, self.nrow))


class LatentManifold(ImageLogger):
    """A 2-D latent space decoded over a grid of prior quantiles for one digit; other latent sizes skip it."""

    tag = "samples/latent_manifold"

    def __init__(self, n: int = 15, digit: int = 5):
        self.nrow, self.digit = n, digit

    def applies(self, model):
        return model.latent_dim == 2

    def images(self, trainer, model):
        quantiles = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, self.nrow))
        grid = torch.stack(torch.meshgrid(quantiles, quantiles.flip(0), indexing="xy"), dim=-1).view(-1, 2)
        # the grid as standard-normal noise: mapped through the digit's prior, N(0, I) or p(z|y)
        return model.sample(labels=torch.full((len(grid),), self.digit), noise=grid)


class LatentProjector(L.Callback):
    """The encoder means of `n_images` validation digits in TensorBoard's projector once training ends."""

    tag = "latent/mu"

    def __init__(self, n_images: int = 1000):
        self.n_images = n_images

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if writer is None or trainer.val_dataloaders is None:
            return
        x, labels = _validation_batch(trainer, self.n_images)
        with evaluating(pl_module):
            mu = pl_module.model.encode(x.to(pl_module.device), labels)[0]
        writer.add_embedding(
            mu.float().cpu(), labels.tolist(), x.float().cpu(), global_step=trainer.global_step, tag=self.tag
        )
