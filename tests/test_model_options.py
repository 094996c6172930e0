"""Model options: sampling temperature, the learned conditional prior, bad options, KL warm-up / beta, the
optimizer and learning-rate schedules, the conv net, the IWAE estimator, and dynamic binarization."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from cvae_lightning import MNISTDataModule
from cvae_lightning.callbacks.loss import LogTrainingScalars
from cvae_lightning.errors import ConfigError
from cvae_lightning.harness.config import build
from cvae_lightning.model.cvae import gaussian_kl, gaussian_log_prob
from cvae_lightning.model.module import kl_weight
from tests.helpers import composed, mlp_cvae, tiny_module, tiny_trainer


def test_temperature_scales_the_prior_noise_and_zero_decodes_the_prior_mean():
    torch.manual_seed(0)
    model = mlp_cvae(latent_dim=3, hidden_dims=(16,), prior="conditional")
    torch.nn.init.normal_(model.prior_net.gaussian.weight)  # a prior that is not N(0, I)
    labels, noise = torch.tensor([1, 4]), torch.randn(2, 3)
    mu, logvar = model.prior(labels)
    expected = torch.sigmoid(model.decode(mu + 0.5 * (0.5 * logvar).exp() * noise, labels))
    assert torch.allclose(model.sample(labels=labels, temperature=0.5, noise=noise), expected)
    at_mean = model.sample(labels=labels, temperature=0.0)
    assert torch.equal(at_mean, model.sample(labels=labels, temperature=0.0))  # no randomness left
    assert torch.allclose(at_mean, torch.sigmoid(model.decode(mu, labels)))
    assert not torch.allclose(model.sample(labels=labels, temperature=1.0), at_mean)


def test_vae_sample_takes_a_temperature():
    model = mlp_cvae(latent_dim=2, hidden_dims=(8,), n_labels=0)
    assert torch.equal(model.sample(3, temperature=0.0), model.sample(3, temperature=0.0))
    assert model.sample(3, temperature=0.7).shape == (3, 1, 28, 28)


def test_conditional_prior_starts_standard_and_its_kl_matches_torch_distributions():
    torch.manual_seed(0)
    standard = mlp_cvae(latent_dim=4, hidden_dims=(16,))
    conditional = mlp_cvae(latent_dim=4, hidden_dims=(16,), prior="conditional")
    conditional.load_state_dict(standard.state_dict(), strict=False)
    x, y = torch.rand(5, 1, 28, 28), torch.tensor([0, 1, 2, 3, 9])
    torch.manual_seed(1)
    kl_standard = standard.elbo(x, y)["kl"]
    torch.manual_seed(1)
    assert conditional.elbo(x, y)["kl"].item() == pytest.approx(kl_standard.item(), rel=1e-6)

    torch.nn.init.normal_(conditional.prior_net.gaussian.weight)
    mu, logvar = conditional.encode(x, y)
    prior_mu, prior_logvar = conditional.prior(y)
    assert prior_mu.shape == (5, 4) and not torch.allclose(prior_mu[0], prior_mu[1])
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(prior_mu, (0.5 * prior_logvar).exp()))
    assert torch.allclose(gaussian_kl(mu, logvar, prior_mu, prior_logvar), expected, rtol=1e-5)


def test_the_flow_prior_is_a_density_and_to_noise_inverts_from_noise():
    torch.manual_seed(0)
    # float64: the couplings perturbed below reach z of ~40, where float32 rounding would blur the maths
    model = tiny_module("model/prior=flow", "model.prior.layers=3", latent_dim=4).model.double()
    y = model.condition(torch.tensor([1, 2, 3])).double()
    eps = torch.randn(3, 4, dtype=torch.float64)
    with torch.no_grad():  # zero-initialised couplings: it starts as the conditional Gaussian prior
        mu, logvar = model.prior(y)
        assert torch.allclose(model.from_noise(eps, y, 0.7), mu + 0.7 * (0.5 * logvar).exp() * eps)
        for p in model.prior_net.flow.parameters():
            p.add_(0.5 * torch.randn_like(p))
        z = model.from_noise(eps, y)
        assert torch.allclose(model.to_noise(z, y), eps, atol=1e-5)
    for i in range(3):  # log p(z|y) by the change of variables, with the Jacobian from autograd
        jacobian = torch.autograd.functional.jacobian(
            lambda e, i=i: model.from_noise(e[None], y[i : i + 1])[0], eps[i]
        )
        expected = gaussian_log_prob(eps[i]) - torch.logdet(jacobian)
        assert model.prior_log_prob(z[i : i + 1], y[i : i + 1]).item() == pytest.approx(
            expected.item(), abs=1e-4
        )
    # its KL is log q - log p at the sampled z: against a Monte Carlo of many draws it agrees
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        q_mu, q_logvar = model.encode(x, y)
        draws = q_mu + (0.5 * q_logvar).exp() * torch.randn(20000, 3, 4)
        expected = (gaussian_log_prob(draws, q_mu, q_logvar) - model.prior_log_prob(draws, y)).mean()
        kl = torch.stack([model.elbo(x, y, k=200)["kl"] for _ in range(20)]).mean()
    assert kl.item() == pytest.approx(expected.item(), rel=0.02)
    model.elbo(x, y)["nelbo"].backward()
    assert all(p.grad is not None for p in model.prior_net.flow.parameters())


def test_the_conditional_prior_is_learned():
    model = mlp_cvae(latent_dim=2, hidden_dims=(8,), prior="conditional")
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    model.elbo(x, y)["nelbo"].backward()
    assert model.prior_net.gaussian.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model=vae", "model/prior=conditional"],
            "model.prior='ConditionalPrior' is not allowed: "
            "expected model/prior=standard (the VAE has no label)",
        ),
        (
            ["model.prior=flat"],
            "model.prior='flat' is not allowed: expected model/prior=standard, conditional or flow",
        ),
        (
            ["model.prior._target_=mypkg.NoSuchPrior"],
            "model.prior: Error locating target 'mypkg.NoSuchPrior'",
        ),
        (["model.beta=-1"], "model.beta=-1 is not allowed: expected a number >= 0"),
        (["model.kl_warmup_epochs=-2"], "model.kl_warmup_epochs=-2 is not allowed: expected a number >= 0"),
        (
            ["model.objective=wake_sleep"],
            "model.objective='wake_sleep' is not allowed: expected one of elbo, iwae",
        ),
        (
            ["model.encoder.activation=sigmoid"],
            "model.encoder.activation='sigmoid' is not allowed: expected one of relu, tanh",
        ),
        (
            ["model.encoder._target_=mypkg.NoSuchEncoder"],
            "model.encoder: Error locating target 'mypkg.NoSuchEncoder'",
        ),
        (
            ["model.decoder.label_every_layer=yes"],
            "model.decoder.label_every_layer='yes' is not allowed: expected true or false",
        ),
        (["model.prior.layers=0"], "model.prior.layers=0 is not allowed: expected an integer >= 1"),
    ],
    ids=[
        "vae-prior",
        "prior",
        "prior-target",
        "beta",
        "warmup",
        "objective",
        "activation",
        "encoder-target",
        "label-every",
        "flow-layers",
    ],
)
def test_bad_options_name_the_value_and_what_is_allowed(overrides, message):
    with pytest.raises(ConfigError) as error:
        build(composed(*overrides).model, "model")
    assert str(error.value) == message


def test_kl_weight_ramps_from_zero_to_beta_over_the_warmup_epochs():
    weights = [kl_weight(2.0, 2, step, steps_per_epoch=10) for step in (0, 5, 10, 20, 40)]
    assert weights == pytest.approx([0.0, 0.5, 1.0, 2.0, 2.0])
    assert kl_weight(0.5, 0, 0, steps_per_epoch=10) == 0.5  # no warm-up: beta from the first step
    assert kl_weight(2.0, 2, 0, steps_per_epoch=float("inf")) == 2.0  # epochs of unknown length: no ramp


def test_the_optimizer_is_swapped_with_one_override():
    optimizer = tiny_module("model.optimizer._target_=torch.optim.AdamW").configure_optimizers()
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["lr"] == 2.5e-3  # conf/model/cvae.yaml's, kept


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_lr_schedule_over_a_short_fit(schedule, data_dir):
    """cosine: the lr falls from model.optimizer.lr to ~0 by the end of trainer.max_epochs (stepped once an
    epoch: stepped per batch it would be back at the start); constant: no scheduler, the lr stays."""
    overrides = ["model/scheduler=cosine"] if schedule == "cosine" else []
    module = tiny_module(*overrides, "model.optimizer.lr=3e-3", "trainer.max_epochs=2", hidden=16)
    data = MNISTDataModule(data_dir=str(data_dir), batch_size=500, val_size=1000)
    trainer = tiny_trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=1)
    trainer.fit(module, datamodule=data)
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    if schedule == "constant":
        assert lr == 3e-3 and trainer.lr_scheduler_configs == []
    else:
        (config,) = trainer.lr_scheduler_configs
        assert type(config.scheduler) is torch.optim.lr_scheduler.CosineAnnealingLR
        assert config.scheduler.T_max == 2 and config.interval == "epoch"
        assert lr == pytest.approx(0.0, abs=1e-12)


def test_the_iwae_learning_rate_schedule_has_the_papers_stages():
    """Stage i = 0..7 lasts 3^i epochs (1, 3, 9, ..., 2187: 3,280 in all) at lr * 10^(-i/7), then stays."""
    module = tiny_module("model/scheduler=iwae")
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert configured["lr_scheduler"]["interval"] == "epoch"
    base = module.hparams.optimizer["lr"]
    optimizer.step()  # no gradients: changes nothing, but the scheduler may step after it
    stage_end = [(3 ** (i + 1) - 1) // 2 for i in range(8)]  # 1, 4, 13, ..., 3280
    for epoch in range(3281):
        stage = min(sum(epoch >= end for end in stage_end), 7)
        lr = optimizer.param_groups[0]["lr"]
        assert lr == pytest.approx(base * 10 ** (-stage / 7), rel=1e-12, abs=0), epoch
        scheduler.step()


@pytest.mark.parametrize("net", ["encoder", "decoder"])
def test_label_every_layer_joins_the_label_to_each_linear_layer(net):
    model = tiny_module(f"++model.{net}.label_every_layer=true", latent_dim=5, hidden=32).model
    plain = tiny_module(f"++model.{net}.label_every_layer=false", latent_dim=5, hidden=32).model
    layers = [m for m in getattr(model, net) if isinstance(m, torch.nn.Linear)]
    plain_layers = [m for m in getattr(plain, net) if isinstance(m, torch.nn.Linear)]
    assert [m.in_features - p.in_features for m, p in zip(layers, plain_layers, strict=True)] == [0] + [
        10
    ] * (len(layers) - 1)
    # the label reaches the last layer directly: changing it there alone changes the output
    x, z = torch.rand(2, 1, 28, 28), torch.randn(2, 5)
    inputs = (x,) if net == "encoder" else (z,)
    with torch.no_grad():
        base = getattr(model, net)(*inputs, torch.eye(10)[[1, 2]])
        layers[-1].weight[:, -10:] += 1.0
        moved = getattr(model, net)(*inputs, torch.eye(10)[[1, 2]])
    assert not torch.allclose(base, moved)
    model.elbo(x, torch.tensor([1, 2]))["nelbo"].backward()
    assert all(p.grad is not None for p in model.parameters())
    vae = tiny_module("model=vae", f"++model.{net}.label_every_layer=true", latent_dim=5, hidden=32).model
    assert [m.in_features for m in getattr(vae, net) if isinstance(m, torch.nn.Linear)] == [
        m.in_features - (10 if i == 0 else 0) for i, m in enumerate(plain_layers)
    ]


def test_conv_net_encodes_and_decodes_images():
    conv = ("model/net=conv", "model.encoder.channels=[8,16]", "model.decoder.channels=[16,8]")
    model = tiny_module(*conv, latent_dim=5, hidden=32).model
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([1, 2, 3])
    mu, logvar = model.encode(x, y)
    assert mu.shape == logvar.shape == (3, 5)
    assert model.decode(mu, y).shape == (3, 1, 28, 28)
    assert any(isinstance(m, torch.nn.Conv2d) for m in model.encoder.modules())
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.decoder.modules())
    model.elbo(x, y)["nelbo"].backward()
    assert all(p.grad is not None for p in model.parameters())
    vae = tiny_module(*conv, "model=vae", latent_dim=5, hidden=32).model
    assert vae.n_labels == 0 and vae.sample(2).shape == (2, 1, 28, 28)


def test_iwae_is_exact_when_the_posterior_is_the_prior_and_the_decoder_ignores_z():
    """Then every importance weight equals p(x|y): any k (and any chunking) gives -log p(x|y) = recon."""
    torch.manual_seed(0)
    model = mlp_cvae(latent_dim=3, hidden_dims=(16,))
    torch.nn.init.zeros_(model.encoder[-1].weight)
    torch.nn.init.zeros_(model.encoder[-1].bias)
    with torch.no_grad():
        model.decoder[0].weight[:, :3] = 0  # the z inputs
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 5, 6, 7])
    terms = model.elbo(x, y)
    assert terms["kl"].item() == pytest.approx(0.0, abs=1e-6)
    nll = -model.log_likelihood(x, y, k=250, chunk=100)
    assert nll.shape == (4,)
    assert nll.mean().item() == pytest.approx(terms["recon"].item(), rel=1e-5)


def test_iwae_bound_is_tighter_than_the_elbo():
    torch.manual_seed(0)
    model = mlp_cvae(latent_dim=4, hidden_dims=(32,))
    x, y = torch.rand(16, 1, 28, 28), torch.arange(16) % 10
    elbo = torch.stack([model.elbo(x, y)["nelbo"] for _ in range(20)]).mean()
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
    prior_mu, prior_logvar = model.prior(y)
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
    model = mlp_cvae(latent_dim=3, hidden_dims=(16,), prior="conditional")
    torch.nn.init.normal_(model.prior_net.gaussian.weight, std=0.3)
    x, y = torch.bernoulli(torch.rand(6, 1, 28, 28)), torch.tensor([0, 1, 2, 3, 4, 9])
    torch.manual_seed(1)
    terms = model.elbo(x, y, k=k, iwae=True)
    torch.manual_seed(1)
    eps = torch.randn(k, 6, 3)  # the draws elbo made
    log_w = _by_hand_log_weights(model, x, y, eps)
    expected = -(torch.logsumexp(log_w, 0) - torch.log(torch.tensor(float(k)))).mean()
    assert terms["niwae"].item() == pytest.approx(expected.item(), rel=1e-5)
    if k == 1:  # one sample: the IWAE bound is that sample's ELBO estimate (KL sampled, not closed-form)
        assert terms["niwae"].item() == pytest.approx(-log_w.mean().item(), rel=1e-6)
    # the closed-form KL estimate and the sampled one agree in expectation: same -ELBO within noise
    assert abs(terms["nelbo"].item() - (-log_w.mean().item())) < 5.0


def test_iwae_bound_tightens_with_k_in_expectation():
    torch.manual_seed(0)
    model = mlp_cvae(latent_dim=4, hidden_dims=(32,), n_labels=0)
    x = torch.bernoulli(torch.rand(32, 1, 28, 28))
    mean_bound = {
        k: torch.stack([model.elbo(x, k=k, iwae=True)["niwae"] for _ in range(30)]).mean().item()
        for k in (1, 5, 50)
    }
    nelbo = torch.stack([model.elbo(x, k=1)["nelbo"] for _ in range(30)]).mean().item()
    assert mean_bound[50] < mean_bound[5] < mean_bound[1]
    assert mean_bound[1] == pytest.approx(nelbo, abs=0.5)  # k=1: the ELBO


def test_elbo_objective_with_k_samples_averages_the_reconstruction_term():
    torch.manual_seed(0)
    model = mlp_cvae(latent_dim=3, hidden_dims=(16,), n_labels=0)
    x = torch.bernoulli(torch.rand(5, 1, 28, 28))
    torch.manual_seed(2)
    terms = model.elbo(x, k=4)
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
    module = tiny_module("model.objective=iwae", "model.k=3", hidden=16)
    assert module.loss_name == "niwae_k3"
    data = MNISTDataModule(data_dir=str(data_dir), batch_size=200, val_size=1000, binarize="dynamic")
    trainer = tiny_trainer(
        max_epochs=1,
        limit_train_batches=5,
        limit_val_batches=1,
        log_every_n_steps=1,
        callbacks=[LogTrainingScalars()],
    )
    before = [p.detach().clone() for p in module.parameters()]
    trainer.fit(module, datamodule=data)
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))
    logged = trainer.callback_metrics
    assert {"train/niwae_k3", "train/nelbo", "val/niwae_k3", "val/nelbo"} <= set(logged)
    assert "train/kl_weight" not in logged  # the IWAE bound weights no KL term
    assert logged["val/niwae_k3"] <= logged["val/nelbo"] + 1.0  # the bound is at least as tight, up to noise


@pytest.mark.parametrize("chunk", [1, 7])
def test_log_likelihood_is_the_same_however_it_is_chunked(chunk):
    torch.manual_seed(0)
    model = mlp_cvae(latent_dim=3, hidden_dims=(16,), n_labels=0)
    x = torch.bernoulli(torch.rand(4, 1, 28, 28))
    torch.manual_seed(5)
    whole = model.log_likelihood(x, k=64, chunk=64)
    torch.manual_seed(5)
    assert torch.allclose(model.log_likelihood(x, k=64, chunk=chunk), whole, atol=1e-4)
