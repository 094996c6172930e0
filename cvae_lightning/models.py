"""What the models are: encoder Q(z|x[,y]), decoder P(x|z[,y]), the ELBO, and sampling."""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvae_lightning import nets
from cvae_lightning.data import NUM_CLASSES

PRIORS = ("standard", "conditional")
LR_SCHEDULES = ("constant", "cosine")
# the scalar terms of `elbo_terms`, logged as train/, val/ and test/ metrics
ELBO_PARTS = ("elbo", "recon", "kl")
LOG_2PI = math.log(2 * math.pi)
LOGVAR_MIN, LOGVAR_MAX = -20.0, 10.0


def _require_one_of(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"model.{key}={value} is not allowed: expected one of {', '.join(allowed)}")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the loss parts."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as this model: the message says why."""


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


class VAE(L.LightningModule):
    """Variational autoencoder on 28x28 images, with an MLP (`net="mlp"`) or convolutional encoder/decoder.

    `n_classes > 0` (the CVAE) gives the one-hot label to the encoder and the decoder. The prior is N(0, I),
    or for the CVAE optionally learned per label (`prior="conditional"`: p(z|y) = N(mu_y, sigma_y^2)), so
    that z need not carry the digit identity. The KL term is weighted by `beta` (a beta-VAE), ramped up
    from 0 over the first `kl_warmup_epochs` (KL warm-up); the logged `*/elbo` is always the true -ELBO.
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
    ):
        super().__init__()
        hidden_dims = [int(h) for h in hidden_dims]  # plain list in hparams, so weights_only loading works
        channels = [int(c) for c in channels]
        _require_one_of("prior", prior, PRIORS if self.n_classes else PRIORS[:1])
        _require_one_of("lr_schedule", lr_schedule, LR_SCHEDULES)
        for key, value in (("beta", beta), ("kl_warmup_epochs", kl_warmup_epochs)):
            if value < 0:
                raise ValueError(f"model.{key}={value} is not allowed: expected a number >= 0")
        self.save_hyperparameters()
        self.encoder, self.decoder = nets.build(
            net, n_classes=self.n_classes, hidden_dims=hidden_dims, latent_dim=latent_dim, channels=channels
        )
        if prior == "conditional":  # (mu_y, logvar_y) per label, starting at N(0, I)
            self.prior_net = nn.Linear(self.n_classes, 2 * latent_dim)
            nn.init.zeros_(self.prior_net.weight)
            nn.init.zeros_(self.prior_net.bias)

    # -- networks ---------------------------------------------------------------------------------
    def _condition(self, y: Tensor | None) -> Tensor | None:
        return y if self.n_classes else None

    def prior(self, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of p(z[|y]): zeros for N(0, I), one row per label for the learned prior."""
        if self.hparams.prior == "conditional":
            return self.prior_net(y.to(self.dtype)).chunk(2, dim=1)
        zeros = torch.zeros(1, self.hparams.latent_dim, device=self.device)
        return zeros, zeros

    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of Q(z | x[, y])."""
        mu, logvar = self.encoder(x, self._condition(y)).chunk(2, dim=1)
        # a safe range: exp(logvar) stays finite in the KL even in fp16/bf16
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Bernoulli logits of P(x | z[, y]), shaped like images."""
        return self.decoder(z, self._condition(y))

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(x, y)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decode(z, y), mu, logvar

    # -- objective --------------------------------------------------------------------------------
    def elbo_terms(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """Negative ELBO in nats per image (batch mean), its two parts, and the KL of each latent dimension
        (`kl_per_dim`, batch mean: a dimension above ~0.01 nats is "active")."""
        # the loss in fp32 under bf16/fp16 autocast: sums over 784 pixels need more than bf16's 8 bits
        logits, mu, logvar = [t.float() for t in self(x, y)]
        prior = [t.float() for t in self.prior(y)]
        kl_per_dim = gaussian_kl_per_dim(mu, logvar, *prior).mean(dim=0)
        recon, kl = bernoulli_nll(logits, x).mean(), kl_per_dim.sum()
        return {"elbo": recon + kl, "recon": recon, "kl": kl, "kl_per_dim": kl_per_dim}

    def kl_weight(self) -> float:
        """beta, ramped linearly from 0 over the first `kl_warmup_epochs` of training."""
        beta, warmup = self.hparams.beta, self.hparams.kl_warmup_epochs
        if not warmup or self._trainer is None or not math.isfinite(self.trainer.num_training_batches):
            return beta
        return beta * min(1.0, self.trainer.global_step / (warmup * self.trainer.num_training_batches))

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Tensor | None = None, k: int = 1000, chunk: int = 100) -> Tensor:
        """Importance-sampled log p(x[|y]) per image (the IWAE bound with k samples from Q(z|x[,y])).

        Samples are drawn `chunk` at a time, so memory stays (chunk x batch x 784) whatever k is.
        """
        mu, logvar = self.encode(x, y)
        prior_mu, prior_logvar = self.prior(y)
        std, log_w = (0.5 * logvar).exp(), []
        for n in [chunk] * (k // chunk) + ([k % chunk] if k % chunk else []):
            z = mu + std * torch.randn(n, *mu.shape, device=mu.device)  # (n, B, latent)
            y_n = None if y is None else y.expand(n, *y.shape).flatten(0, 1)
            logits = self.decode(z.flatten(0, 1), y_n)
            log_px = -bernoulli_nll(logits, x.expand(n, *x.shape).flatten(0, 1)).view(n, -1)
            log_pz = gaussian_log_prob(z, prior_mu, prior_logvar)
            log_w.append(log_px + log_pz - gaussian_log_prob(z, mu, logvar))
        return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k)

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> dict[str, Tensor]:
        x, y = batch
        terms = self.elbo_terms(x, y)
        # training logs per step; val/test log the epoch mean, weighted by batch size and reduced over ranks
        per_step = stage == "train"
        if per_step and not self._logs_this_step():
            return terms
        for name in ELBO_PARTS:
            self.log(
                f"{stage}/{name}",
                terms[name],
                on_step=per_step,
                on_epoch=not per_step,
                prog_bar=name == "elbo",
                batch_size=len(x),
                sync_dist=not per_step,
            )
        return terms

    def training_step(self, batch, batch_idx):
        terms = self._shared_step(batch, "train")
        if not torch.isfinite(terms["elbo"]):  # stop before the optimizer step spoils the weights
            parts = ", ".join(f"{name}={terms[name].item():.4g}" for name in ("recon", "kl"))
            raise NonFiniteLossError(f"non-finite loss at step {self.global_step} ({parts})")
        weight = self.kl_weight()
        if weight != 1.0:
            self.log("train/kl_weight", weight, on_step=True, on_epoch=False)
        return terms["recon"] + weight * terms["kl"]

    def validation_step(self, batch, batch_idx):
        return self._shared_step(batch, "val")  # ActiveUnits reads its kl_per_dim

    def test_step(self, batch, batch_idx):
        self._shared_step(batch, "test")

    def _logs_this_step(self) -> bool:
        """Whether the loggers write this training step. `self.log` costs ~1 ms a call on CPU, so the steps
        in between (`trainer.log_every_n_steps`) skip it; the logged values are the same."""
        trainer = self._trainer
        return trainer is None or trainer.fast_dev_run or trainer._logger_connector.should_update_logs

    def configure_model(self):
        """`compile=True`: the loss, its backward included, as fused inductor kernels; eager otherwise."""
        if self.hparams.get("compile") and "elbo_terms" not in vars(self):
            self.elbo_terms = torch.compile(self.elbo_terms, dynamic=False)

    def configure_optimizers(self):
        # fused: one kernel for the whole update (on CPU the default is a Python loop over the parameters)
        fused = self.device.type in ("cpu", "cuda")
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, fused=fused)
        if self.hparams.get("lr_schedule", "constant") == "constant":
            return optimizer
        # cosine: lr decays to 0 over the whole run, step by step (max_epochs sets the length)
        steps = self.trainer.estimated_stepping_batches
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, int(steps)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["model_class"] = type(self).__name__  # evaluate.py tells a CVAE from a VAE or classifier

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuses a checkpoint of another model, or of another shape, with a one-line reason."""
        saved = checkpoint.get("model_class")
        if saved is not None and saved != type(self).__name__:
            raise CheckpointError(
                f"the checkpoint holds a {saved}, not a {type(self).__name__}: "
                f"load it with {saved}.load_from_checkpoint (or train.py model={saved.lower()})"
            )
        own = self.state_dict()
        for name, tensor in checkpoint["state_dict"].items():
            if name in own and own[name].shape != tensor.shape:
                built = ", ".join(
                    f"{k}={self.hparams[k]}" for k in ("latent_dim", "hidden_dims") if k in self.hparams
                )
                raise CheckpointError(
                    f"the checkpoint's {name} has shape {tuple(tensor.shape)}, this model's "
                    f"{tuple(own[name].shape)}: the checkpoint was trained with other sizes than {built}"
                )

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's loader, with one-line errors for a missing or unreadable file."""
        if not Path(checkpoint_path).is_file():
            raise CheckpointError(f"no checkpoint at {checkpoint_path}")
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        except (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, TypeError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"{checkpoint_path} is not a readable checkpoint ({reason})") from error

    # -- use --------------------------------------------------------------------------------------
    def prior_sample(
        self, n: int, y: Tensor | None = None, temperature: float = 1.0, noise: Tensor | None = None
    ) -> Tensor:
        """z = mu + temperature * sigma * noise from the prior (0: z = the prior mean).

        `noise` (standard normal, (n, latent_dim)) is drawn unless given: fixed noise gives the same
        "handwriting" under any prior, the learned conditional one included.
        """
        mu, logvar = self.prior(y)
        if noise is None:
            noise = torch.randn(n, self.hparams.latent_dim, device=self.device)
        return mu + temperature * (0.5 * logvar).exp() * noise.to(self.device)

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, z: Tensor | None = None, noise: Tensor | None = None
    ) -> Tensor:
        """n images in [0, 1] decoded from prior samples at `temperature` (or from the given z)."""
        z = self.prior_sample(n, temperature=temperature, noise=noise) if z is None else z.to(self.device)
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
    def sample(
        self, labels: Tensor, temperature: float = 1.0, z: Tensor | None = None, noise: Tensor | None = None
    ) -> Tensor:
        """One image in [0, 1] per label (LongTensor of digits), from p(z|y) at `temperature` (or given z).

        temperature 1 samples the prior, lower values stay nearer its mean, 0 decodes z = the prior mean;
        `noise` fixes the standard-normal draw (see `prior_sample`).
        """
        y = self.one_hot(labels.to(self.device))
        z = self.prior_sample(len(y), y, temperature, noise) if z is None else z.to(self.device)
        return torch.sigmoid(self.decode(z, y))

    @torch.no_grad()
    def reconstruct(self, x: Tensor, labels: Tensor) -> Tensor:
        x, y = x.to(self.device), self.one_hot(labels.to(self.device))
        return torch.sigmoid(self.decode(self.encode(x, y)[0], y))
