"""A trained model outside Python: ONNX graphs of its sampler (the prior folded in) and its encoder, a JSON of
what a client needs, each graph checked against PyTorch with onnxruntime; and the web page (web/) that runs
them in a browser with onnxruntime-web, assembled into one static folder."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from cvae_lightning.errors import ConfigError
from cvae_lightning.harness import files
from cvae_lightning.model.cvae import CVAE
from cvae_lightning.model.data import IMAGE_SHAPE, NUM_CLASSES

OPSET = 18
# what the page needs of onnxruntime-web (the WebAssembly build): copied from web/node_modules
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
WEB = Path(__file__).resolve().parents[2] / "web"


class _Graph(nn.Module):
    """A part of `model` to export; digits become one-hot rows by indexing an identity matrix (a Gather)."""

    def __init__(self, model: CVAE):
        super().__init__()
        self.model = model
        self.register_buffer("one_hot", torch.eye(max(model.n_labels, 1)))


class Sampler(_Graph):
    """(digit, noise, temperature) -> images in [0, 1]: z = `model.from_noise` (mu_y + temperature *
    sigma_y * noise for a Gaussian prior), decoded; `model.sample` as one graph."""

    def forward(self, digit: Tensor, noise: Tensor, temperature: Tensor) -> Tensor:
        return self.images(self.one_hot[digit], noise, temperature)

    def images(self, y: Tensor | None, noise: Tensor, temperature: Tensor) -> Tensor:
        return torch.sigmoid(self.model.decode(self.model.from_noise(noise, y, temperature), y))


class UnconditionalSampler(Sampler):
    """The VAE's: (noise, temperature) -> images."""

    def forward(self, noise: Tensor, temperature: Tensor) -> Tensor:
        return self.images(None, noise, temperature)


class Encoder(_Graph):
    """(image, digit) -> (mean of Q(z|x,y), style): the style is the mean's place within the prior p(z|y),
    `model.to_noise` ((mu - mu_y) / sigma_y for a Gaussian prior), which the sampler at temperature 1
    decodes as any other digit in the same handwriting (generation.style_transfer)."""

    def forward(self, image: Tensor, digit: Tensor) -> tuple[Tensor, Tensor]:
        return self.mean_and_style(image, self.one_hot[digit])

    def mean_and_style(self, image: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        mean = self.model.encode(image, y)[0]
        return mean, self.model.to_noise(mean, y)


class UnconditionalEncoder(Encoder):
    """The VAE's: image -> (mean, style = mean: its prior is N(0, I))."""

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        return self.mean_and_style(image, None)


def example_inputs(model: CVAE, n: int = 20, seed: int = 0) -> dict[str, dict[str, Tensor]]:
    """Inputs for each graph, by name: what the export traces and what the check runs on."""
    generator = torch.Generator().manual_seed(seed)
    digit = torch.arange(n) % NUM_CLASSES
    sampler = {
        "digit": digit,
        "noise": torch.randn(n, model.latent_dim, generator=generator),
        "temperature": torch.tensor(0.8),
    }
    encoder = {"image": torch.rand(n, *IMAGE_SHAPE, generator=generator), "digit": digit}
    if not model.n_labels:
        del sampler["digit"], encoder["digit"]
    return {"sampler": sampler, "encoder": encoder}


def export_onnx(model: CVAE, out_dir: Path) -> dict[str, float]:
    """sampler.onnx and encoder.onnx in `out_dir`, any batch size; returns each graph's largest absolute
    difference from PyTorch on the same inputs (onnxruntime, CPU)."""
    import onnxruntime

    for name in ("onnx_ir", "onnxscript"):  # their optimizer's every pass at INFO, into the user's log
        logging.getLogger(name).setLevel(logging.WARNING)
    model = model.float().eval().cpu()
    inputs = example_inputs(model)
    conditional = bool(model.n_labels)
    graphs = {
        "sampler": ((Sampler if conditional else UnconditionalSampler)(model), ["images"]),
        "encoder": ((Encoder if conditional else UnconditionalEncoder)(model), ["mean", "style"]),
    }
    differences = {}
    for name, (module, outputs) in graphs.items():
        args = inputs[name]
        batch = torch.export.Dim("batch", min=1)
        shapes = tuple({0: batch} if value.dim() else None for value in args.values())
        path = out_dir / f"{name}.onnx"
        module.eval()
        with warnings.catch_warnings():  # the exporter's notes on how it named the batch axis
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                tuple(args.values()),
                str(path),
                input_names=list(args),
                output_names=outputs,
                dynamic_shapes=shapes,
                opset_version=OPSET,
                external_data=False,
                dynamo=True,
                verbose=False,
            )
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {key: value.numpy() for key, value in args.items()})
        with torch.no_grad():
            expected = module(*args.values())
        expected = expected if isinstance(expected, tuple) else (expected,)
        differences[name] = max(
            (torch.from_numpy(g) - e).abs().max().item() for g, e in zip(got, expected, strict=True)
        )
    return differences


