"""How good a trained (C)VAE is: conditional accuracy, classifier-FID, CAS, and evaluate.py's report."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_confusion_matrix
from torchmetrics.image.fid import FrechetInceptionDistance

from cvae_lightning.errors import ConfigError, check_bool, check_int
from cvae_lightning.evaluation.classifier import Classifier, ClassifierFeatures
from cvae_lightning.evaluation.generation import draw, repeat_digits
from cvae_lightning.harness import files
from cvae_lightning.model.cvae import CVAE
from cvae_lightning.model.data import NUM_CLASSES, InMemoryLoader

# images per classifier pass: small enough that its activations reuse heap memory instead of fresh mmaps
CLASSIFIER_BATCH = 128
# the recipe of `train.py experiment=classifier` (conf/experiment/classifier.yaml, conf/data/mnist.yaml)
CAS_EPOCHS, CAS_BATCH = 4, 128
CAS_TRAINER = {"devices": 1, "limit_val_batches": 0} | dict.fromkeys(
    ("logger", "enable_checkpointing", "enable_model_summary"), False
)
# metrics.md's first rows, by their key in metrics["test"]
_TEST_ROWS = (("nelbo", "-ELBO (nats/image)"), ("recon", "reconstruction term"), ("kl", "KL term"))
_TEST_KEYS = ("nelbo", "recon", "kl", "nll")
CAS_NOT_DEFINED = "a VAE cannot be asked for a digit, so its samples have no labels to train a classifier on"


@torch.no_grad()
def read_digits(classifier: Classifier, images: Tensor, batch_size: int | None = CLASSIFIER_BATCH) -> Tensor:
    """The digit the classifier reads in each image, on the CPU, `batch_size` images a pass (None: one)."""
    chunks = images.split(batch_size) if batch_size else [images]
    return torch.cat([classifier.predict(x).cpu() for x in chunks])


def conditional_accuracy(read: Tensor, requested: Tensor) -> dict[str, object]:
    """How often the classifier read the requested digit: overall, per digit, confusion (rows: requested)."""
    return {
        "overall": multiclass_accuracy(read, requested, NUM_CLASSES, average="micro").item(),
        "per_digit": multiclass_accuracy(read, requested, NUM_CLASSES, average="none").tolist(),
        "confusion": multiclass_confusion_matrix(read, requested, NUM_CLASSES).tolist(),
    }


@torch.no_grad()
def classifier_fid(classifier: Classifier, real: Tensor, fake: Tensor, batch_size=CLASSIFIER_BATCH) -> float:
    """Frechet distance between real and generated images in the classifier's penultimate features."""
    fid = FrechetInceptionDistance(feature=ClassifierFeatures(classifier), normalize=True)
    fid.to(classifier.device)
    for images, is_real in ((real, True), (fake, False)):
        for x in images.split(batch_size):
            fid.update(x.to(classifier.device), real=is_real)
    return fid.compute().item()


def _test_accuracy(classifier: Classifier, images: Tensor, labels: Tensor) -> dict[str, object]:
    accuracy = conditional_accuracy(read_digits(classifier, images), labels)
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
    """The Classification Accuracy Score (Ravuri & Vinyals 2019): a classifier like `real_classifier` trained
    only on T=1 samples (`train_counts[d]` of digit d) to its last epoch (choosing one by real digits would
    let real data in), tested on the real test images; `real_data`: the real one's accuracy there."""
    if not model.n_labels:
        raise ConfigError(f"CAS is not defined for a VAE: {CAS_NOT_DEFINED}")
    started = time.perf_counter()
    labels = repeat_digits(train_counts)
    # its own seed, leaving the caller's random state as it was (evaluate's other metrics do not move)
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)
        # 8-bit pixels like MNIST's own: the loader shuffles them every epoch and, with binarize, draws them
        pixels = draw(model, labels, temperature=1.0).mul(255).round().to(torch.uint8)
        loader = InMemoryLoader(pixels, labels, batch_size, shuffle=True, seed=seed, binarize=binarize)
        classifier = Classifier(**(real_classifier.hparams if real_classifier is not None else {}))
        trainer = L.Trainer(accelerator=model.device.type, max_epochs=epochs, **CAS_TRAINER)
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
    """Conditional accuracy (CVAE), classifier-FID at each temperature; `cas`: CAS at train_labels' counts."""
    check_bool("eval.cas", cas)
    check_int("eval.cas_epochs", cas_epochs, 1)
    torch.manual_seed(seed)
    metrics: dict = {}
    if cas and not model.n_labels:
        metrics["cas"] = {"skipped": f"not defined for a VAE: {CAS_NOT_DEFINED}"}
    elif cas:
        counts = torch.bincount(train_labels, minlength=NUM_CLASSES).tolist()
        metrics["cas"] = classification_accuracy_score(
            model, test_images, test_labels, counts, classifier, cas_epochs, binarize=binarize, seed=seed
        )
    real = test_images.float().div(255.0)
    labels = repeat_digits(n_per_digit)
    metrics["accuracy"], metrics["fid"] = {}, {}
    for temperature in temperatures:
        key = f"T={temperature:g}"
        fake = draw(model, labels, temperature)
        metrics["fid"][key] = {"overall": classifier_fid(classifier, real, fake)}
        if not model.n_labels:
            continue
        metrics["accuracy"][key] = conditional_accuracy(read_digits(classifier, fake), labels)
        if temperature == temperatures[0]:  # per digit at the first temperature only (FID is slow)
            metrics["fid"][key]["per_digit"] = [
                classifier_fid(classifier, real[test_labels == d], fake[labels == d])
                for d in range(NUM_CLASSES)
            ]
    return metrics


