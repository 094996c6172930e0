"""The fast paths compute what the plain ones do: fused Adam, logging only on logged steps, bf16 autocast,
compile.

Correctness only: speed is measured by the benchmarks (bench/), never asserted here.
"""

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, TensorDataset

from cvae_lightning.callbacks.loss import LogTrainingScalars
from cvae_lightning.harness import compat
from tests.helpers import mlp_cvae, tiny_module, tiny_trainer


def batch(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=generator)
    return x, torch.randint(0, 10, (n,), generator=generator)


def module(*overrides: str):
    """The configured LightningModule (conf/model/cvae.yaml), small and seeded: the same weights each call."""
    return tiny_module(*overrides, latent_dim=4, hidden=64)


def test_fused_adam_steps_like_the_default_adam():
    fused, plain = module(), module()
    fused_opt = fused.configure_optimizers()  # optimizer.fused: true in conf/model/cvae.yaml
    assert type(fused_opt) is torch.optim.Adam and fused_opt.defaults["fused"]
    settings = {key: fused.hparams.optimizer[key] for key in ("lr", "eps")}
    plain_opt = torch.optim.Adam(plain.parameters(), **settings)
    assert not plain_opt.defaults["fused"]
    x, y = batch()
    for net, opt in ((fused, fused_opt), (plain, plain_opt)):
        for _ in range(3):
            torch.manual_seed(1)
            opt.zero_grad()
            net.model.elbo(x, y)["nelbo"].backward()
            opt.step()
    start = module()
    assert not torch.equal(next(fused.parameters()), next(start.parameters()))  # the steps moved them
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


def fit_and_record(net: L.LightningModule, **trainer_kwargs) -> list:
    """2 epochs of 7 batches, the training scalars logged every 3 steps: what reached the loggers."""
    x, y = batch(7 * 16)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    recorder = Recorder()
    L.seed_everything(0)
    trainer = tiny_trainer(
        max_epochs=2, log_every_n_steps=3, logger=recorder, callbacks=[LogTrainingScalars()], **trainer_kwargs
    )
    trainer.fit(net, loader, loader)
    return recorder.logged


def test_logging_only_on_logged_steps_writes_the_same_metrics(monkeypatch):
    """LogTrainingScalars skips `self.log` between `log_every_n_steps`: the loggers get the same steps and
    values as when it logs every step."""
    skipping = fit_and_record(module())
    asked = []
    monkeypatch.setattr(compat, "logs_this_step", lambda trainer: asked.append(trainer.global_step) or True)
    every_step = fit_and_record(module())
    assert asked == list(range(1, 15))  # asked (and logged) at all 14 steps
    assert [step for step, _ in skipping] == [2, 5, 8, 11] == [step for step, _ in every_step]
    for (_, a), (_, b) in zip(skipping, every_step, strict=True):
        assert a.keys() == b.keys() == {"train/nelbo", "train/recon", "train/kl"}
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5)


@pytest.mark.parametrize("prior", ["standard", "conditional"])
def test_bf16_autocast_keeps_the_loss_in_fp32(prior):
    torch.manual_seed(0)
    net, (x, y) = mlp_cvae(latent_dim=4, hidden_dims=(64, 32), prior=prior), batch()
    if prior == "conditional":  # a prior away from N(0, I), so its bf16 output counts
        torch.nn.init.normal_(net.prior_net.gaussian.weight, std=0.5)
    torch.manual_seed(1)
    fp32 = net.elbo(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        bf16 = net.elbo(x, y)
    assert fp32.keys() == bf16.keys()
    for key in fp32:
        assert bf16[key].dtype == torch.float32, key
        torch.testing.assert_close(bf16[key], fp32[key], rtol=2e-2, atol=0.1)


def test_bf16_mixed_trainer_learns_on_cpu():
    logged = fit_and_record(module(), precision="bf16-mixed")
    elbo = [metrics["train/nelbo"] for _, metrics in logged]
    assert len(elbo) == 4 and all(torch.isfinite(torch.tensor(elbo))) and elbo[-1] < elbo[0]


def compiled():
    """What `compile=true` does: the module runs the CVAE's loss (and its backward) through torch.compile
    once fitting starts."""
    net = module("compile=true")
    net.setup("fit")
    return net


def test_compile_keeps_the_checkpoint_format():
    eager, fast = module(), compiled()
    assert "elbo" in vars(fast.model) and "elbo" not in vars(eager.model)  # compiled, the other eager
    assert fast.state_dict().keys() == eager.state_dict().keys()
    eager.load_state_dict(fast.state_dict())  # strict: a compiled run's checkpoint loads into an eager model
    assert (fast.hparams.compile, eager.hparams.compile) == (True, False)
    tested = module("compile=true")
    tested.setup("test")  # a checkpoint evaluated (evaluate.py) stays eager
    assert "elbo" not in vars(tested.model)


@pytest.mark.slow
def test_compiled_loss_and_gradients_match_eager():
    """Inductor on CPU (tens of seconds to compile); the same random draws as eager via fallback_random."""
    import torch._inductor.config

    eager, fast = module(), compiled()
    x, y = batch()
    results = []
    with torch._inductor.config.patch(fallback_random=True):
        for net in (eager, fast):
            torch.manual_seed(1)
            terms = net.model.elbo(x, y)
            terms["nelbo"].backward()
            results.append((terms, [p.grad for p in net.parameters()]))
    (eager_terms, eager_grads), (compiled_terms, compiled_grads) = results
    assert compiled_terms.keys() == eager_terms.keys()
    for key in eager_terms:
        torch.testing.assert_close(compiled_terms[key], eager_terms[key], rtol=1e-4, atol=1e-3)
    for a, b in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
