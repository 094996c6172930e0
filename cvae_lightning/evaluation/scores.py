"""How good a trained (C)VAE is: test -ELBO, IWAE NLL, conditional accuracy, classifier-FID and the
Classification Accuracy Score, and the report evaluate.py writes (metrics.json / metrics.md beside the
checkpoint)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from torchmetrics.image.fid import FrechetInceptionDistance

from cvae_lightning.errors import ConfigError, check_bool, check_int
from cvae_lightning.evaluation.classifier import Classifier, ClassifierFeatures
from cvae_lightning.harness import files
from cvae_lightning.model.cvae import CVAE
from cvae_lightning.model.data import NUM_CLASSES, InMemoryLoader

# images per classifier pass: small enough that its activations reuse heap memory instead of fresh mmaps
CLASSIFIER_BATCH = 128
# the classifier's training recipe, as `python train.py experiment=classifier` runs it: 4 epochs
# (conf/experiment/classifier.yaml) of batches of 128 (conf/data/mnist.yaml)
CAS_EPOCHS, CAS_BATCH = 4, 128
CAS_NOT_DEFINED = "a VAE cannot be asked for a digit, so its samples have no labels to train a classifier on"


@torch.no_grad()
def generate(model: CVAE, labels: Tensor, temperature: float, batch_size: int = 1000) -> Tensor:
    """One sample per label at `temperature`, on the CPU (a VAE draws as many unlabelled samples)."""
    return torch.cat(
        [model.sample(labels=chunk, temperature=temperature) for chunk in labels.split(batch_size)]
    ).cpu()


def generate_per_digit(model: CVAE, n_per_digit: int, temperature: float, batch_size: int = 1000) -> Tensor:
    """n_per_digit samples of every digit 0-9 (digit-major order) at `temperature`; a VAE, which cannot
    be asked for a digit, draws as many (10 x n_per_digit) unlabelled samples."""
    labels = torch.arange(NUM_CLASSES).repeat_interleave(n_per_digit)
    return generate(model, labels, temperature, batch_size)


@torch.no_grad()
def conditional_accuracy(
    classifier: Classifier, images: Tensor, labels: Tensor, batch_size: int = CLASSIFIER_BATCH
) -> dict[str, object]:
    """How often the classifier reads the requested digit: overall, per digit, and the confusion matrix."""
    overall = MulticlassAccuracy(NUM_CLASSES, average="micro")
    per_digit = MulticlassAccuracy(NUM_CLASSES, average="none")
    confusion = MulticlassConfusionMatrix(NUM_CLASSES)
    for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True):
        predicted = classifier.predict(x).cpu()
        for metric in (overall, per_digit, confusion):
            metric.update(predicted, y)
    return {
        "overall": overall.compute().item(),
        "per_digit": per_digit.compute().tolist(),
        "confusion": confusion.compute().tolist(),
        "_confusion_metric": confusion,
    }


@torch.no_grad()
def classifier_fid(
    classifier: Classifier, real: Tensor, fake: Tensor, batch_size: int = CLASSIFIER_BATCH
) -> float:
    """Frechet distance between real and generated images in the classifier's penultimate features."""
    fid = FrechetInceptionDistance(feature=ClassifierFeatures(classifier), normalize=True)
    fid.to(classifier.device)
    for images, is_real in ((real, True), (fake, False)):
        for x in images.split(batch_size):
            fid.update(x.to(classifier.device), real=is_real)
    return fid.compute().item()


def label_counts(labels: Tensor) -> list[int]:
    """How many of each digit 0-9 `labels` holds."""
    return torch.bincount(labels, minlength=NUM_CLASSES).tolist()


def _test_accuracy(classifier: Classifier, images: Tensor, labels: Tensor) -> dict[str, object]:
    accuracy = conditional_accuracy(classifier, images, labels)
    return {"overall": accuracy["overall"], "per_digit": accuracy["per_digit"]}


