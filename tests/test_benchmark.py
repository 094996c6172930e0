"""The binarized-MNIST benchmark: each bmnist_* experiment composes the published setup and trains."""

import json

import pytest

from cvae_lightning.config import validate
from cvae_lightning.training import train
from tests.helpers import ROOT, composed

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("bmnist_*.yaml"))


def test_every_row_of_the_table_has_an_experiment():
    assert EXPERIMENTS == [
        "bmnist_cvae_iwae_k1",
        "bmnist_cvae_iwae_k5",
        "bmnist_cvae_iwae_k50",
        "bmnist_iwae_k5",
        "bmnist_iwae_k50",
        "bmnist_vae_k1",
        "bmnist_vae_k5",
        "bmnist_vae_k50",
    ]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_benchmark_config_is_the_published_setup_and_trains_a_few_steps(name, tmp_path, data_dir):
    cfg = composed(
        f"experiment={name}",
        f"paths.output_dir={tmp_path}",
        f"paths.data_dir={data_dir}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_test_batches=1",
        "callbacks.test_nll.k=4",
        "callbacks.test_nll.n_images=30",
    )
    model, data = cfg.model, cfg.data
    # Burda et al. 2015: 784-200-200-2x50 tanh, Adam eps 1e-4, batch 20, the 3^i schedule, all 60k, dynamic
    for net in (model.encoder, model.decoder):
        assert (list(net.hidden_dims), net.activation) == ([200, 200], "tanh")
    assert model.latent_dim == 50 and model.scheduler._target_.endswith("MultiStepLR")
    assert (model.optimizer.lr, model.optimizer.eps, cfg.trainer.max_epochs) == (1e-3, 1e-4, 1)
    assert (data.batch_size, data.val_size, data.binarize) == (20, 0, "dynamic")
    k = int(name.rsplit("_k", 1)[1])
    assert model.k == k and model.objective == ("elbo" if "_vae_" in name else "iwae")
    assert model.n_labels == (10 if "cvae" in name else 0)

    validate(cfg)
    train(cfg)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["steps"] == 3
    bound = f"test/niwae_k{k}" if model.objective == "iwae" else "test/nelbo"
    assert 100 < results["metrics"][bound] < 800
    curve = json.loads((tmp_path / "test_nll.json").read_text())
    assert [point["epoch"] for point in curve] == [1] and 100 < curve[0]["nll"] < 800
