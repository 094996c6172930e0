"""The LightningModule: its parts come in as configs, kept as plain data so a checkpoint rebuilds it."""

from __future__ import annotations

from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from cvae_lightning.errors import check, check_bool, check_choice, check_int, check_number
from cvae_lightning.harness.config import build
from cvae_lightning.model.cvae import CVAE
from cvae_lightning.model.data import NUM_CLASSES


def kl_weight(beta: float, warmup_epochs: float, step: int, steps_per_epoch: float) -> float:
    """beta, ramped linearly from 0 over the first `warmup_epochs` of training."""
    if not warmup_epochs or steps_per_epoch == float("inf"):
        return beta
    return beta * min(1.0, step / (warmup_epochs * steps_per_epoch))


def plain(config: Any) -> Any:
    """A config as plain dicts and lists: what a weights-only checkpoint can hold."""
    return OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else config


class CVAEModule(L.LightningModule):
    """Trains a CVAE on the ELBO with the KL weighted by `beta` (ramped up; `*/nelbo` stays
    the true -ELBO), or with `objective="iwae"` on the IWAE bound of `k` draws (`*/niwae_k<k>`)."""

    def __init__(
        self,
        encoder: dict,
        decoder: dict,
        optimizer: dict,
        scheduler: dict | None = None,
        latent_dim: int = 20,
        n_labels: int = NUM_CLASSES,
        prior: dict | None = None,
        beta: float = 1.0,
        kl_warmup_epochs: float = 0,
        objective: str = "elbo",
        k: int = 1,
        compile: bool = False,
    ):
        super().__init__()
        prior = plain(prior) or {"_target_": "cvae_lightning.model.priors.ConditionalPrior"}
        encoder, decoder, optimizer, scheduler = map(plain, (encoder, decoder, optimizer, scheduler))
        check_int("model.latent_dim", latent_dim, 1)
        labels_ok = n_labels in (0, NUM_CLASSES) and not isinstance(n_labels, bool)
        check("model.n_labels", n_labels, labels_ok, "0 or 10")
        check("model.prior", prior, isinstance(prior, dict), "model/prior=standard, conditional or flow")
        check_number("model.beta", beta)
        check_number("model.kl_warmup_epochs", kl_warmup_epochs)
        check_choice("model.objective", objective, ("elbo", "iwae"))
        check_int("model.k", k, 1)
        check_bool("model.compile", compile)
        check_number("model.optimizer.lr", optimizer.get("lr", 1.0), 0, above=True)
        self.save_hyperparameters()
        sizes = {"latent_dim": latent_dim, "n_labels": n_labels}
        nets = [build(c, f"model.{key}", **sizes) for key, c in (("encoder", encoder), ("decoder", decoder))]
        self.model = CVAE(*nets, prior=build(prior, "model.prior", **sizes), **sizes)
        self.loss_name = f"niwae_k{k}" if objective == "iwae" else "nelbo"

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.compile:  # training only: evaluating a checkpoint stays eager
            self.model.use_compiled("elbo")

    def terms(self, x, labels) -> dict:
        return self.model.elbo(x, labels, k=self.hparams.k, iwae=self.hparams.objective == "iwae")

    def scalars(self, terms: dict) -> dict:
        named = {name: terms[name] for name in ("nelbo", "recon", "kl")}
        return named | ({self.loss_name: terms["niwae"]} if "niwae" in terms else {})

    def training_step(self, batch, batch_idx):
        terms = self.terms(*batch)
        if "niwae" in terms:  # the IWAE bound has no separate KL term to weight
            return {"loss": terms["niwae"], **terms}
        hp = self.hparams
        weight = kl_weight(hp.beta, hp.kl_warmup_epochs, self.global_step, self.trainer.num_training_batches)
        return {"loss": terms["recon"] + weight * terms["kl"], "kl_weight": weight, **terms}

    def test_step(self, batch, batch_idx):
        return self.validation_step(batch, batch_idx, "test")

    def validation_step(self, batch, batch_idx, stage: str = "val") -> dict:
        """Logs the epoch means; returns the terms (callbacks.metrics.ActiveUnits reads kl_per_dim)."""
        x, labels = batch
        terms = self.terms(x, labels)
        for name, value in self.scalars(terms).items():  # epoch means, weighted by batch size, over ranks
            shown = name == self.loss_name
            self.log(f"{stage}/{name}", value, prog_bar=shown, batch_size=len(x), sync_dist=True)
        return terms

    def configure_optimizers(self):
        optimizer = build(self.hparams.optimizer, "model.optimizer", params=self.parameters())
        if self.hparams.scheduler is None:
            return optimizer
        scheduler = build(self.hparams.scheduler, "model.scheduler", optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