def classification_accuracy_score(
    model: CVAE,
    test_images: Tensor,
    test_labels: Tensor,
    train_counts: Sequence[int] | int,
    real_classifier: Classifier | None = None,
    epochs: int = CAS_EPOCHS,
    batch_size: int = CAS_BATCH,
    binarize: bool = False,
    seed: int = 0,
) -> dict:
    """The Classification Accuracy Score (Ravuri & Vinyals 2019): a fresh classifier trained only on the
    CVAE's samples at temperature 1, `train_counts[d]` of each digit d (the real training set's
    `label_counts`, or one number for every digit), then tested on the real test images (uint8): overall
    and per digit. With `real_classifier` (trained on real digits: checkpoints/classifier.ckpt), its accuracy
    on the same test images comes beside it as `real_data`.

    The new classifier has the real one's architecture and learning rate (the defaults without one) and
    trains as `experiment=classifier` does, but keeps its last epoch: picking one by real validation digits
    would let real data into its training. `binarize`: the model was trained on dynamically binarized
    pixels, so its samples become Bernoulli draws from the decoder's means, afresh every batch, as its own
    training images were. The test images are the real grayscale ones for every model, so `real_data` is
    one baseline for all.
    """
    if not model.n_labels:
        raise ConfigError(f"CAS is not defined for a VAE: {CAS_NOT_DEFINED}")
    started = time.perf_counter()
    counts = [train_counts] * NUM_CLASSES if isinstance(train_counts, int) else list(train_counts)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(torch.tensor(counts))
    # its own seed, leaving the caller's random state as it was (evaluate's other metrics do not move)
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)
        # the decoder's means in [0, 1] (model.sample), kept as 8-bit pixels like MNIST's own: the loader the
        # models train with then shuffles them every epoch and, with binarize, draws the Bernoulli pixels
        pixels = generate(model, labels, temperature=1.0).mul(255).round().to(torch.uint8)
        loader = InMemoryLoader(pixels, labels, batch_size, shuffle=True, seed=seed, binarize=binarize)
        classifier = Classifier(**(real_classifier.hparams if real_classifier is not None else {}))
        trainer = L.Trainer(
            accelerator=model.device.type,
            devices=1,
            max_epochs=epochs,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(classifier, train_dataloaders=loader)
    real = test_images.float().div(255.0)
    result = _test_accuracy(classifier.eval(), real, test_labels)
    if real_classifier is not None:
        result["real_data"] = _test_accuracy(real_classifier, real, test_labels)
    result.update(train_images=len(labels), epochs=epochs, seconds=round(time.perf_counter() - started, 1))
    return result


def sample_scores(
    model: CVAE,
    classifier: Classifier,
    test_images: Tensor,
    test_labels: Tensor,
    n_per_digit: int = 1000,
    temperatures: Sequence[float] = (1.0, 0.5, 0.0),
    binarize: bool = False,
    seed: int = 0,
    cas: bool = False,
    cas_epochs: int = CAS_EPOCHS,
    train_labels: Tensor | None = None,
) -> dict:
    """What the classifier says of the model's samples (evaluate.py): conditional accuracy (CVAE) and
    classifier-FID at each temperature, and with `cas` the Classification Accuracy Score, with as many
    samples of each digit as `train_labels` holds."""
    check_bool("eval.cas", cas)
    check_int("eval.cas_epochs", cas_epochs, 1)
    if cas and train_labels is None:
        raise ValueError("cas=True needs train_labels: CAS generates as many of each digit as they hold")
    torch.manual_seed(seed)
    metrics: dict = {}
    if cas and not model.n_labels:
        metrics["cas"] = {"skipped": f"not defined for a VAE: {CAS_NOT_DEFINED}"}
    elif cas:
        metrics["cas"] = classification_accuracy_score(
            model,
            test_images,
            test_labels,
            label_counts(train_labels),
            classifier,
            epochs=cas_epochs,
            binarize=binarize,
            seed=seed,
        )
    real = test_images.float().div(255.0)
    conditional = model.n_labels > 0
    metrics["accuracy"], metrics["fid"] = {}, {}
    for temperature in temperatures:
        key = f"T={temperature:g}"
        fake = generate_per_digit(model, n_per_digit, temperature)
        metrics["fid"][key] = {"overall": classifier_fid(classifier, real, fake)}
        if not conditional:
            continue
        fake_labels = torch.arange(NUM_CLASSES).repeat_interleave(n_per_digit)
        accuracy = conditional_accuracy(classifier, fake, fake_labels)
        if temperature == temperatures[0]:
            metrics["_confusion_metric"] = accuracy["_confusion_metric"]
        del accuracy["_confusion_metric"]
        metrics["accuracy"][key] = accuracy
        if temperature == temperatures[0]:  # per digit at the first temperature only (FID is slow)
            metrics["fid"][key]["per_digit"] = [
                classifier_fid(classifier, real[test_labels == d], fake[fake_labels == d])
                for d in range(NUM_CLASSES)
            ]
    return metrics


def _percent_row(name: str, fractions: Sequence[float]) -> str:
    return f"| {name} | " + " | ".join(f"{100 * a:.1f}" for a in fractions) + " |"


def markdown(metrics: dict, title: str = "") -> str:
    """metrics.md: the headline numbers, then per-digit accuracy, FID and CAS."""
    test = metrics["test"]
    lines = [f"# {title}".rstrip(), ""] if title else []
    lines += [
        f"{metrics['model']}, {metrics['test_images']} test images, k = {metrics['k']}",
        "",
        "| metric | value |",
        "|---|---|",
        f"| test -ELBO (nats/image) | {test['nelbo']:.2f} |",
        f"| test reconstruction term | {test['recon']:.2f} |",
        f"| test KL term | {test['kl']:.2f} |",
    ]
    if "nll" in test:
        what = "-log p(x given y)" if metrics["model"] == "CVAE" else "-log p(x)"
        lines.append(f"| test NLL {what}, IWAE k={metrics['k']} | {test['nll']:.2f} |")
    for name, value in test.items():  # the metrics of callbacks added to the test pass
        if name not in ("nelbo", "recon", "kl", "nll"):
            lines.append(f"| test {name} | {value:.4g} |")
    for key, acc in metrics.get("accuracy", {}).items():
        lines.append(f"| conditional accuracy {key} | {100 * acc['overall']:.2f}% |")
    for key, fid in metrics.get("fid", {}).items():
        lines.append(f"| classifier-FID {key} | {fid['overall']:.3f} |")
    cas = metrics.get("cas", {})
    if "skipped" in cas:
        lines.append(f"| CAS | skipped: {cas['skipped']} |")
    elif cas:
        trained = f"{cas['train_images']} generated digits, epochs={cas['epochs']}"
        lines.append(f"| CAS (classifier trained on {trained}) | {100 * cas['overall']:.2f}% |")
        if "real_data" in cas:
            real = cas["real_data"]["overall"]
            lines.append(f"| CAS baseline: the classifier trained on real digits | {100 * real:.2f}% |")
    rows = [
        _percent_row(f"accuracy {key}", acc["per_digit"]) for key, acc in metrics.get("accuracy", {}).items()
    ]
    rows += [
        f"| FID {key} | " + " | ".join(f"{f:.2f}" for f in fid["per_digit"]) + " |"
        for key, fid in metrics.get("fid", {}).items()
        if "per_digit" in fid
    ]
    if "per_digit" in cas:
        rows.append(_percent_row("CAS", cas["per_digit"]))
    if "real_data" in cas:
        rows.append(_percent_row("CAS baseline", cas["real_data"]["per_digit"]))
    if rows:
        digits = " | ".join(str(d) for d in range(NUM_CLASSES))
        lines += ["", f"| per digit | {digits} |", "|---|" + "---|" * NUM_CLASSES, *rows]
    return "\n".join(lines) + "\n"


def write_report(metrics: dict, out_dir: str | Path, title: str = "") -> list[Path]:
    """metrics.json, metrics.md and (CVAE) confusion_matrix.png in out_dir; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    confusion = metrics.pop("_confusion_metric", None)
    written = [out_dir / "metrics.json", out_dir / "metrics.md"]
    files.write_text(written[0], json.dumps(metrics, indent=2) + "\n")
    files.write_text(written[1], markdown(metrics, title))
    if confusion is not None:
        import matplotlib

        matplotlib.use("Agg")
        fig, ax = confusion.plot()
        ax.set_title(f"requested digit (rows) vs classified, {next(iter(metrics['accuracy']))}")
        fig.savefig(out_dir / "confusion_matrix.png", dpi=100, bbox_inches="tight")
        written.append(out_dir / "confusion_matrix.png")
    return written