def _row(name: str, values: Sequence, fmt: str = "{:.1f}", scale: float = 100) -> str:
    return f"| {name} | " + " | ".join(fmt.format(scale * v) for v in values) + " |"


def markdown(metrics: dict, title: str = "") -> str:
    """metrics.md: the headline numbers, then per-digit accuracy, FID and CAS."""
    test, k, cas = metrics["test"], metrics["k"], metrics.get("cas", {})
    accuracy, fid = metrics.get("accuracy", {}).items(), metrics.get("fid", {}).items()
    lines = [f"# {title}".rstrip(), ""] if title else []
    lines += [f"{metrics['model']}, {metrics['test_images']} test images, k = {k}", "", "| metric | value |"]
    lines += ["|---|---|", *(_row(f"test {name}", [test[key]], "{:.2f}", 1) for key, name in _TEST_ROWS)]
    if "nll" in test:
        what = "-log p(x given y)" if metrics["model"] == "CVAE" else "-log p(x)"
        lines.append(_row(f"test NLL {what}, IWAE k={k}", [test["nll"]], "{:.2f}", 1))
    # the metrics of callbacks added to the test pass
    lines += [_row(f"test {name}", [v], "{:.4g}", 1) for name, v in test.items() if name not in _TEST_KEYS]
    lines += [_row(f"conditional accuracy {key}", [acc["overall"]], "{:.2f}%") for key, acc in accuracy]
    lines += [_row(f"classifier-FID {key}", [f["overall"]], "{:.3f}", 1) for key, f in fid]
    if "skipped" in cas:
        lines.append(f"| CAS | skipped: {cas['skipped']} |")
    elif cas:
        trained = f"{cas['train_images']} generated digits, epochs={cas['epochs']}"
        lines.append(_row(f"CAS (classifier trained on {trained})", [cas["overall"]], "{:.2f}%"))
        if "real_data" in cas:
            real = [cas["real_data"]["overall"]]
            lines.append(_row("CAS baseline: the classifier trained on real digits", real, "{:.2f}%"))
    rows = [_row(f"accuracy {key}", acc["per_digit"]) for key, acc in accuracy]
    rows += [_row(f"FID {key}", f["per_digit"], "{:.2f}", 1) for key, f in fid if "per_digit" in f]
    rows += [_row("CAS", cas["per_digit"])] if "per_digit" in cas else []
    rows += [_row("CAS baseline", cas["real_data"]["per_digit"])] if "real_data" in cas else []
    if rows:
        lines += ["", _row("per digit", range(NUM_CLASSES), "{}", 1), "|---|" + "---|" * NUM_CLASSES, *rows]
    return "\n".join(lines) + "\n"


def write_report(metrics: dict, out_dir: str | Path, title: str = "") -> list[Path]:
    """metrics.json, metrics.md and (CVAE) confusion_matrix.png in out_dir; returns the paths written."""
    out_dir = Path(out_dir)  # made by the first write, which refuses in one line where it cannot
    written = [out_dir / "metrics.json", out_dir / "metrics.md"]
    files.write_text(written[0], json.dumps(metrics, indent=2) + "\n")
    files.write_text(written[1], markdown(metrics, title))
    if metrics.get("accuracy"):  # the first temperature's confusion matrix
        import matplotlib

        matplotlib.use("Agg")
        key, accuracy = next(iter(metrics["accuracy"].items()))
        fig, ax = MulticlassConfusionMatrix(NUM_CLASSES).plot(torch.tensor(accuracy["confusion"]))
        ax.set_title(f"requested digit (rows) vs classified, {key}")
        fig.savefig(out_dir / "confusion_matrix.png", dpi=100, bbox_inches="tight")
        written.append(out_dir / "confusion_matrix.png")
    return written
