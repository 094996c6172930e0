"""Model options: sampling temperature, the learned conditional prior, KL warm-up / beta, the conv net,
the IWAE estimator, and dynamic binarization."""

from types import SimpleNamespace

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from cvae_lightning import CVAE, VAE, MNISTDataModule
from cvae_lightning.models import gaussian_kl_per_dim
from tests.helpers import tiny_trainer


def test_temperature_scales_the_prior_noise_and_zero_decodes_the_prior_mean():
    torch.manual_seed(0)
    model = CVAE(latent_dim=3, hidden_dims=[16], prior="conditional")
    torch.nn.init.normal_(model.prior_net.weight)  # a prior that is not N(0, I)
    labels, noise = torch.tensor([1, 4]), torch.randn(2, 3)
    mu, logvar = model.prior_params(labels)
    expected = torch.sigmoid(model.decode(mu + 0.5 * (0.5 * logvar).exp() * noise, labels))
    assert torch.allclose(model.sample(labels=labels, temperature=0.5, noise=noise), expected)
    at_mean = model.sample(labels=labels, temperature=0.0)
    assert torch.equal(at_mean, model.sample(labels=labels, temperature=0.0))  # no randomness left
    assert torch.allclose(at_mean, torch.sigmoid(model.decode(mu, labels)))
    assert not torch.allclose(model.sample(labels=labels, temperature=1.0), at_mean)


def test_vae_sample_takes_a_temperature():
    model = VAE(latent_dim=2, hidden_dims=[8])
    assert torch.equal(model.sample(3, temperature=0.0), model.sample(3, temperature=0.0))
    assert model.sample(3, temperature=0.7).shape == (3, 1, 28, 28)


def test_conditional_prior_starts_standard_and_its_kl_matches_torch_distributions():
    torch.manual_seed(0)
    standard = CVAE(latent_dim=4, hidden_dims=[16])
    conditional = CVAE(latent_dim=4, hidden_dims=[16], prior="conditional")
    conditional.load_state_dict(standard.state_dict(), strict=False)
    x, y = torch.rand(5, 1, 28, 28), torch.tensor([0, 1, 2, 3, 9])
    torch.manual_seed(1)
    kl_standard = standard.elbo_terms(x, y)["kl"]
    torch.manual_seed(1)
    assert conditional.elbo_terms(x, y)["kl"].item() == pytest.approx(kl_standard.item(), rel=1e-6)

    torch.nn.init.normal_(conditional.prior_net.weight)
    mu, logvar = conditional.encode(x, y)
    prior_mu, prior_logvar = conditional.prior_params(y)
    assert prior_mu.shape == (5, 4) and not torch.allclose(prior_mu[0], prior_mu[1])
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(prior_mu, (0.5 * prior_logvar).exp()))
    assert torch.allclose(gaussian_kl_per_dim(mu, logvar, prior_mu, prior_logvar), expected, rtol=1e-5)


def test_the_conditional_prior_is_learned():
    model = CVAE(latent_dim=2, hidden_dims=[8], prior="conditional")
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    model.elbo_terms(x, y)["nelbo"].backward()
    assert model.prior_net.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("model", "kwargs", "message"),
    [
        (VAE, {"prior": "conditional"}, "model.prior='conditional' is not allowed: expected one of standard"),
        (CVAE, {"prior": "flat"}, "model.prior='flat' is not allowed: expected one of standard, conditional"),
        (CVAE, {"net": "resnet"}, "model.net='resnet' is not allowed: expected one of mlp, conv"),
        (CVAE, {"beta": -1}, "model.beta=-1 is not allowed"),
        (CVAE, {"kl_warmup_epochs": -2}, "model.kl_warmup_epochs=-2 is not allowed"),
        (
            CVAE,
            {"lr_schedule": "step"},
            "model.lr_schedule='step' is not allowed: expected one of constant, cosine, iwae",
        ),
    ],
)
def test_bad_options_name_the_value_and_what_is_allowed(model, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        model(latent_dim=2, hidden_dims=[8], **kwargs)


def test_kl_weight_ramps_from_zero_to_beta_over_the_warmup_epochs():
    model = CVAE(latent_dim=2, hidden_dims=[8], beta=2.0, kl_warmup_epochs=2)
    assert model.kl_weight() == 2.0  # not training: the full weight
    weights = []
    for step in (0, 5, 10, 20, 40):
        model._trainer = SimpleNamespace(global_step=step, num_training_batches=10)
        weights.append(model.kl_weight())
    assert weights == pytest.approx([0.0, 0.5, 1.0, 2.0, 2.0])
    model._trainer = None
    assert CVAE(latent_dim=2, hidden_dims=[8], beta=0.5).kl_weight() == 0.5


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_lr_schedule_over_a_short_fit(schedule, data_dir):
    """cosine: the lr falls from model.lr to ~0 by the last step; constant: it stays at model.lr."""
    model = CVAE(latent_dim=2, hidden_dims=[16], lr=2e-3, lr_schedule=schedule)
    data = MNISTDataModule(data_dir=str(data_dir), batch_size=500, val_size=1000)
    trainer = tiny_trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=1)
    trainer.fit(model, datamodule=data)
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == (2e-3 if schedule == "constant" else pytest.approx(0.0, abs=1e-12))
    assert len(trainer.lr_scheduler_configs) == (schedule == "cosine")


