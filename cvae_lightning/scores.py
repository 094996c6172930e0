"""How good a trained (C)VAE is: test -ELBO, IWAE NLL, conditional accuracy and classifier-FID, and the
report evaluate.py writes (metrics.json / metrics.md beside the checkpoint)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from torchmetrics.image.fid import FrechetInceptionDistance

from cvae_lightning.classifier import Classifier, ClassifierFeatures
from cvae_lightning.data import NUM_CLASSES
from cvae_lightning.models import ELBO_PARTS, VAE

# images per classifier pass: small enough that its activations reuse heap memory instead of fresh mmaps
CLASSIFIER_BATCH = 128


def _batches(images: Tensor, labels: Tensor, batch_size: int, binarize: bool, generator: torch.Generator):
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].float().div(255.0)
        if binarize:
            x = torch.bernoulli(x, generator=generator)
        yield x, labels[i : i + batch_size]


@torch.no_grad()
def test_elbo_and_nll(
    model: VAE,
    images: Tensor,
    labels: Tensor,
    k: int,
    batch_size: int = 100,
    chunk: int = 100,
    binarize=False,
) -> dict[str, float]:
    """-ELBO (`nelbo`, and its recon/KL parts) and the IWAE NLL (k importance samples), in nats per image.

    For the CVAE the NLL is the conditional -log p(x|y); for the VAE it is -log p(x).
    """
    generator = torch.Generator().manual_seed(0)  # the same binarized test set for every model
    sums = dict.fromkeys((*ELBO_PARTS, "nll"), 0.0)
    for x, y in _batches(images, labels, batch_size, binarize, generator):
        x, y = x.to(model.device), y.to(model.device)
        terms = model.elbo_terms(x, y)
        for name in ELBO_PARTS:
            sums[name] += terms[name].item() * len(x)
        if k:
            sums["nll"] -= model.log_likelihood(x, y, k=k, chunk=chunk).sum().item()
    results = {name: total / len(images) for name, total in sums.items()}
    if not k:
        del results["nll"]
    return results


@torch.no_grad()
def generate_per_digit(model: VAE, n_per_digit: int, temperature: float, batch_size: int = 1000) -> Tensor:
    """n_per_digit samples of every digit 0-9 (digit-major order) at `temperature`; a VAE, which cannot
    be asked for a digit, draws as many (10 x n_per_digit) unlabelled samples."""
    labels = torch.arange(NUM_CLASSES).repeat_interleave(n_per_digit)
    return torch.cat(
        [model.sample(labels=chunk, temperature=temperature) for chunk in labels.split(batch_size)]
    ).cpu()


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


def evaluate(
    model: VAE,
    classifier: Classifier | None,
    test_images: Tensor,
    test_labels: Tensor,
    k: int = 1000,
    n_per_digit: int = 1000,
    temperatures: Sequence[float] = (1.0, 0.5, 0.0),
    n_images: int | None = None,
    batch_size: int = 100,
    chunk: int = 100,
    binarize: bool = False,
    seed: int = 0,
) -> dict:
    """All metrics of one model (see evaluate.py); the classifier is needed for accuracy and FID."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    subset = slice(0, n_images)
    metrics: dict = {"model": type(model).__name__, "test_images": len(test_images[subset]), "k": k}
    metrics["test"] = test_elbo_and_nll(
        model, test_images[subset], test_labels[subset], k, batch_size, chunk, binarize=binarize
    )
    metrics["seconds_elbo_nll"] = round(time.perf_counter() - started, 1)
    if classifier is None:
        return metrics

    real = test_images.float().div(255.0)
    conditional = model.n_classes > 0
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
    metrics["seconds_total"] = round(time.perf_counter() - started, 1)
    return metrics


def markdown(metrics: dict, title: str = "") -> str:
    """metrics.md: the headline numbers, then per-digit accuracy and FID."""
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
    for key, acc in metrics.get("accuracy", {}).items():
        lines.append(f"| conditional accuracy {key} | {100 * acc['overall']:.2f}% |")
    for key, fid in metrics.get("fid", {}).items():
        lines.append(f"| classifier-FID {key} | {fid['overall']:.3f} |")
    if metrics.get("accuracy"):
        digits = " | ".join(str(d) for d in range(NUM_CLASSES))
        lines += ["", f"| per digit | {digits} |", "|---|" + "---|" * NUM_CLASSES]
        for key, acc in metrics["accuracy"].items():
            lines.append(
                f"| accuracy {key} | " + " | ".join(f"{100 * a:.1f}" for a in acc["per_digit"]) + " |"
            )
        for key, fid in metrics["fid"].items():
            if "per_digit" in fid:
                lines.append(f"| FID {key} | " + " | ".join(f"{f:.2f}" for f in fid["per_digit"]) + " |")
    return "\n".join(lines) + "\n"


def write_report(metrics: dict, out_dir: str | Path, title: str = "") -> list[Path]:
    """metrics.json, metrics.md and (CVAE) confusion_matrix.png in out_dir; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    confusion = metrics.pop("_confusion_metric", None)
    written = [out_dir / "metrics.json", out_dir / "metrics.md"]
    written[0].write_text(json.dumps(metrics, indent=2) + "\n")
    written[1].write_text(markdown(metrics, title))
    if confusion is not None:
        import matplotlib

        matplotlib.use("Agg")
        fig, ax = confusion.plot()
        ax.set_title(f"requested digit (rows) vs classified, {next(iter(metrics['accuracy']))}")
        fig.savefig(out_dir / "confusion_matrix.png", dpi=100, bbox_inches="tight")
        written.append(out_dir / "confusion_matrix.png")
    return written
