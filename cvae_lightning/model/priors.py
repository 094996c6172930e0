"""Priors p(z|y) (conf/model/prior/); `forward(y)` is the Gaussian part the KL per dimension is against."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cvae_lightning.errors import check, check_int


def gaussian_log_prob(z: Tensor, mu: Tensor = 0.0, logvar: Tensor = 0.0) -> Tensor:
    """log N(z; mu, exp(logvar)), summed over the last dimension."""
    logvar = torch.as_tensor(logvar, dtype=z.dtype)  # a float: a host scalar, no GPU copy (a sync)
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).pow(2) / logvar.exp()).sum(dim=-1)


class StandardPrior(nn.Module):
    """p(z) = N(0, I) whatever the label (the VAE's); the base of the priors z = mu_y + sigma_y * u."""

    closed_form_kl = True  # False: the KL is log q - log p at the draws of z

    def __init__(self, latent_dim: int, n_labels: int = 0):
        super().__init__()
        self.register_buffer("zeros", torch.zeros(1, latent_dim), persistent=False)  # on the model's device

    def forward(self, y: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.zeros, self.zeros

    def from_noise(self, u: Tensor, y: Tensor | None) -> Tensor:
        mu, logvar = self(y)
        return mu + (0.5 * logvar).exp() * u

    def noise_and_log_det(self, z: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        """The u that `from_noise` maps to z, and the log-determinant of that inverse's Jacobian."""
        mu, logvar = self(y)
        return (z - mu) * (-0.5 * logvar).exp(), -0.5 * logvar.sum(-1)

    def log_prob(self, z: Tensor, y: Tensor | None) -> Tensor:
        return gaussian_log_prob(z, *self(y))


class ConditionalPrior(StandardPrior):
    """N(mu_y, sigma_y^2) learned per label, so that z need not carry the digit; starts as N(0, I)."""

    def __init__(self, latent_dim: int, n_labels: int):
        check("model.prior", type(self).__name__, n_labels > 0, "model/prior=standard (the VAE has no label)")
        super().__init__(latent_dim)
        self.gaussian = nn.Linear(n_labels, 2 * latent_dim)
        nn.init.zeros_(self.gaussian.weight)
        nn.init.zeros_(self.gaussian.bias)

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.gaussian(y.to(self.gaussian.weight.dtype)).chunk(2, dim=1)


class Coupling(nn.Module):
    """An affine coupling (RealNVP) conditioned on y, zero-initialised: it starts as the identity."""

    def __init__(self, latent_dim: int, n_labels: int, mask: Tensor, hidden: int = 64):
        super().__init__()
        self.register_buffer("mask", mask.float())
        self.net = nn.Sequential(
            nn.Linear(latent_dim + n_labels, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim)
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, u: Tensor, y: Tensor, inverse: bool = False) -> tuple[Tensor, Tensor]:
        """The layer's output (or with `inverse` its input) and the log-determinant of that map's Jacobian."""
        y = y.to(u.dtype).expand(*u.shape[:-1], y.shape[-1])
        log_s, t = self.net(torch.cat([u * self.mask, y], dim=-1)).chunk(2, dim=-1)
        keep = 1 - self.mask
        log_s, t = torch.tanh(log_s) * keep, t * keep  # tanh: a bounded scale keeps the inverse stable
        return ((u - t) * (-log_s).exp(), -log_s.sum(-1)) if inverse else (u * log_s.exp() + t, log_s.sum(-1))


class FlowPrior(ConditionalPrior):
    """The conditional Gaussian after `layers` couplings: the prior takes the shape of the encoder's codes."""

    closed_form_kl = False  # the couplings mix dimensions: no closed form

    def __init__(self, latent_dim: int, n_labels: int, layers: int = 4):
        check_int("model.prior.layers", layers, 1)
        super().__init__(latent_dim, n_labels)
        masks = [torch.arange(latent_dim) % 2 == i % 2 for i in range(layers)]
        self.flow = nn.ModuleList(Coupling(latent_dim, n_labels, m) for m in masks)

    def from_noise(self, u: Tensor, y: Tensor) -> Tensor:
        for layer in self.flow:
            u = layer(u, y)[0]
        return super().from_noise(u, y)

    def noise_and_log_det(self, z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        u, log_det = super().noise_and_log_det(z, y)
        for layer in reversed(self.flow):
            u, layer_log_det = layer(u, y, inverse=True)
            log_det = log_det + layer_log_det
        return u, log_det

    def log_prob(self, z: Tensor, y: Tensor) -> Tensor:
        u, log_det = self.noise_and_log_det(z, y)
        return gaussian_log_prob(u) + log_det
