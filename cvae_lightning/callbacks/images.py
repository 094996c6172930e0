"""The image grids logged after every validation epoch, to every logger that holds images, and the latent
codes in TensorBoard's projector once training ends (rank zero only)."""

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
    """Base of the image callbacks: a subclass names its `tag` and grid width `nrow` and draws `images` (in
    eval mode), logged as one grid after every validation epoch but the sanity check; `applies(model)` can
    skip models the grid means nothing for."""

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
            grid = make_grid(
                self.images(trainer, pl_module.model).float().cpu(), nrow=self.nrow, pad_value=1.0
            )
        log_image(trainer.loggers, self.tag, grid[:1], step=trainer.global_step)


def _validation_batch(trainer: L.Trainer, n: int):
    """The first n validation images and their labels, from as many batches as it takes."""
    images, labels, have = [], [], 0
    for x, y in trainer.val_dataloaders:
        images.append(x)
        labels.append(y)
        have += len(x)
        if have >= n:
            break
    return torch.cat(images)[:n], torch.cat(labels)[:n]


class GeneratedDigits(ImageLogger):
    """Digits decoded from the same fixed noise every epoch (scroll the step slider to watch them form): a
    CVAE's row per digit 0-9, a column per noise vector (its "handwriting"); a VAE's 10 x `n_per_digit`."""

    tag = "samples/generated"

    def __init__(self, n_per_digit: int = 10, seed: int = 0):
        self.nrow, self.seed = n_per_digit, seed

    def images(self, trainer, model):
        labels = repeat_digits(self.nrow)
        if model.n_labels:  # the same noise in every row: one handwriting per column
            return model.sample(
                labels=labels, noise=model.noise(self.nrow, seed=self.seed).repeat(NUM_CLASSES, 1)
            )
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
    """Fixed validation digits (first column) encoded, then decoded as every digit 0-9: the same
    handwriting, another digit. CVAE only."""

    tag = "samples/style_transfer"
    nrow = NUM_CLASSES + 1

    def __init__(self, n_images: int = 8):
        self.n_images = n_images

    def applies(self, model):
        return model.n_labels > 0

    def images(self, trainer, model):
        return style_transfer(model, *_validation_batch(trainer, self.n_images))


class Interpolation(ImageLogger):
    """Straight lines in z between two fixed prior draws, decoded, a row per digit (CVAE) or pair of draws
    (VAE): smooth rows mean a smooth latent space."""

    tag = "samples/interpolation"

    def __init__(self, steps: int = 10, seed: int = 1):
        self.nrow, self.seed = steps, seed

    def images(self, trainer, model):
        a, b = model.noise(NUM_CLASSES, NUM_CLASSES, seed=self.seed)
        return model.sample(labels=repeat_digits(self.nrow), noise=lerp(a, b, self.nrow))


class LatentManifold(ImageLogger):
    """A 2-D latent space's decoder over a grid of z (prior quantiles) for one digit (CVAE): how the digit
    changes across the latent plane. Skipped for other latent sizes."""

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
    """The encoder means of the first `n_images` validation digits once training ends, in TensorBoard's
    PROJECTOR tab (`latent/mu`), labelled and drawn as their digits, for PCA, t-SNE or UMAP (a VAE's z has to
    tell the digits apart, a CVAE's need not). Skipped without a TensorBoard logger or validation data."""

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
            mu.float().cpu(),
            metadata=labels.tolist(),
            label_img=x.float().cpu(),
            global_step=trainer.global_step,
            tag=self.tag,
        )
