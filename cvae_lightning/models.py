"""What the models are: encoder Q(z|x[,y]), decoder P(x|z[,y]), the ELBO, and sampling."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvae_lightning import compat, nets
from cvae_lightning.checkpoints import Stamped
from cvae_lightning.data import NUM_CLASSES
from cvae_lightning.errors import (
    NonFiniteLossError,
    check_choice,
    check_int,
    check_int_list,
    check_number,
)

PRIORS = ("standard", "conditional")
LR_SCHEDULES = ("constant", "cosine", "iwae")
# what training maximises: the ELBO (recon averaged over k samples, KL in closed form) or the IWAE bound
OBJECTIVES = ("elbo", "iwae")
# the scalar terms of `elbo_terms`, logged as train/, val/ and test/ metrics (nelbo: the negative ELBO)
ELBO_PARTS = ("nelbo", "recon", "kl")
LOG_2PI = math.log(2 * math.pi)
LOGVAR_MIN, LOGVAR_MAX = -20.0, 10.0
# devices whose non-finite loss check is read back only now and then: a read makes the host wait for them
DEFERRED_CHECK_DEVICES = ("cuda",)


def gaussian_kl_per_dim(mu: Tensor, logvar: Tensor, prior_mu: Tensor = 0.0, prior_logvar: Tensor = 0.0):
    """KL(N(mu, exp(logvar)) || N(prior_mu, exp(prior_logvar))) per example and latent dimension."""
    prior_logvar = torch.as_tensor(prior_logvar, dtype=mu.dtype, device=mu.device)
    return 0.5 * (prior_logvar - logvar + (logvar.exp() + (mu - prior_mu).pow(2)) / prior_logvar.exp() - 1.0)


def gaussian_log_prob(z: Tensor, mu: Tensor = 0.0, logvar: Tensor = 0.0) -> Tensor:
    """log N(z; mu, exp(logvar)), summed over the last dimension."""
    logvar = torch.as_tensor(logvar, dtype=z.dtype, device=z.device)
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) / logvar.exp()).sum(dim=-1)


def bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    """-log P(x|z) per example, summed over pixels (x may be continuous in [0, 1])."""
    return F.binary_cross_entropy_with_logits(logits.flatten(1), x.flatten(1), reduction="none").sum(dim=1)


def iwae_lr_factor(epoch: int) -> float:
    """The learning-rate factor of the IWAE paper's schedule at `epoch`: 10^(-i/7) in stage i, which lasts
    3^i epochs; after the 3,280 epochs of stages 0-7 it stays at stage 7's."""
    stage, end = 0, 1
    while epoch >= end and stage < 7:
        stage += 1
        end += 3**stage
    return 10 ** (-stage / 7)


