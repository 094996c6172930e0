"""Scores: the test pass (-ELBO, and the IWAE NLL of the LogLikelihood callback), conditional accuracy,
classifier-FID, CAS, and evaluate.py's files, added test metrics and errors; checkpoints of every kind told
apart and loaded through one module."""

import json
import re

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cvae_lightning import load_checkpoint
from cvae_lightning.callbacks.metrics import LogLikelihood
from cvae_lightning.errors import CheckpointError, ConfigError
from cvae_lightning.evaluation.classifier import Classifier
from cvae_lightning.evaluation.scores import (
    CAS_NOT_DEFINED,
    classification_accuracy_score,
    classifier_fid,
    conditional_accuracy,
    markdown,
    read_digits,
    sample_scores,
)
from cvae_lightning.harness import checkpoints
from cvae_lightning.harness.checkpoints import load_classifier
from cvae_lightning.model.cvae import CVAE
from cvae_lightning.model.data import load_split
from tests.helpers import entry_error, run_entry, tiny_trainer


@pytest.fixture(scope="module")
def test_set(data_dir):
    return load_split(data_dir, train=False)


def test_checkpoint_kinds(tiny_checkpoints, tmp_path):
    kinds = {name: checkpoints.kind(checkpoints.read(path)) for name, path in tiny_checkpoints.items()}
    assert kinds == {"cvae": "cvae", "vae": "vae", "classifier": "classifier"}
    vae, cvae = (load_checkpoint(tiny_checkpoints[name]) for name in ("vae", "cvae"))
    assert isinstance(vae, CVAE) and isinstance(cvae, CVAE)  # the maths module, not the LightningModule
    assert (vae.n_labels, cvae.n_labels) == (0, 10) and not cvae.training
    # a (C)VAE checkpoint of another format is refused in one line
    old = checkpoints.read(tiny_checkpoints["cvae"])
    old["hyper_parameters"] = {"latent_dim": 2, "hidden_dims": [32], "prior": "standard"}
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.raises(CheckpointError, match="old.ckpt is not allowed: it does not load as a cvae"):
        load_checkpoint(tmp_path / "old.ckpt")
    with pytest.raises(
        CheckpointError, match="is not allowed: it is a classifier checkpoint, not a cvae or vae"
    ):
        load_checkpoint(tiny_checkpoints["classifier"])
    with pytest.raises(
        CheckpointError,
        match="classifier_path=.* it is a cvae checkpoint, not a classifier; .*make classifier",
    ):
        load_classifier(tiny_checkpoints["cvae"])
    with pytest.raises(
        CheckpointError, match="classifier_path=.*nope.ckpt is not allowed: no file there; .*make classifier"
    ):
        load_classifier(tiny_checkpoints["cvae"].parent / "nope.ckpt")


