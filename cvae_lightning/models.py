"""What the models are: encoder Q(z|x[,y]), decoder P(x|z[,y]), the ELBO, and sampling."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvae_lightning.data import IMAGE_SHAPE, NUM_CLASSES

PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per example, summed over latent dimensions."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    """-log P(x|z) per example, summed over pixels (x may be continuous in [0, 1])."""
    return F.binary_cross_entropy_with_logits(logits.flatten(1), x.flatten(1), reduction="none").sum(dim=1)


class VAE(L.LightningModule):
    """Variational autoencoder on 28x28 images, with an MLP encoder and decoder.

    `n_classes > 0` (the CVAE) concatenates the one-hot label to the encoder's and the decoder's input.
    """

    n_classes = 0

    def __init__(self, latent_dim: int = 20, hidden_dims: Sequence[int] = (512, 256), lr: float = 1e-3):
        super().__init__()
        hidden_dims = [int(h) for h in hidden_dims]  # plain list in hparams, so weights_only loading works
        self.save_hyperparameters()
        self.encoder = mlp([PIXELS + self.n_classes, *hidden_dims, 2 * latent_dim])
        self.decoder = mlp([latent_dim + self.n_classes, *reversed(hidden_dims), PIXELS])

    # -- networks ---------------------------------------------------------------------------------
    def _with_condition(self, h: Tensor, y: Tensor | None) -> Tensor:
        return torch.cat([h, y.to(h.dtype)], dim=1) if self.n_classes else h

    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of Q(z | x[, y])."""
        mu, logvar = self.encoder(self._with_condition(x.flatten(1), y)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Bernoulli logits of P(x | z[, y]), shaped like images."""
        return self.decoder(self._with_condition(z, y)).view(-1, *IMAGE_SHAPE)

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(x, y)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decode(z, y), mu, logvar

    # -- objective --------------------------------------------------------------------------------
    def elbo_terms(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """Negative ELBO in nats per image (batch mean) and its two parts."""
        logits, mu, logvar = self(x, y)
        recon, kl = bernoulli_nll(logits, x).mean(), gaussian_kl(mu, logvar).mean()
        return {"elbo": recon + kl, "recon": recon, "kl": kl}

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        terms = self.elbo_terms(x, y)
        # training logs per step; val/test log the epoch mean, weighted by batch size and reduced over ranks
        per_step = stage == "train"
        for name, value in terms.items():
            self.log(
                f"{stage}/{name}",
                value,
                on_step=per_step,
                on_epoch=not per_step,
                prog_bar=name == "elbo",
                batch_size=len(x),
                sync_dist=not per_step,
            )
        return terms["elbo"]

    def training_step(self, batch, batch_idx):
        return self._shared_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._shared_step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    # -- use --------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, z: Tensor | None = None) -> Tensor:
        """n images in [0, 1] decoded from prior noise (or from the given z)."""
        z = torch.randn(n, self.hparams.latent_dim, device=self.device) if z is None else z.to(self.device)
        return torch.sigmoid(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder mean at z = mu of Q(z|x): the model's deterministic reconstruction, in [0, 1]."""
        return torch.sigmoid(self.decode(self.encode(x.to(self.device))[0]))


class CVAE(VAE):
    """Conditional VAE: Q(z|x,y) and P(x|z,y) with y the one-hot digit label. Pick a digit, get that digit."""

    n_classes = NUM_CLASSES

    @staticmethod
    def one_hot(labels: Tensor) -> Tensor:
        return F.one_hot(labels.long(), NUM_CLASSES).float()

    @torch.no_grad()
    def sample(self, labels: Tensor, z: Tensor | None = None) -> Tensor:
        """One image in [0, 1] per label (LongTensor of digits), from prior noise (or the given z)."""
        labels = labels.to(self.device)
        if z is None:
            z = torch.randn(len(labels), self.hparams.latent_dim, device=self.device)
        return torch.sigmoid(self.decode(z.to(self.device), self.one_hot(labels)))

    @torch.no_grad()
    def reconstruct(self, x: Tensor, labels: Tensor) -> Tensor:
        x, y = x.to(self.device), self.one_hot(labels.to(self.device))
        return torch.sigmoid(self.decode(self.encode(x, y)[0], y))
