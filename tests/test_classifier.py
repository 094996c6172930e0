"""The project's MNIST classifier: its network, its config, and (slow) that it trains through train.py."""

import os
from pathlib import Path

import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from cvae_lightning.evaluation.classifier import Classifier, ClassifierFeatures
from cvae_lightning.harness.checkpoints import load_classifier
from cvae_lightning.model.data import load_split
from tests.helpers import ROOT, composed, read_events


def test_features_logits_and_fid_feature_extractor():
    model = Classifier(channels=[4, 8], feature_dim=16).eval()
    x = torch.rand(5, 1, 28, 28)
    assert model.features(x).shape == (5, 16) and model(x).shape == (5, 10)
    assert model.predict(x).shape == (5,)
    fid = FrechetInceptionDistance(feature=ClassifierFeatures(model), normalize=True)
    fid.update(x, real=True)
    fid.update(torch.rand(5, 1, 28, 28), real=False)
    assert fid.real_features_sum.shape == (16,) and torch.isfinite(fid.compute())


def test_experiment_classifier_composes_its_own_model_checkpoint_and_callbacks():
    cfg = composed("experiment=classifier")
    assert cfg.model._target_ == "cvae_lightning.evaluation.classifier.Classifier"
    assert cfg.optimized_metric == cfg.callbacks.model_checkpoint.monitor == "val/loss"
    assert cfg.callbacks.model_checkpoint.filename == "classifier"
    assert cfg.callbacks.model_checkpoint.dirpath.endswith("/checkpoints")
    # composed from the groups it needs, not the (C)VAE's with entries nulled
    assert set(cfg.callbacks) == set(composed("callbacks=checkpointing").callbacks) | {
        "progress_bar",
        "model_summary",
    }


@pytest.mark.slow
def test_classifier_trains_through_train_py(classifier_run):
    assert (classifier_run / "checkpoints" / "classifier.ckpt").is_file()
    scalars, _ = read_events(classifier_run)
    assert scalars["test/acc"][-1].value > 0.9


@pytest.mark.slow
@pytest.mark.skipif(
    not (ROOT / "checkpoints" / "classifier.ckpt").is_file(), reason="run `make classifier` first"
)
def test_the_projects_classifier_reads_real_test_digits_at_98_5_percent_or_more(data_dir):
    """`make classifier` trains judges at 98.80-99.02% (docs/results.md, "What the numbers are"): a floor
    below that spread, which a broken recipe or checkpoint falls through."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    classifier = load_classifier(Path(ROOT / "checkpoints" / "classifier.ckpt"))
    images, labels = load_split(data_dir, train=False)
    predicted = torch.cat([classifier.predict(x.float() / 255) for x in images.split(1000)])
    assert (predicted == labels).float().mean() >= 0.985


def test_the_optimizer_is_a_partial_config_swapped_with_one_override():
    """Built as the CVAE's is, kept as plain data (a weights-only checkpoint), the default Adam(lr=1e-3)
    without a config (CAS builds one so)."""
    from cvae_lightning.harness.config import build

    model = build(
        composed("experiment=classifier", "model.optimizer._target_=torch.optim.SGD").model, "model"
    )
    assert type(model.hparams.optimizer) is dict and model.hparams.optimizer["lr"] == 1e-3
    optimizer = model.configure_optimizers()
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["lr"] == 1e-3
    assert type(Classifier().configure_optimizers()) is torch.optim.Adam
    assert Classifier(**model.hparams).hparams == model.hparams


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.channels=[32]", "model.channels=[32] is not allowed: expected two integers >= 1"),
        ("model.channels=[32,0]", "model.channels=[32, 0] is not allowed: expected a list of integers >= 1"),
        ("model.feature_dim=0", "model.feature_dim=0 is not allowed: expected an integer >= 1"),
        ("model.dropout=1", "model.dropout=1 is not allowed: expected a number in [0, 1)"),
        ("model.dropout=high", "model.dropout='high' is not allowed: expected a number in [0, 1)"),
        ("model.optimizer.lr=0", "model.optimizer.lr=0 is not allowed: expected a number > 0"),
        ("+model.optimizer.betas=[2,0]", "model.optimizer: Invalid beta parameter at index 0: 2"),
    ],
)
def test_bad_classifier_values_are_refused_in_one_line(override, expected):
    from cvae_lightning.errors import ConfigError
    from cvae_lightning.harness.config import build

    with pytest.raises(ConfigError) as error:
        build(composed("experiment=classifier", override).model, "model").configure_optimizers()
    assert str(error.value).startswith(expected) and "\n" not in str(error.value), error.value