def test_loading_a_checkpoint_leaves_the_global_rng_as_it_was(tiny_checkpoints):
    """SampleAccuracy loads the judge as training starts: a run's random draws must not depend on whether
    checkpoints/classifier.ckpt exists (building the network draws its initial weights)."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    load_classifier(tiny_checkpoints["classifier"])
    assert torch.equal(torch.rand(3), expected)


class Oracle:
    """A classifier stub that reads every image as `answer` (or as what was asked when answer is None)."""

    def __init__(self, answer):
        self.answer = answer

    def predict(self, x):
        return self.answer[: len(x)]


def test_conditional_accuracy_and_confusion_matrix():
    labels = torch.arange(10).repeat_interleave(3)
    perfect = conditional_accuracy(read_digits(Oracle(labels), torch.zeros(30, 1, 28, 28)), labels)
    assert perfect["overall"] == 1.0 and perfect["per_digit"] == [1.0] * 10
    assert torch.equal(torch.tensor(perfect["confusion"]), 3 * torch.eye(10, dtype=torch.long))

    wrong_sevens = labels.clone()
    wrong_sevens[labels == 7] = 1  # every requested 7 is read as a 1
    result = conditional_accuracy(read_digits(Oracle(wrong_sevens), torch.zeros(30, 1, 28, 28)), labels)
    assert result["overall"] == pytest.approx(0.9)
    assert result["per_digit"][7] == 0.0 and result["per_digit"][1] == 1.0
    assert result["confusion"][7][1] == 3 and result["confusion"][7][7] == 0


def test_classifier_fid_is_zero_for_the_same_images_and_large_for_noise(tiny_checkpoints, test_set):
    classifier = load_classifier(tiny_checkpoints["classifier"])
    images, labels = test_set
    real = images[:500].float() / 255
    same = classifier_fid(classifier, real, real)
    other_real = classifier_fid(classifier, real, images[500:1000].float() / 255)
    noise = classifier_fid(classifier, real, torch.rand(500, 1, 28, 28))
    assert abs(same) < 1e-3
    assert other_real < noise and noise > 10 * max(other_real, 1e-3)


class _Reseed(L.Callback):
    """Seeds torch with the batch index just before LogLikelihood (the next callback) draws its noise, so
    that a test can draw the same noise again."""

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        torch.manual_seed(batch_idx)


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_log_likelihood_logs_the_test_nll_of_every_test_image_eager_or_compiled(
    tiny_checkpoints, test_set, compiled
):
    """`test/nll_k<k>` is -log p(x|y) as model.log_likelihood estimates it (its k and chunk), averaged over
    every test image (batches of unequal size weigh by their images), beside the test -ELBO of the same
    images; compiled, the same number up to rounding."""
    module = checkpoints.load_module(tiny_checkpoints["cvae"])
    images, labels = test_set[0][:70].float() / 255, test_set[1][:70]
    loader = DataLoader(TensorDataset(images, labels), batch_size=30)  # 30, 30 and 10 images
    per_batch = []
    for i, (x, y) in enumerate(loader):
        torch.manual_seed(i)
        per_batch.append(-module.model.log_likelihood(x, y, k=20, chunk=8))
    expected = torch.cat(per_batch).mean().item()
    assert abs(torch.stack([nll.mean() for nll in per_batch]).mean().item() - expected) > 0.01

    def test_pass(callback):
        trainer = tiny_trainer(callbacks=[_Reseed(), callback])
        return trainer.test(module, dataloaders=loader, verbose=False)[0]

    tested = test_pass(LogLikelihood(k=20, chunk=8))
    assert tested["test/nll_k20"] == pytest.approx(expected, rel=1e-6)
    assert tested["test/nelbo"] == pytest.approx(tested["test/recon"] + tested["test/kl"], rel=1e-6)
    assert 0 < tested["test/nll_k20"] < tested["test/nelbo"] + 1.0  # the IWAE bound is at least as tight

    if compiled:  # an inductor compile: a minute on a CPU
        tested = test_pass(LogLikelihood(k=20, chunk=8, compile=True))
        assert "log_weights" in vars(module.model)  # the compiled function, not the eager method
        assert tested["test/nll_k20"] == pytest.approx(expected, abs=1e-3)


def test_sample_scores_reports_accuracy_and_fid_at_every_temperature(tiny_checkpoints, test_set):
    model = load_checkpoint(tiny_checkpoints["cvae"])
    classifier = load_classifier(tiny_checkpoints["classifier"])
    images, labels = test_set
    metrics = sample_scores(model, classifier, images, labels, n_per_digit=20)
    assert set(metrics) == {"accuracy", "fid"}  # no CAS unless asked; plain data, ready for JSON
    assert json.loads(json.dumps(metrics)) == metrics
    assert set(metrics["accuracy"]) == set(metrics["fid"]) == {"T=1", "T=0.5", "T=0"}
    for acc in metrics["accuracy"].values():
        assert 0 <= acc["overall"] <= 1 and len(acc["per_digit"]) == 10
        assert sum(map(sum, acc["confusion"])) == 200
    assert all(fid["overall"] > 0 for fid in metrics["fid"].values())
    assert len(metrics["fid"]["T=1"]["per_digit"]) == 10 and "per_digit" not in metrics["fid"]["T=0"]
    test = {"nelbo": 120.0, "recon": 100.0, "kl": 20.0, "nll": 115.0}
    report = {"model": "CVAE", "test_images": 100, "k": 20, "test": test}
    table = markdown(report | metrics)
    assert "| conditional accuracy T=0.5 |" in table
    assert "| test NLL -log p(x given y), IWAE k=20 | 115.00 |" in table


def test_evaluate_script_writes_metrics_beside_the_checkpoint(tiny_checkpoints, capsys):
    ckpt = tiny_checkpoints["cvae"]
    run_entry(
        "evaluate.py",
        f"ckpt_path={ckpt}",
        f"classifier_path={tiny_checkpoints['classifier']}",
        "callbacks.log_likelihood.k=5",
        "callbacks.log_likelihood.compile=false",  # compiled, the same number: the test above
        "data.eval_batch_size=50",
        "trainer.limit_test_batches=1",
        "eval.n_per_digit=10",
        "eval.temperatures=[1.0]",
    )
    metrics = json.loads((ckpt.parent / "metrics.json").read_text())
    assert metrics["model"] == "CVAE" and metrics["k"] == 5 and metrics["test_images"] == 50
    assert set(metrics) == {"model", "weights", "test_images", "k", "test", "accuracy", "fid"}
    assert metrics["weights"] == "average"
    assert set(metrics["test"]) == {"nelbo", "recon", "kl", "nll"}
    table = (ckpt.parent / "metrics.md").read_text()
    assert "| test -ELBO (nats/image) |" in table and "IWAE k=5 |" in table
    assert (ckpt.parent / "confusion_matrix.png").stat().st_size > 1000
    shown = capsys.readouterr()
    assert "conditional accuracy T=1" in shown.out
    # the config tree as train.py's, and the test pass's progress bar: batches, time spent • time left
    assert "CONFIG" in shown.out and "ckpt_path:" in shown.out
    assert re.search(r"Testing .* 1/1 \d+:\d\d:\d\d • \d+:\d\d:\d\d", shown.out), shown.out[-2000:]


class MeanPixel(L.Callback):
    """A metric added to evaluate.py's test pass: `+callbacks.mean_pixel._target_=tests.test_scores.MeanPixel`
    (what a user's own callback does: log test/<name> in the test pass)."""

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        x = batch[0]
        pl_module.log("test/mean_pixel", x.mean(), batch_size=len(x))


def test_a_callback_adds_a_metric_to_evaluate_py_and_the_nll_drops_out(tiny_checkpoints, test_set, tmp_path):
    run_entry(
        "evaluate.py",
        f"ckpt_path={tiny_checkpoints['cvae']}",
        f"classifier_path={tiny_checkpoints['classifier']}",
        f"out_dir={tmp_path}",
        "~callbacks.log_likelihood",
        "+callbacks.mean_pixel._target_=tests.test_scores.MeanPixel",
        "data.eval_batch_size=200",
        "trainer.limit_test_batches=1",
        "eval.n_per_digit=10",
        "eval.temperatures=[1.0]",
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test_images"] == 200 and metrics["k"] == 0
    assert set(metrics["test"]) == {"nelbo", "recon", "kl", "mean_pixel"}
    # the first 200 test images, as the checkpoint was trained on them (grayscale: data.binarize=none)
    mean_pixel = test_set[0][:200].float().div(255).mean().item()
    assert metrics["test"]["mean_pixel"] == pytest.approx(mean_pixel, rel=1e-5)
    table = (tmp_path / "metrics.md").read_text()
    assert f"| test mean_pixel | {mean_pixel:.4g} |" in table and "test NLL" not in table


class NoTestPass(L.Callback):
    """Fails evaluate.py's test pass: a bad option must be refused before it."""

    def on_test_start(self, trainer, pl_module):
        raise AssertionError("the test pass ran before the options were checked")


def test_evaluate_script_errors_are_one_line(tiny_checkpoints, tmp_path):
    missing = entry_error(
        "evaluate.py", f"ckpt_path={tiny_checkpoints['cvae']}", f"classifier_path={tmp_path}/no.ckpt"
    )
    assert f"classifier_path={tmp_path}/no.ckpt is not allowed: no file there" in missing
    assert "make classifier" in missing
    assert "ckpt_path is required" in entry_error("evaluate.py")
    assert entry_error("evaluate.py").endswith("or ckpt_path=pretrained (the shipped model)")
    cas = entry_error(
        "evaluate.py",
        f"ckpt_path={tiny_checkpoints['cvae']}",
        f"classifier_path={tiny_checkpoints['classifier']}",
        "+callbacks.no_test_pass._target_=tests.test_scores.NoTestPass",
        "eval.cas=maybe",
    )
    assert "eval.cas='maybe' is not allowed: expected true or false" in cas


@pytest.fixture(scope="module")
def train_set(data_dir):
    return load_split(data_dir, train=True)


class RealDigits:
    """A stand-in CVAE whose samples are real training images: of the digit asked for or, with `shift=1`,
    of the next one ((y + 1) % 10), a model whose labels name the wrong digit. Records what was asked."""

    n_labels, device = 10, torch.device("cpu")

    def __init__(self, train_set, shift=0):
        images, labels = train_set
        self.pools = [images[labels == (d + shift) % 10][:200].float() / 255 for d in range(10)]
        self.asked = []

    def sample(self, labels, temperature):
        assert temperature == 1.0
        used = [self.asked.count(d) for d in range(10)]  # a new image for every request
        images = []
        for y in labels.tolist():
            images.append(self.pools[y][used[y]])
            used[y] += 1
        self.asked += labels.tolist()
        return torch.stack(images)


def test_cas_of_a_tiny_cvae_has_every_field_and_leaves_the_random_state_alone(tiny_checkpoints, test_set):
    model = load_checkpoint(tiny_checkpoints["cvae"])
    classifier = load_classifier(tiny_checkpoints["classifier"])
    images, labels = test_set[0][:500], test_set[1][:500]
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    result = classification_accuracy_score(model, images, labels, 5, classifier, epochs=1)
    assert torch.equal(torch.rand(3), expected)
    assert set(result) == {"overall", "per_digit", "real_data", "train_images", "epochs", "seconds"}
    assert result["train_images"] == 50 and result["epochs"] == 1
    for accuracy in (result, result["real_data"]):
        assert 0 <= accuracy["overall"] <= 1 and len(accuracy["per_digit"]) == 10
    real = conditional_accuracy(read_digits(classifier, images.float() / 255), labels)["overall"]
    assert result["real_data"]["overall"] == real


def test_cas_is_high_for_the_right_digits_and_low_for_the_wrong_ones(train_set, test_set):
    # real_classifier sets the architecture CAS trains: a small one, quick to train (its own real_data score,
    # untrained, is not what this test looks at)
    small = Classifier(channels=[8, 16], feature_dim=32)
    images, labels = test_set[0][:1000], test_set[1][:1000]
    counts = [100 + d for d in range(10)]
    right, wrong = RealDigits(train_set), RealDigits(train_set, shift=1)
    scores = [
        classification_accuracy_score(model, images, labels, counts, small, epochs=2, batch_size=16)
        for model in (right, wrong)
    ]
    assert torch.bincount(torch.tensor(right.asked), minlength=10).tolist() == counts
    assert scores[0]["overall"] > 0.6 and scores[1]["overall"] < 0.1, scores


def test_sample_scores_add_cas_for_a_cvae_and_a_note_for_a_vae(tiny_checkpoints, test_set):
    images, labels = test_set[0][:500], test_set[1][:500]
    options = dict(n_per_digit=5, temperatures=(1.0,), cas=True, cas_epochs=1)
    train_labels = torch.arange(10).repeat(2)
    classifier = load_classifier(tiny_checkpoints["classifier"])
    test = {"model": "CVAE", "test_images": 500, "k": 0, "test": {"nelbo": 1.0, "recon": 1.0, "kl": 0.0}}
    cvae = load_checkpoint(tiny_checkpoints["cvae"])
    metrics = sample_scores(cvae, classifier, images, labels, train_labels=train_labels, **options)
    assert metrics["cas"]["train_images"] == 20 and "real_data" in metrics["cas"]
    table = markdown(test | metrics)
    assert "| CAS (classifier trained on 20 generated digits, epochs=1) |" in table
    assert "| CAS baseline |" in table and "| accuracy T=1 |" in table

    vae = load_checkpoint(tiny_checkpoints["vae"])
    metrics = sample_scores(vae, classifier, images, labels, train_labels=train_labels, **options)
    assert metrics["cas"] == {"skipped": f"not defined for a VAE: {CAS_NOT_DEFINED}"}
    assert "| CAS | skipped: not defined for a VAE" in markdown(test | metrics | {"model": "VAE"})
    with pytest.raises(ConfigError, match="CAS is not defined for a VAE"):
        classification_accuracy_score(vae, images, labels, 1)
    with pytest.raises(ConfigError, match="eval.cas='yes' is not allowed: expected true or false"):
        sample_scores(cvae, classifier, images, labels, cas="yes")