def accuracy_t1(model: CVAE, ckpt_path: Path, classifier_path: Path, n_per_digit: int = 100) -> dict:
    """How often the project's classifier reads the requested digit at T=1: evaluate.py's figure when it
    wrote one beside the checkpoint (1,000 samples a digit), else measured here on `n_per_digit` a digit."""
    evaluated = _json(ckpt_path.parent / "metrics.json").get("accuracy", {}).get("T=1")
    if evaluated:
        return {"value": evaluated["overall"], "samples": 10 * 1000, "by": "evaluate.py"}
    if not model.n_labels or not classifier_path.is_file():
        return {"value": None, "samples": 0, "by": "not measured: a VAE, or no checkpoints/classifier.ckpt"}
    from cvae_lightning.evaluation import scores
    from cvae_lightning.harness import checkpoints

    torch.manual_seed(0)
    images = scores.generate_per_digit(model, n_per_digit, temperature=1.0)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(n_per_digit)
    overall = scores.conditional_accuracy(checkpoints.load_classifier(classifier_path), images, labels)
    return {"value": overall["overall"], "samples": len(images), "by": "export.py"}


def model_card(model: CVAE, ckpt_path: Path, differences: dict[str, float], accuracy: dict) -> dict:
    """What a client needs: shapes, inputs, the model's measured numbers and where it came from."""
    results = _json(ckpt_path.parent.parent / "results.json").get("metrics", {})
    return {
        "model": "CVAE" if model.n_labels else "VAE",
        "conditional": bool(model.n_labels),
        "latent_dim": model.latent_dim,
        "labels": list(range(model.n_labels)),
        "image_shape": list(IMAGE_SHAPE),
        "graphs": {
            "sampler": {
                "file": "sampler.onnx",
                "inputs": ["digit", "noise", "temperature"] if model.n_labels else ["noise", "temperature"],
                "outputs": ["images"],
            },
            "encoder": {
                "file": "encoder.onnx",
                "inputs": ["image", "digit"] if model.n_labels else ["image"],
                "outputs": ["mean", "style"],
            },
        },
        "metrics": {"test_nelbo": results.get("test/nelbo"), "accuracy_t1": accuracy},
        "checkpoint": str(ckpt_path),
        "max_abs_difference_vs_pytorch": differences,
    }


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def assemble_page(site: Path) -> None:
    """index.html, app.js and onnxruntime-web (`ort/`) into `site`, beside the model in `site/model/`."""
    ort = WEB / "node_modules" / "onnxruntime-web" / "dist"
    missing = [name for name in ORT_FILES if not (ort / name).is_file()]
    if missing:
        raise ConfigError(
            f"page=true is not allowed yet: {ort / missing[0]} is missing; "
            "run `make web` (npm ci in web/) first"
        )
    (site / "ort").mkdir(parents=True, exist_ok=True)
    for name in ORT_FILES:
        shutil.copyfile(ort / name, site / "ort" / name)
    for name in ("index.html", "app.js", "style.css"):
        shutil.copyfile(WEB / name, site / name)


def export(ckpt_path: Path, out: Path, classifier_path: Path, page: bool = False) -> dict:
    """The checkpoint's model as `out/model/{sampler,encoder}.onnx` and `model.json` (checked against
    PyTorch), and with `page` the web page around it: `out` is then a static site."""
    from cvae_lightning.harness import checkpoints

    ckpt_path = Path(ckpt_path)
    model = checkpoints.load_checkpoint(ckpt_path)
    if page:  # first: a missing npm install is found before the export's seconds
        assemble_page(out)
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    differences = export_onnx(model, model_dir)
    card = model_card(model, ckpt_path, differences, accuracy_t1(model, ckpt_path, Path(classifier_path)))
    files.write_text(model_dir / "model.json", json.dumps(card, indent=2) + "\n")
    return card