def test_conv_net_encodes_and_decodes_images():
    torch.manual_seed(0)
    model = CVAE(latent_dim=5, hidden_dims=[32], net="conv", channels=[8, 16])
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([1, 2, 3])
    mu, logvar = model.encode(x, y)
    assert mu.shape == logvar.shape == (3, 5)
    assert model.decode(mu, y).shape == (3, 1, 28, 28)
    assert any(isinstance(m, torch.nn.Conv2d) for m in model.encoder.modules())
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.decoder.modules())
    model.elbo_terms(x, y)["nelbo"].backward()
    assert all(p.grad is not None for p in model.parameters())
    vae = VAE(latent_dim=5, hidden_dims=[32], net="conv", channels=[8, 16])
    assert vae.sample(2).shape == (2, 1, 28, 28)


def test_iwae_is_exact_when_the_posterior_is_the_prior_and_the_decoder_ignores_z():
    """Then every importance weight equals p(x|y): any k (and any chunking) gives -log p(x|y) = recon."""
    torch.manual_seed(0)
    model = CVAE(latent_dim=3, hidden_dims=[16])
    torch.nn.init.zeros_(model.encoder[-1].weight)
    torch.nn.init.zeros_(model.encoder[-1].bias)
    with torch.no_grad():
        model.decoder[0].weight[:, :3] = 0  # the z inputs
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 5, 6, 7])
    terms = model.elbo_terms(x, y)
    assert terms["kl"].item() == pytest.approx(0.0, abs=1e-6)
    nll = -model.log_likelihood(x, y, k=250, chunk=100)
    assert nll.shape == (4,)
    assert nll.mean().item() == pytest.approx(terms["recon"].item(), rel=1e-5)


def test_iwae_bound_is_tighter_than_the_elbo():
    torch.manual_seed(0)
    model = CVAE(latent_dim=4, hidden_dims=[32])
    x, y = torch.rand(16, 1, 28, 28), torch.arange(16) % 10
    elbo = torch.stack([model.elbo_terms(x, y)["nelbo"] for _ in range(20)]).mean()
    nll_1 = -model.log_likelihood(x, y, k=1).mean()
    nll_200 = -model.log_likelihood(x, y, k=200, chunk=64).mean()
    assert nll_200 < elbo - 0.01 and nll_200 < nll_1
    assert nll_1.item() == pytest.approx(elbo.item(), abs=1.0)  # k=1 is the ELBO (one sample)


def test_dynamic_binarization_and_bad_values(data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), batch_size=32, binarize="dynamic")
    dm.setup()
    x, _ = next(iter(dm.train_dataloader()))
    assert set(x.unique().tolist()) == {0.0, 1.0}
    continuous = MNISTDataModule(data_dir=str(data_dir), batch_size=32)
    continuous.setup()
    assert len(next(iter(continuous.train_dataloader()))[0].unique()) > 2
    with pytest.raises(
        ValueError, match="data.binarize='static' is not allowed: expected one of none, dynamic"
    ):
        MNISTDataModule(binarize="static")


def _by_hand_log_weights(model, x, y, eps):
    """log p(x|z) + log p(z|y) - log q(z|x,y) at z = mu + sigma * eps, with torch.distributions."""
    from torch.distributions import Bernoulli

    mu, logvar = model.encode(x, y)
    prior_mu, prior_logvar = model.prior_params(y)
    z = mu + (0.5 * logvar).exp() * eps  # (k, B, latent)
    k = len(eps)
    logits = model.decode(z.flatten(0, 1), y.repeat(k)).view(k, len(x), -1)
    log_px = Bernoulli(logits=logits).log_prob(x.flatten(1).expand_as(logits)).sum(-1)
    log_pz = Normal(prior_mu, (0.5 * prior_logvar).exp()).log_prob(z).sum(-1)
    log_qz = Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    return log_px + log_pz - log_qz