class VAE(Stamped):
    """Variational autoencoder on 28x28 images, with an MLP (`net="mlp"`) or convolutional encoder/decoder.

    Both models take the same arguments everywhere: `labels` are integer digits (N,), which the CVAE feeds
    one-hot to its encoder and decoder (a (N, 10) float tensor passes as given: mixed labels) and the VAE
    ignores. The prior is N(0, I), or for the CVAE optionally learned per label (`prior="conditional"`:
    p(z|y) = N(mu_y, sigma_y^2)), so that z need not carry the digit identity. The KL term is weighted by
    `beta`, ramped up from 0 over the first `kl_warmup_epochs`; the logged `*/nelbo` is always the true -ELBO.
    `objective="iwae"` trains on the IWAE bound with `k` importance samples instead (Burda et al. 2015),
    logged as `*/niwae_k<k>`; with `objective="elbo"` and k > 1 the reconstruction term is averaged over k
    samples.
    """

    n_classes = 0

    def __init__(
        self,
        latent_dim: int = 20,
        hidden_dims: Sequence[int] = (512, 256),
        lr: float = 2e-3,
        net: str = "mlp",
        channels: Sequence[int] = (32, 64),
        prior: str = "standard",
        beta: float = 1.0,
        kl_warmup_epochs: float = 0,
        compile: bool = False,
        lr_schedule: str = "constant",
        objective: str = "elbo",
        k: int = 1,
        activation: str = "relu",
        adam_eps: float = 1e-8,
    ):
        super().__init__()
        check_int("model.latent_dim", latent_dim, 1)
        hidden_dims = check_int_list("model.hidden_dims", hidden_dims)  # a plain list: weights_only loading
        channels = check_int_list("model.channels", channels, example="[32,64]")
        check_number("model.lr", lr, 0, above=True)
        check_choice("model.prior", prior, PRIORS if self.n_classes else PRIORS[:1])
        check_number("model.beta", beta)
        check_number("model.kl_warmup_epochs", kl_warmup_epochs)
        check_choice("model.compile", compile, (False, True))
        check_choice("model.lr_schedule", lr_schedule, LR_SCHEDULES)
        check_choice("model.objective", objective, OBJECTIVES)
        check_int("model.k", k, 1)
        check_choice("model.activation", activation, nets.ACTIVATIONS)
        check_number("model.adam_eps", adam_eps, 0, above=True)
        self.save_hyperparameters()
        self.encoder, self.decoder = nets.build(
            net,
            n_classes=self.n_classes,
            hidden_dims=hidden_dims,
            latent_dim=latent_dim,
            channels=channels,
            activation=activation,
        )
        if prior == "conditional":  # (mu_y, logvar_y) per label, starting at N(0, I)
            self.prior_net = nn.Linear(self.n_classes, 2 * latent_dim)
            nn.init.zeros_(self.prior_net.weight)
            nn.init.zeros_(self.prior_net.bias)

    # -- networks ---------------------------------------------------------------------------------
    def condition(self, labels: Tensor | None) -> Tensor | None:
        """What the networks are given for `labels`: one-hot rows (CVAE), or nothing (VAE)."""
        if not self.n_classes:
            return None
        if labels is None:
            raise ValueError(f"a {type(self).__name__} needs labels: the digit of each image")
        labels = labels.to(self.device)
        return F.one_hot(labels.long(), self.n_classes).float() if labels.dim() == 1 else labels.float()

    def prior_params(self, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of p(z[|y]): zeros for N(0, I), one row per label for the learned prior."""
        if self.hparams.prior == "conditional":
            return self.prior_net(self.condition(labels).to(self.dtype)).chunk(2, dim=1)
        zeros = torch.zeros(1, self.hparams.latent_dim, device=self.device)
        return zeros, zeros

    def encode(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of Q(z | x[, y])."""
        mu, logvar = self.encoder(x, self.condition(labels)).chunk(2, dim=1)
        # a safe range: exp(logvar) stays finite in the KL even in fp16/bf16
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Bernoulli logits of P(x | z[, y]), shaped like images."""
        return self.decoder(z, self.condition(labels))

    def forward(
        self, x: Tensor, labels: Tensor | None = None, k: int = 1
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(logits (k, B, ...), z (k, B, latent), mu, logvar): k reparameterised draws from Q(z|x[,y])."""
        y = self.condition(labels)  # once: encoder and decoder take the same one-hot rows
        mu, logvar = self.encode(x, y)
        z = mu + torch.randn(k, *mu.shape, dtype=mu.dtype, device=mu.device) * (0.5 * logvar).exp()
        y_k = None if y is None else y.expand(k, *y.shape).flatten(0, 1)
        return self.decode(z.flatten(0, 1), y_k).unflatten(0, (k, -1)), z, mu, logvar

    # -- objective --------------------------------------------------------------------------------
    def elbo_terms(self, x: Tensor, labels: Tensor | None = None, k: int | None = None) -> dict[str, Tensor]:
        """The negative ELBO (`nelbo`) in nats per image (batch mean), its two parts, and the KL of each
        latent dimension (`kl_per_dim`, batch mean: a dimension above ~0.01 nats is "active").

        The reconstruction term is averaged over `k` samples (default: the model's `k`); with
        `objective="iwae"` the same samples also give `niwae`, minus the IWAE bound (batch mean).
        """
        # the loss in fp32 under bf16/fp16 autocast: sums over 784 pixels need more than bf16's 8 bits
        k = k or self.hparams.get("k", 1)
        y = self.condition(labels)
        logits, z, mu, logvar = [t.float() for t in self(x, y, k)]
        prior = [t.float() for t in self.prior_params(y)]
        kl_per_dim = gaussian_kl_per_dim(mu, logvar, *prior).mean(dim=0)
        recon_k = bernoulli_nll(logits.flatten(0, 1), x.expand(k, *x.shape).flatten(0, 1)).view(k, -1)
        recon, kl = recon_k.mean(), kl_per_dim.sum()
        terms = {"nelbo": recon + kl, "recon": recon, "kl": kl, "kl_per_dim": kl_per_dim}
        if self.hparams.get("objective") == "iwae":
            log_w = -recon_k + gaussian_log_prob(z, *prior) - gaussian_log_prob(z, mu, logvar)
            terms["niwae"] = -(torch.logsumexp(log_w, dim=0) - math.log(k)).mean()
        return terms

    def loss_name(self) -> str:
        """The logged name of what training minimises: `nelbo`, or `niwae_k<k>` (minus the IWAE bound)."""
        return f"niwae_k{self.hparams.k}" if self.hparams.get("objective") == "iwae" else "nelbo"

    def kl_weight(self) -> float:
        """beta, ramped linearly from 0 over the first `kl_warmup_epochs` of training."""
        beta, warmup = self.hparams.beta, self.hparams.kl_warmup_epochs
        trainer = compat.attached_trainer(self)
        if not warmup or trainer is None or not math.isfinite(trainer.num_training_batches):
            return beta
        return beta * min(1.0, trainer.global_step / (warmup * trainer.num_training_batches))

    @torch.no_grad()
    def log_likelihood(
        self, x: Tensor, labels: Tensor | None = None, k: int = 1000, chunk: int = 100, compile: bool = False
    ) -> Tensor:
        """Importance-sampled log p(x[|y]) per image (the IWAE bound with k samples from Q(z|x[,y])).

        Samples are decoded `chunk` at a time, so memory stays (chunk x batch x 784) whatever k is.
        `compile=True` fuses decoder and likelihood with inductor (about 2.7x faster on CPU; the noise is
        drawn outside, so the number is the eager one up to float rounding).
        """
        y = self.condition(labels)
        mu, logvar = self.encode(x, y)
        prior = self.prior_params(y)
        log_weights = self._log_weights
        if compile:
            log_weights = vars(self).setdefault(
                "_compiled_log_weights", torch.compile(log_weights, dynamic=False)
            )
        # all the noise at once (k x batch x latent, small): the same draws however k is chunked
        noise = torch.randn(k, *mu.shape, device=mu.device)
        log_w = [log_weights(x, y, mu, logvar, *prior, eps) for eps in noise.split(chunk)]
        return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k)

    def _log_weights(self, x, y, mu, logvar, prior_mu, prior_logvar, eps: Tensor) -> Tensor:
        """log p(x|z) + log p(z[|y]) - log q(z|x[,y]) at z = mu + sigma * eps, eps (n, B, latent): (n, B)."""
        z = mu + (0.5 * logvar).exp() * eps
        n = len(eps)
        y_n = None if y is None else y.expand(n, *y.shape).flatten(0, 1)
        logits = self.decode(z.flatten(0, 1), y_n)
        log_px = -bernoulli_nll(logits, x.expand(n, *x.shape).flatten(0, 1)).view(n, -1)
        return log_px + gaussian_log_prob(z, prior_mu, prior_logvar) - gaussian_log_prob(z, mu, logvar)

    # -- training ---------------------------------------------------------------------------------
    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> dict[str, Tensor]:
        x, labels = batch
        terms = self.elbo_terms(x, labels)
        # training logs per step; val/test log the epoch mean, weighted by batch size and reduced over ranks
        per_step = stage == "train"
        if per_step and not self._logs_this_step():
            return terms
        for name in (*ELBO_PARTS, "niwae") if "niwae" in terms else ELBO_PARTS:
            self.log(
                f"{stage}/{self.loss_name() if name == 'niwae' else name}",
                terms[name],
                on_step=per_step,
                on_epoch=not per_step,
                prog_bar=name == ("niwae" if "niwae" in terms else "nelbo"),
                batch_size=len(x),
                sync_dist=not per_step,
            )
        return terms

    def training_step(self, batch, batch_idx):
        terms = self._shared_step(batch, "train")
        self._check_finite(terms, batch_idx)
        if "niwae" in terms:  # the IWAE bound has no separate KL term to weight
            return terms["niwae"]
        weight = self.kl_weight()
        if weight != 1.0:
            self.log("train/kl_weight", weight, on_step=True, on_epoch=False)
        return terms["recon"] + weight * terms["kl"]

    def _check_finite(self, terms: dict[str, Tensor], batch_idx: int) -> None:
        """Stops training when the loss is not finite: on a CPU at that step, before the optimizer step
        spoils the weights.

        On a GPU, reading the check back every step would make the host wait for the GPU every step: there
        the checks gather on the device and are read only where the host waits anyway (when Lightning logs)
        and at an epoch's last step (before its validation and checkpoints). The error then names the steps
        since the last read, and the weights may be spoiled already (no checkpoint is written from them).
        """
        finite, where = torch.isfinite(terms["nelbo"]), f"step {self.global_step}"
        if finite.device.type in DEFERRED_CHECK_DEVICES:
            since, earlier = getattr(self, "_finite_since", None) or (self.global_step, True)
            finite = finite & earlier
            trainer = compat.attached_trainer(self)
            epoch_end = trainer is not None and batch_idx + 1 >= trainer.num_training_batches
            if not (self._logs_this_step() or epoch_end):
                self._finite_since = (since, finite)
                return
            self._finite_since = None
            if since < self.global_step:
                where = f"a step from {since} to {self.global_step}"
        if not finite:
            parts = ", ".join(f"{name}={terms[name].item():.4g}" for name in ("recon", "kl"))
            raise NonFiniteLossError(f"non-finite loss at {where} ({parts})")

    def validation_step(self, batch, batch_idx):
        return self._shared_step(batch, "val")  # ActiveUnits reads its kl_per_dim

    def test_step(self, batch, batch_idx):
        self._shared_step(batch, "test")

    def _logs_this_step(self) -> bool:
        """Whether to call `self.log`, costly on CPU: not on the steps the loggers do not write."""
        trainer = compat.attached_trainer(self)
        return trainer is None or trainer.fast_dev_run or compat.logs_this_step(trainer)

    def configure_model(self):
        """`compile=True`: the loss, its backward included, as fused inductor kernels; eager otherwise."""
        if self.hparams.get("compile") and "elbo_terms" not in vars(self):
            self.elbo_terms = torch.compile(self.elbo_terms, dynamic=False)

    def configure_optimizers(self):
        # fused: one kernel for the whole update (on CPU the default is a Python loop over the parameters)
        fused = self.device.type in ("cpu", "cuda")
        eps = self.hparams.get("adam_eps", 1e-8)
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, eps=eps, fused=fused)
        schedule = self.hparams.get("lr_schedule", "constant")
        if schedule == "constant":
            return optimizer
        if schedule == "iwae":  # Burda et al.: 3^i epochs at lr * 10^(-i/7), i = 0..7 (3,280 epochs)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, iwae_lr_factor)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}
        # cosine: lr decays to 0 over the whole run, step by step (max_epochs sets the length)
        steps = self.trainer.estimated_stepping_batches
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, int(steps)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # -- use --------------------------------------------------------------------------------------
    def noise(self, *sizes: int, seed: int | None = None) -> Tensor | list[Tensor]:
        """(n, latent_dim) standard-normal draws on the model's device, one tensor per size given (drawn in
        turn): from torch's global generator, or from `seed` (the same noise every call: the fixed
        "handwriting" of the TensorBoard grids)."""
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        device = self.device if generator is None else "cpu"
        draws = [torch.randn(n, self.hparams.latent_dim, generator=generator, device=device) for n in sizes]
        draws = [d.to(self.device) for d in draws]
        return draws[0] if len(draws) == 1 else draws

    @torch.no_grad()
    def images(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """The decoder's mean images, in [0, 1], for latent codes z."""
        return torch.sigmoid(self.decode(z.to(self.device), labels))

    @torch.no_grad()
    def sample(
        self,
        n: int | None = None,
        labels: Tensor | None = None,
        *,
        temperature: float = 1.0,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Images in [0, 1] decoded from z = mu + temperature * sigma * noise of the prior p(z[|y]).

        As many as `labels` (one per digit asked for), or `n`, or rows of `noise`; a CVAE given no labels
        draws them uniformly. temperature 1 samples the prior, lower values stay nearer its mean, 0 decodes
        the prior mean. `noise` (standard normal, (n, latent_dim)) is drawn unless given: fixed noise gives
        the same "handwriting" under any prior, the learned conditional one included.
        """
        if n is None:
            n = len(labels) if labels is not None else len(noise) if noise is not None else 1
        if labels is None and self.n_classes:
            labels = torch.randint(self.n_classes, (n,))
        mu, logvar = self.prior_params(labels)
        noise = self.noise(n) if noise is None else noise.to(self.device)
        return self.images(mu + temperature * (0.5 * logvar).exp() * noise, labels)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Decoder mean at z = mu of Q(z|x[,y]): the model's deterministic reconstruction, in [0, 1]."""
        x = x.to(self.device)
        return self.images(self.encode(x, labels)[0], labels)


class CVAE(VAE):
    """Conditional VAE: Q(z|x,y) and P(x|z,y) with y the one-hot digit label. Pick a digit, get that digit."""

    n_classes = NUM_CLASSES
