"""The fast paths compute what the plain ones do: fused Adam, logging every N steps, bf16 autocast, compile.

Correctness only: speed is measured by `bench/throughput.py`, never asserted here.
"""

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, TensorDataset

from cvae_lightning import CVAE
from tests.helpers import tiny_trainer


def batch(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=generator)
    return x, torch.randint(0, 10, (n,), generator=generator)


def model(**hparams) -> CVAE:
    torch.manual_seed(0)
    return CVAE(hidden_dims=[64, 32], latent_dim=4, **hparams)


def test_fused_adam_steps_like_the_default_adam():
    fused, plain = model(), model()
    fused_opt = fused.configure_optimizers()
    plain_opt = torch.optim.Adam(plain.parameters(), lr=plain.hparams.lr)
    assert fused_opt.defaults["fused"]
    x, y = batch()
    for net, opt in ((fused, fused_opt), (plain, plain_opt)):
        for _ in range(3):
            torch.manual_seed(1)
            opt.zero_grad()
            net.elbo_terms(x, y)["nelbo"].backward()
            opt.step()
    for a, b in zip(fused.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


class Recorder(Logger):
    """Keeps what the trainer sends to its loggers: (step, train/* metrics)."""

    name, version = "recorder", 0

    def __init__(self):
        super().__init__()
        self.logged = []

    def log_hyperparams(self, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        train = {k: v for k, v in metrics.items() if k.startswith("train/")}
        if train:
            self.logged.append((step, train))


def fit_and_record(net: CVAE, **trainer_kwargs) -> list:
    x, y = batch(7 * 16)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    recorder = Recorder()
    L.seed_everything(0)
    trainer = tiny_trainer(max_epochs=2, log_every_n_steps=3, logger=recorder, **trainer_kwargs)
    trainer.fit(net, loader, loader)
    return recorder.logged


def test_logging_only_on_logged_steps_writes_the_same_metrics(monkeypatch):
    """`self.log` is skipped between `log_every_n_steps`: the loggers get the same steps and values."""
    skipping = fit_and_record(model())
    always = model()
    monkeypatch.setattr(always, "_logs_this_step", lambda: True)
    every_step = fit_and_record(always)
    assert [step for step, _ in skipping] == [2, 5, 8, 11] == [step for step, _ in every_step]
    for (_, a), (_, b) in zip(skipping, every_step, strict=True):
        assert a.keys() == b.keys() == {"train/nelbo", "train/recon", "train/kl"}
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5)


@pytest.mark.parametrize("prior", ["standard", "conditional"])
def test_bf16_autocast_keeps_the_loss_in_fp32(prior):
    net, (x, y) = model(prior=prior), batch()
    if prior == "conditional":  # a prior away from N(0, I), so its bf16 output counts
        torch.nn.init.normal_(net.prior_net.weight, std=0.5)
    torch.manual_seed(1)
    fp32 = net.elbo_terms(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        bf16 = net.elbo_terms(x, y)
    for key in fp32:
        assert bf16[key].dtype == torch.float32, key
        torch.testing.assert_close(bf16[key], fp32[key], rtol=2e-2, atol=0.1)


def test_bf16_mixed_trainer_learns_on_cpu():
    logged = fit_and_record(model(), precision="bf16-mixed")
    elbo = [metrics["train/nelbo"] for _, metrics in logged]
    assert all(torch.isfinite(torch.tensor(elbo))) and elbo[-1] < elbo[0]


def test_compile_wraps_the_loss_once_and_keeps_the_checkpoint_format():
    eager, compiled = model(), model(compile=True)
    eager.configure_model()
    assert "elbo_terms" not in vars(eager)  # compile=False: the plain method
    compiled.configure_model()
    wrapped = compiled.elbo_terms
    compiled.configure_model()  # fit, then test, each call it
    assert compiled.elbo_terms is wrapped
    assert compiled.state_dict().keys() == eager.state_dict().keys()


@pytest.mark.slow
def test_compiled_loss_and_gradients_match_eager():
    """Inductor on CPU (tens of seconds to compile); the same random draws as eager via fallback_random."""
    import torch._inductor.config

    eager, compiled = model(), model(compile=True)
    compiled.configure_model()
    x, y = batch()
    results = []
    with torch._inductor.config.patch(fallback_random=True):
        for net in (eager, compiled):
            torch.manual_seed(1)
            terms = net.elbo_terms(x, y)
            terms["nelbo"].backward()
            results.append((terms, [p.grad for p in net.parameters()]))
    (eager_terms, eager_grads), (compiled_terms, compiled_grads) = results
    for key in eager_terms:
        torch.testing.assert_close(compiled_terms[key], eager_terms[key], rtol=1e-4, atol=1e-3)
    for a, b in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
