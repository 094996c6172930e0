"""A conditional VAE (`n_labels=0`: the VAE), in nats per image; labels: digits (N,) or weights (N, 10)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvae_lightning.model.priors import StandardPrior, gaussian_log_prob

LOGVAR_MIN, LOGVAR_MAX = -20.0, 10.0  # the encoder's: exp(logvar) stays finite in the KL even in fp16/bf16


def gaussian_kl(mu: Tensor, logvar: Tensor, prior_mu: Tensor = 0.0, prior_logvar: Tensor = 0.0) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(prior_mu, exp(prior_logvar))) per example and latent dimension."""
    prior_logvar = torch.as_tensor(prior_logvar, dtype=mu.dtype)  # a float: a host scalar, no GPU copy
    return 0.5 * (prior_logvar - logvar + (logvar.exp() + (mu - prior_mu).pow(2)) / prior_logvar.exp() - 1.0)


def bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    """-log P(x|z) per example, summed over pixels (x may be continuous in [0, 1])."""
    return F.binary_cross_entropy_with_logits(logits.flatten(1), x.flatten(1), reduction="none").sum(dim=1)


class CVAE(nn.Module):
    """Q(z|x,y) from `encoder`, P(x|z,y) (Bernoulli logits) from `decoder`, p(z|y) from `prior` (N(0, I))."""

    def __init__(self, encoder, decoder, latent_dim: int, n_labels: int = 10, prior: nn.Module | None = None):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.latent_dim, self.n_labels = latent_dim, n_labels
        self.prior_net = StandardPrior(latent_dim) if prior is None else prior

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def use_compiled(self, name: str) -> None:
        """Method `name` through torch.compile from now on; checkpoints stay the same."""
        if name not in vars(self):  # once: compiling the compiled function again would recompile
            setattr(self, name, torch.compile(getattr(self, name), dynamic=False))

    def condition(self, labels: Tensor | None) -> Tensor | None:
        """y, what the networks are given for `labels`: one-hot rows (CVAE), or None (VAE)."""
        if not self.n_labels:
            return None
        if labels is None:
            raise ValueError("a CVAE needs labels: the digit of each image")
        labels = labels.to(self.device)
        return F.one_hot(labels.long(), self.n_labels).float() if labels.dim() == 1 else labels.float()

    def from_noise(self, noise: Tensor, y: Tensor | None, temperature: float = 1.0) -> Tensor:
        """z of the prior p(z|y) for standard-normal `noise` scaled by `temperature`."""
        return self.prior_net.from_noise(temperature * noise, y)

    def to_noise(self, z: Tensor, y: Tensor | None) -> Tensor:
        """The noise that `from_noise` maps to z at temperature 1: its "style"."""
        return self.prior_net.noise_and_log_det(z, y)[0]

    def prior_log_prob(self, z: Tensor, y: Tensor | None) -> Tensor:
        """log p(z|y) for z (..., B, D): (..., B)."""
        return self.prior_net.log_prob(z, y)

    def prior(self, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of p(z|y)'s Gaussian part (zeros for N(0, I), or one row per label)."""
        return self.prior_net(self.condition(labels))

    def encode(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of Q(z|x,y)."""
        mu, logvar = self.encoder(x, self.condition(labels)).chunk(2, dim=1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Bernoulli logits of P(x|z,y), shaped like images."""
        return self.decoder(z, self.condition(labels))

    def elbo(self, x: Tensor, labels: Tensor | None = None, k: int = 1, iwae: bool = False) -> dict:
        """`nelbo` = `recon` + `kl` (batch means over `k` draws of z), `kl_per_dim`; `niwae` with `iwae`."""
        y = self.condition(labels)  # once: encoder, decoder and prior take the same one-hot rows
        mu, logvar = self.encode(x, y)
        z = mu + torch.randn(k, *mu.shape, dtype=mu.dtype, device=mu.device) * (0.5 * logvar).exp()
        recon_k = self._nll(x, y, z)
        z, mu, logvar = z.float(), mu.float(), logvar.float()
        # per dimension against the prior's Gaussian part (a flow's couplings mix dimensions)
        kl_per_dim = gaussian_kl(mu, logvar, *[t.float() for t in self.prior(y)]).mean(dim=0)
        kl = kl_per_dim.sum()
        if not self.prior_net.closed_form_kl:  # log q - log p at the same draws of z
            kl = (gaussian_log_prob(z, mu, logvar) - self.prior_log_prob(z, y)).mean()
        recon = recon_k.mean()
        terms = {"nelbo": recon + kl, "recon": recon, "kl": kl, "kl_per_dim": kl_per_dim}
        if iwae:
            log_w = -recon_k + self.prior_log_prob(z, y) - gaussian_log_prob(z, mu, logvar)
            terms["niwae"] = -(torch.logsumexp(log_w, dim=0) - math.log(k)).mean()
        return terms

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, labels: Tensor | None = None, k: int = 1000, chunk: int = 100):
        """log p(x|y) per image: the IWAE bound of k samples, decoded `chunk` at a time."""
        y = self.condition(labels)
        mu, logvar = self.encode(x, y)
        noise = torch.randn(k, *mu.shape, device=mu.device)  # at once: chunking cannot change the draws
        log_w = [self.log_weights(x, y, mu, logvar, eps) for eps in noise.split(chunk)]
        return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k)

    def log_weights(self, x, y, mu, logvar, eps: Tensor) -> Tensor:
        """log p(x|z) + log p(z|y) - log q(z|x,y) at z = mu + sigma * eps, eps (n, B, latent): (n, B)."""
        z = mu + (0.5 * logvar).exp() * eps
        return -self._nll(x, y, z) + self.prior_log_prob(z, y) - gaussian_log_prob(z, mu, logvar)

    def _nll(self, x: Tensor, y: Tensor | None, z: Tensor) -> Tensor:
        """-log P(x|z,y) of n draws z (n, B, latent): (n, B); fp32 under autocast (784-pixel sums need it)."""
        n = len(z)
        logits = self.decode(z.flatten(0, 1), None if y is None else y.expand(n, *y.shape).flatten(0, 1))
        return bernoulli_nll(logits.float(), x.expand(n, *x.shape).flatten(0, 1)).view(n, -1)

    def noise(self, *sizes: int, seed: int | None = None) -> Tensor | list[Tensor]:
        """(n, latent_dim) standard-normal draws per size given, from the global generator or from `seed`."""
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        device = self.device if generator is None else "cpu"
        d = self.latent_dim
        draws = [torch.randn(n, d, generator=generator, device=device).to(self.device) for n in sizes]
        return draws[0] if len(draws) == 1 else draws

    @torch.no_grad()
    def images(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """The decoder's mean images, in [0, 1], for latent codes z."""
        return torch.sigmoid(self.decode(z.to(self.device), labels))

    @torch.no_grad()
    def sample(self, n: int | None = None, labels: Tensor | None = None, *, temperature=1.0, noise=None):
        """Images in [0, 1] from `from_noise(noise, temperature)`; a CVAE given no labels draws them."""
        if n is None:
            n = len(labels) if labels is not None else len(noise) if noise is not None else 1
        if labels is None and self.n_labels:
            labels = torch.randint(self.n_labels, (n,))
        noise = self.noise(n) if noise is None else noise.to(self.device)
        return self.images(self.from_noise(noise, self.condition(labels), temperature), labels)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """The decoder's mean at z = mu of Q(z|x,y), in [0, 1]."""
        return self.images(self.encode(x.to(self.device), labels)[0], labels)
