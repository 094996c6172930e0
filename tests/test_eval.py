"""Evaluation: ELBO + IWAE NLL, conditional accuracy, classifier-FID, and evaluate.py's files and errors."""

import json
import os
import subprocess
import sys

import pytest
import torch

from cvae_lightning.classifier import MissingClassifierError, load_classifier
from cvae_lightning.data import load_split
from cvae_lightning.evaluation import (
    CheckpointKindError,
    checkpoint_kind,
    classifier_fid,
    conditional_accuracy,
    evaluate,
    load_generative_model,
    markdown,
)
from tests.conftest import ROOT


def run_script(script, *overrides, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *overrides],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def test_set(data_dir):
    return load_split(data_dir, train=False)


def test_checkpoint_kinds(tiny_checkpoints):
    assert {kind: checkpoint_kind(path) for kind, path in tiny_checkpoints.items()} == {
        "cvae": "cvae",
        "vae": "vae",
        "classifier": "classifier",
    }
    with pytest.raises(CheckpointKindError, match="is a classifier checkpoint, not a CVAE or VAE"):
        load_generative_model(tiny_checkpoints["classifier"])
    with pytest.raises(
        MissingClassifierError, match="is not a classifier checkpoint; train one with `make classifier`"
    ):
        load_classifier(tiny_checkpoints["cvae"])
    with pytest.raises(MissingClassifierError, match="no MNIST classifier at .*make classifier"):
        load_classifier(tiny_checkpoints["cvae"].parent / "nope.ckpt")


class Oracle:
    """A classifier stub that reads every image as `answer` (or as what was asked when answer is None)."""

    def __init__(self, answer):
        self.answer = answer

    def predict(self, x):
        return self.answer[: len(x)]


def test_conditional_accuracy_and_confusion_matrix():
    labels = torch.arange(10).repeat_interleave(3)
    perfect = conditional_accuracy(Oracle(labels), torch.zeros(30, 1, 28, 28), labels)
    assert perfect["overall"] == 1.0 and perfect["per_digit"] == [1.0] * 10
    assert torch.equal(torch.tensor(perfect["confusion"]), 3 * torch.eye(10, dtype=torch.long))

    wrong_sevens = labels.clone()
    wrong_sevens[labels == 7] = 1  # every requested 7 is read as a 1
    result = conditional_accuracy(Oracle(wrong_sevens), torch.zeros(30, 1, 28, 28), labels)
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


def test_evaluate_reports_every_metric(tiny_checkpoints, test_set):
    model = load_generative_model(tiny_checkpoints["cvae"])
    classifier = load_classifier(tiny_checkpoints["classifier"])
    images, labels = test_set
    metrics = evaluate(model, classifier, images, labels, k=20, n_per_digit=20, n_images=100, chunk=8)
    test = metrics["test"]
    assert test["elbo"] == pytest.approx(test["recon"] + test["kl"], rel=1e-6)
    assert 0 < test["nll"] < test["elbo"] + 1.0  # the IWAE bound is at least as tight as the ELBO
    assert set(metrics["accuracy"]) == set(metrics["fid"]) == {"T=1", "T=0.5", "T=0"}
    for acc in metrics["accuracy"].values():
        assert 0 <= acc["overall"] <= 1 and len(acc["per_digit"]) == 10
        assert sum(map(sum, acc["confusion"])) == 200
    assert all(fid["overall"] > 0 for fid in metrics["fid"].values())
    assert len(metrics["fid"]["T=1"]["per_digit"]) == 10 and "per_digit" not in metrics["fid"]["T=0"]
    table = markdown({k: v for k, v in metrics.items() if not k.startswith("_")})
    assert "| conditional accuracy T=0.5 |" in table and "IWAE k=20" in table


def test_evaluate_script_writes_metrics_beside_the_checkpoint(tiny_checkpoints):
    ckpt = tiny_checkpoints["cvae"]
    result = run_script(
        "evaluate.py",
        f"ckpt_path={ckpt}",
        f"classifier_path={tiny_checkpoints['classifier']}",
        "eval.k=5",
        "eval.n_images=50",
        "eval.n_per_digit=10",
        "eval.temperatures=[1.0]",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((ckpt.parent / "metrics.json").read_text())
    assert metrics["model"] == "CVAE" and metrics["k"] == 5 and metrics["test_images"] == 50
    assert "| test -ELBO (nats/image) |" in (ckpt.parent / "metrics.md").read_text()
    assert (ckpt.parent / "confusion_matrix.png").stat().st_size > 1000
    assert "conditional accuracy T=1" in result.stdout


def test_evaluate_script_errors_are_one_line(tiny_checkpoints, tmp_path):
    wrong_kind = run_script(
        "evaluate.py",
        f"ckpt_path={tiny_checkpoints['classifier']}",
        f"classifier_path={tiny_checkpoints['classifier']}",
    )
    missing = run_script(
        "evaluate.py", f"ckpt_path={tiny_checkpoints['cvae']}", f"classifier_path={tmp_path}/no.ckpt"
    )
    for result, message in (
        (wrong_kind, "is a classifier checkpoint, not a CVAE or VAE; pass one written by `python train.py`"),
        (missing, "no MNIST classifier at"),
    ):
        assert result.returncode != 0
        assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr
    assert "make classifier" in missing.stderr
