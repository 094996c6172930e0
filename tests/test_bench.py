"""The benchmark's arithmetic and set-up: timings are never asserted, but what it compares must be right."""

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from bench.throughput import (
    ROOT,
    TORCH_DEFAULTS,
    epoch_seconds,
    make_model,
    paired,
    project_settings,
    with_settings,
)
from cvae_lightning import CVAE
from tests.helpers import denormals_flushed_per_thread, tiny_trainer


def test_paired_ratios_compare_each_project_epoch_with_the_side_epochs_around_it():
    # (wall, CPU) seconds; epoch 0 is the warm-up and is skipped
    run = {
        "epochs": [(99.0, 99.0), (4.0, 8.0), (6.0, 10.0), (5.0, 10.0)],
        "compute": [(1.0, 1.0), (2.0, 4.0), (4.0, 6.0), (6.0, 9.0), (4.0, 6.0)],
    }
    wall, cpu = paired(run, "epochs", "compute")
    # wall: (2+4)/2/4 = 0.75, (4+6)/2/6 = 0.833, (6+4)/2/5 = 1.0 -> median 0.833
    assert wall == pytest.approx(5 / 6)
    # CPU: (4+6)/2/8 = 0.625, (6+9)/2/10 = 0.75, (9+6)/2/10 = 0.75 -> median 0.75
    assert cpu == pytest.approx(0.75)


def test_the_side_paths_train_the_model_the_project_trains():
    # by default the model train.py builds from conf/ (with its learned conditional prior) and fused Adam
    model, optimizer = make_model()
    configured = OmegaConf.load(ROOT / "conf" / "model" / "cvae.yaml")
    for key in ("latent_dim", "hidden_dims", "lr", "prior"):
        assert model.hparams[key] == configured[key], key
    assert hasattr(model, "prior_net") and optimizer.defaults["fused"]
    # and its initial weights: train.py seeds everything (seed=42) before it builds the model
    L.seed_everything(42)
    hparams = {key: value for key, value in configured.items() if key not in ("_target_", "defaults")}
    built_by_train = CVAE(**hparams)
    for name, weight in built_by_train.state_dict().items():
        assert torch.equal(model.state_dict()[name], weight), name
    # beside a train.py run: a fresh copy of that run's own model
    run_model = CVAE(prior="standard", latent_dim=8, hidden_dims=[64])
    copy, _ = make_model(like=run_model)
    assert copy is not run_model and dict(copy.hparams) == dict(run_model.hparams)


def test_epoch_seconds_are_the_gaps_between_validations():
    assert epoch_seconds([(3.0, 120.0), (5.5, 110.0), (9.0, 104.0)]) == [3.0, 2.5, 3.5]


def settings_in_process() -> tuple[list[float], str]:
    return denormals_flushed_per_thread(), torch.get_float32_matmul_precision()


@pytest.mark.parametrize("flush", [True, False])
def test_each_path_gets_its_own_settings_on_all_its_threads(flush):
    torch.set_flush_denormal(not flush)  # this thread's setting must not leak into the path's
    try:
        settings = {**project_settings(), "flush_denormal": flush}
        assert with_settings(settings, settings_in_process) == ([float(flush)] * 2, "medium")
        assert with_settings(TORCH_DEFAULTS, settings_in_process) == ([0.0, 0.0], "highest")
    finally:
        torch.set_flush_denormal(False)


def test_several_optimizer_steps_per_lightning_step_train_the_same_weights(data_dir):
    # bench/steps_per_call.py compares K steps per Lightning step with the project: the same training
    from bench.steps_per_call import SeveralBatches, SeveralSteps
    from cvae_lightning import MNISTDataModule

    def trained(model_class, data_class, groups, **steps):
        L.seed_everything(0)
        model = model_class(latent_dim=4, hidden_dims=[32], prior="conditional", **steps)
        trainer = tiny_trainer(
            max_epochs=1, limit_train_batches=groups, limit_val_batches=0, deterministic=True
        )
        trainer.fit(model, data_class(data_dir=str(data_dir), batch_size=16, **steps))
        return trainer.global_step, model.state_dict()

    one_step, weights = trained(CVAE, MNISTDataModule, 8)
    four_steps, grouped = trained(SeveralSteps, SeveralBatches, 2, steps=4)
    assert one_step == four_steps == 8
    for name, weight in weights.items():
        assert torch.equal(grouped[name], weight), name
