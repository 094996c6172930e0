"""The binarized-MNIST benchmark: each bmnist_* experiment composes the published setup and trains."""

import json

import pytest
from omegaconf import OmegaConf, open_dict

from cvae_lightning.harness.config import validate
from cvae_lightning.harness.training import train
from tests.helpers import ROOT, composed

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("bmnist_*.yaml"))
CPU_ROWS = [name for name in EXPERIMENTS if name.endswith("_cpu")]
EXPERIMENTS = [name for name in EXPERIMENTS if name not in CPU_ROWS]


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


def a_few_steps(name: str, output_dir):
    return composed(
        f"experiment={name}",
        f"paths.output_dir={output_dir}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_test_batches=1",
        "callbacks.test_nll.k=4",
        "callbacks.test_nll.n_images=30",
    )


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_benchmark_config_is_the_published_setup(name, tmp_path):
    cfg = a_few_steps(name, tmp_path)
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


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_benchmark_config_trains_a_few_steps(name, tmp_path, data_dir):
    cfg = a_few_steps(name, tmp_path)
    k, objective = cfg.model.k, cfg.model.objective
    train(cfg)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["steps"] == 3
    bound = f"test/niwae_k{k}" if objective == "iwae" else "test/nelbo"
    assert 100 < results["metrics"][bound] < 800
    curve = json.loads((tmp_path / "test_nll.json").read_text())
    assert [point["epoch"] for point in curve] == [1] and 100 < curve[0]["nll"] < 800


@pytest.mark.parametrize("name", ["bmnist_vae_k1_cpu", "bmnist_cvae_iwae_k1_cpu"])
def test_a_cpu_row_is_its_published_row_with_the_cpu_recipe_only(name):
    """Networks, data, objective and schedule stay the paper's; batch, compile, a 2-hour cap, the weights'
    average: the recipe."""
    assert CPU_ROWS == ["bmnist_cvae_iwae_k1_cpu", "bmnist_vae_k1_cpu"]
    cpu, paper = composed(f"experiment={name}"), composed(f"experiment={name[:-4]}")
    recipe = {
        "compile": True,
        "data.batch_size": 100,
        "trainer.max_time": "00:02:00:00",
        "callbacks.test_nll.every_n_epochs": 100,
    }
    for key, value in recipe.items():
        assert OmegaConf.select(cpu, key) == value
        OmegaConf.update(cpu, key, OmegaConf.select(paper, key))
    # and the weights tested are their moving average (conf/callbacks/ema.yaml) over about 20k steps
    assert cpu.callbacks.ema == composed("callbacks=[ema]", "callbacks.ema.decay=0.9995").callbacks.ema
    with open_dict(cpu):
        del cpu.callbacks.ema
    assert cpu == paper


@pytest.mark.slow  # a compile, then 2 s of steps
def test_a_cpu_row_stops_at_its_time_limit_and_still_tests(tmp_path, data_dir):
    """trainer.max_time ends the fit mid-schedule on a slow machine; the test pass and results follow."""
    cfg = composed(
        "experiment=bmnist_vae_k1_cpu",
        f"paths.output_dir={tmp_path}",
        f"paths.data_dir={data_dir}",
        "trainer.max_time=00:00:00:02",
        "trainer.limit_test_batches=1",
        "callbacks.test_nll.k=4",
        "callbacks.test_nll.n_images=30",
    )
    train(cfg)
    results = json.loads((tmp_path / "results.json").read_text())
    assert 0 < results["steps"] < 3280 * 600 and "test/nelbo" in results["metrics"]
    # the curve gets its point where training stopped, not only every 100 epochs
    curve = json.loads((tmp_path / "test_nll.json").read_text())
    assert [point["step"] for point in curve] == [results["steps"]]