@pytest.mark.parametrize("k", [1, 5])
def test_iwae_objective_matches_a_hand_computation_with_the_same_noise(k):
    torch.manual_seed(0)
    model = CVAE(latent_dim=3, hidden_dims=[16], prior="conditional", objective="iwae", k=k)
    torch.nn.init.normal_(model.prior_net.weight, std=0.3)
    x, y = torch.bernoulli(torch.rand(6, 1, 28, 28)), torch.tensor([0, 1, 2, 3, 4, 9])
    torch.manual_seed(1)
    terms = model.elbo_terms(x, y)
    torch.manual_seed(1)
    eps = torch.randn(k, 6, 3)  # the draws elbo_terms made
    log_w = _by_hand_log_weights(model, x, y, eps)
    expected = -(torch.logsumexp(log_w, 0) - torch.log(torch.tensor(float(k)))).mean()
    assert terms["niwae"].item() == pytest.approx(expected.item(), rel=1e-5)
    if k == 1:  # one sample: the IWAE bound is that sample's ELBO estimate (KL sampled, not closed-form)
        assert terms["niwae"].item() == pytest.approx(-log_w.mean().item(), rel=1e-6)
    # the closed-form KL estimate and the sampled one agree in expectation: same -ELBO within noise
    assert abs(terms["nelbo"].item() - (-log_w.mean().item())) < 5.0


def test_iwae_bound_tightens_with_k_in_expectation():
    torch.manual_seed(0)
    model = VAE(latent_dim=4, hidden_dims=[32], objective="iwae")
    x = torch.bernoulli(torch.rand(32, 1, 28, 28))
    mean_bound = {
        k: torch.stack([model.elbo_terms(x, k=k)["niwae"] for _ in range(30)]).mean().item()
        for k in (1, 5, 50)
    }
    nelbo = torch.stack([model.elbo_terms(x, k=1)["nelbo"] for _ in range(30)]).mean().item()
    assert mean_bound[50] < mean_bound[5] < mean_bound[1]
    assert mean_bound[1] == pytest.approx(nelbo, abs=0.5)  # k=1: the ELBO


def test_elbo_objective_with_k_samples_averages_the_reconstruction_term():
    torch.manual_seed(0)
    model = VAE(latent_dim=3, hidden_dims=[16], k=4)
    x = torch.bernoulli(torch.rand(5, 1, 28, 28))
    torch.manual_seed(2)
    terms = model.elbo_terms(x)
    torch.manual_seed(2)
    eps = torch.randn(4, 5, 3)
    mu, logvar = model.encode(x)
    logits = model.decode((mu + (0.5 * logvar).exp() * eps).flatten(0, 1)).flatten(1)
    recon = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, x.flatten(1).repeat(4, 1), reduction="sum"
    )
    assert terms["recon"].item() == pytest.approx(recon.item() / 20, rel=1e-5)
    assert "niwae" not in terms


def test_iwae_objective_trains_and_logs_its_bound(data_dir):
    model = CVAE(latent_dim=2, hidden_dims=[16], objective="iwae", k=3)
    data = MNISTDataModule(data_dir=str(data_dir), batch_size=200, val_size=1000, binarize="dynamic")
    trainer = tiny_trainer(max_epochs=1, limit_train_batches=5, limit_val_batches=1, log_every_n_steps=1)
    trainer.fit(model, datamodule=data)
    logged = trainer.callback_metrics
    assert {"train/niwae_k3", "val/niwae_k3", "val/nelbo"} <= set(logged)
    assert logged["val/niwae_k3"] <= logged["val/nelbo"] + 1.0  # the bound is at least as tight, up to noise


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_log_likelihood_is_the_same_however_it_is_chunked_and_compiled(chunk):
    torch.manual_seed(0)
    model = VAE(latent_dim=3, hidden_dims=[16])
    x = torch.bernoulli(torch.rand(4, 1, 28, 28))
    torch.manual_seed(5)
    whole = model.log_likelihood(x, k=64, chunk=64)
    torch.manual_seed(5)
    assert torch.allclose(model.log_likelihood(x, k=64, chunk=chunk), whole, atol=1e-4)
    if chunk == 7:
        torch.manual_seed(5)
        assert torch.allclose(model.log_likelihood(x, k=64, chunk=chunk, compile=True), whole, atol=1e-3)


def test_the_iwae_learning_rate_schedule_has_the_papers_stages():
    from cvae_lightning.models import iwae_lr_factor

    stage_of = lambda epoch: round(-7 * torch.log10(torch.tensor(iwae_lr_factor(epoch))).item())  # noqa: E731
    # stage i lasts 3^i epochs: 1, 3, 9, ..., 2187 (3,280 in all), then stays at the last
    assert [stage_of(e) for e in (0, 1, 3, 4, 12, 13, 39, 40, 1092, 1093, 3279, 3280)] == [
        0,
        1,
        1,
        2,
        2,
        3,
        3,
        4,
        6,
        7,
        7,
        7,
    ]
