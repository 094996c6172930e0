import re

import pytest

from cvae_lightning.config import ConfigError, validate
from tests.conftest import composed, run_train


def test_default_config_is_valid_and_builds_the_cvae():
    cfg = composed()
    validate(cfg)
    assert cfg.model._target_.endswith("CVAE") and cfg.trainer.accelerator == "cpu"
    assert cfg.data.shuffle_seed == cfg.seed


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.latent_dim=0", "model.latent_dim=0 is not allowed: expected an integer >= 1"),
        ("model.latent_dim=2.5", "model.latent_dim=2.5 is not allowed: expected an integer >= 1"),
        ("model.hidden_dims=[512,0]", "model.hidden_dims=[512, 0] is not allowed"),
        ("model.lr=0", "model.lr=0 is not allowed: expected a number > 0"),
        ("model.lr=-1e-3", "model.lr=-0.001 is not allowed"),
        ("data.batch_size=-1", "data.batch_size=-1 is not allowed: expected an integer >= 1"),
        ("data.eval_batch_size=0", "data.eval_batch_size=0 is not allowed: expected an integer >= 1"),
        ("data.val_size=60000", "data.val_size=60000 is not allowed"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 is not allowed"),
        (
            "model.prior=gaussian",
            "model.prior='gaussian' is not allowed: expected one of standard, conditional",
        ),
        ("model.beta=-1", "model.beta=-1 is not allowed: expected a number >= 0"),
        ("data.binarize=static", "data.binarize='static' is not allowed: expected one of none, dynamic"),
        (
            "model.lr_schedule=step",
            "model.lr_schedule='step' is not allowed: expected one of constant, cosine",
        ),
        ("flush_denormal=1", "flush_denormal=1 is not allowed: expected true or false"),
        (
            "matmul_precision=low",
            "matmul_precision='low' is not allowed: expected one of highest, high, medium",
        ),
    ],
)
def test_bad_values_are_refused(override, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        validate(composed(override))


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.latent_dim=0", "error: model.latent_dim=0 is not allowed: expected an integer >= 1"),
        ("data.batch_size=-1", "error: data.batch_size=-1 is not allowed: expected an integer >= 1"),
        ("model=gan", "error: model=gan is not allowed: expected one of classifier, cvae, vae"),
        ("trainer=tpu", "error: trainer=tpu is not allowed: expected one of cpu, ddp, default, gpu"),
    ],
)
def test_cli_prints_one_line_and_fails(override, expected):
    result = run_train(override, "hydra.run.dir=/tmp/cvae-never-used", timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == expected
    assert "Traceback" not in result.stderr
