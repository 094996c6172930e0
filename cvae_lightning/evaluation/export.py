"""A trained model outside Python: ONNX graphs of its sampler and encoder, checked against PyTorch, a JSON of
what a client needs, and the web page (web/) that runs them with onnxruntime-web, as one static folder."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from cvae_lightning.errors import ConfigError
from cvae_lightning.evaluation import scores
from cvae_lightning.evaluation.generation import draw, repeat_digits
from cvae_lightning.harness import checkpoints, files
from cvae_lightning.model.cvae import CVAE
from cvae_lightning.model.data import IMAGE_SHAPE, NUM_CLASSES

# what the page needs of onnxruntime-web (the WebAssembly build): copied from web/node_modules
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
WEB = Path(__file__).resolve().parents[2] / "web"  # the repository's web/, beside the package
OUTPUTS = {"sampler": ["images"], "encoder": ["mean", "style"]}
EXPORT_OPTIONS = {"opset_version": 18, "external_data": False, "dynamo": True, "verbose": False}


class _Graph(nn.Module):
    """A part of `model` to export; digits become one-hot rows by indexing an identity matrix (a Gather)."""

    def __init__(self, model: CVAE):
        super().__init__()
        self.model = model
        self.register_buffer("one_hot", torch.eye(max(model.n_labels, 1)))

    def condition(self, digit: tuple[Tensor, ...]) -> Tensor | None:
        return self.one_hot[digit[0]] if digit else None  # a VAE's graphs take no digit


class Sampler(_Graph):
    """(digit, noise, temperature) -> images in [0, 1]: `model.sample` as one graph."""

    def forward(self, *inputs: Tensor) -> Tensor:
        *digit, noise, temperature = inputs
        y = self.condition(digit)
        return torch.sigmoid(self.model.decode(self.model.from_noise(noise, y, temperature), y))


class Encoder(_Graph):
    """(image, digit) -> (mean of Q(z|x,y), style = `model.to_noise(mean)`, which the sampler takes)."""

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        image, *digit = inputs
        y = self.condition(digit)
        mean = self.model.encode(image, y)[0]
        return mean, self.model.to_noise(mean, y)


def example_inputs(model: CVAE, n: int = 20, seed: int = 0) -> dict[str, dict[str, Tensor]]:
    """Inputs for each graph, by name: what the export traces and what the check runs on."""
    generator = torch.Generator().manual_seed(seed)
    digit = {"digit": torch.arange(n) % NUM_CLASSES} if model.n_labels else {}
    noise = torch.randn(n, model.latent_dim, generator=generator)
    image = torch.rand(n, *IMAGE_SHAPE, generator=generator)
    return {
        "sampler": digit | {"noise": noise, "temperature": torch.tensor(0.8)},
        "encoder": {"image": image} | digit,
    }


def export_onnx(model: CVAE, out_dir: Path) -> dict[str, float]:
    """sampler.onnx and encoder.onnx in `out_dir`; returns each graph's largest difference from PyTorch."""
    import onnxruntime

    for name in ("onnx_ir", "onnxscript"):  # their optimizer's every pass at INFO, into the user's log
        logging.getLogger(name).setLevel(logging.WARNING)
    model = model.float().eval().cpu()
    inputs = example_inputs(model)
    graphs = {"sampler": Sampler(model).eval(), "encoder": Encoder(model).eval()}
    batch = torch.export.Dim("batch", min=1)
    differences = {}
    for name, module in graphs.items():
        args = inputs[name]
        shapes = tuple({0: batch} if value.dim() else None for value in args.values())
        path = out_dir / f"{name}.onnx"
        with warnings.catch_warnings():  # the exporter's notes on how it named the batch axis
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                tuple(args.values()),
                str(path),
                input_names=list(args),
                output_names=OUTPUTS[name],
                dynamic_shapes=(shapes,),  # one entry: forward's *inputs
                **EXPORT_OPTIONS,
            )
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {key: value.numpy() for key, value in args.items()})
        with torch.no_grad():
            expected = module(*args.values())
        expected = expected if isinstance(expected, tuple) else (expected,)
        pairs = zip(got, expected, strict=True)
        differences[name] = max((torch.from_numpy(g) - e).abs().max().item() for g, e in pairs)
    return differences


def accuracy_t1(model: CVAE, ckpt_path: Path, classifier_path: Path, n_per_digit: int = 100) -> dict:
    """Conditional accuracy at T=1: evaluate.py's beside the checkpoint, else measured on `n_per_digit`."""
    evaluated = _json(ckpt_path.parent / "metrics.json").get("accuracy", {}).get("T=1")
    if evaluated:
        return {"value": evaluated["overall"], "samples": 10 * 1000, "by": "evaluate.py"}
    classifier_path = Path(checkpoints.shipped(classifier_path, ("classifier",)))
    if not model.n_labels or not classifier_path.is_file():
        return {"value": None, "samples": 0, "by": "not measured: a VAE, or no classifier"}
    torch.manual_seed(0)
    labels = repeat_digits(n_per_digit)
    images = draw(model, labels, temperature=1.0)
    read = scores.read_digits(checkpoints.load_classifier(classifier_path), images)
    value = scores.conditional_accuracy(read, labels)["overall"]
    return {"value": value, "samples": len(labels), "by": "export.py"}


def model_card(model: CVAE, ckpt_path: Path, differences: dict[str, float], accuracy: dict) -> dict:
    """What a client needs: shapes, inputs, the model's measured numbers and where it came from."""
    results = _json(ckpt_path.parent.parent / "results.json").get("metrics", {})
    evaluated = _json(ckpt_path.parent / "metrics.json").get("test", {})  # the shipped model's
    return {
        "model": "CVAE" if model.n_labels else "VAE",
        "conditional": bool(model.n_labels),
        "latent_dim": model.latent_dim,
        "labels": list(range(model.n_labels)),
        "image_shape": list(IMAGE_SHAPE),
        "graphs": {
            name: {"file": f"{name}.onnx", "inputs": list(inputs), "outputs": OUTPUTS[name]}
            for name, inputs in example_inputs(model).items()
        },
        "metrics": {"test_nelbo": results.get("test/nelbo", evaluated.get("nelbo")), "accuracy_t1": accuracy},
        # its name and hash, not where it lies on this machine: the folder is sent to others, or served
        "checkpoint": {"file": ckpt_path.name, "sha256": hashlib.sha256(ckpt_path.read_bytes()).hexdigest()},
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
        fix = "run `make web` (npm ci in web/) first"
        raise ConfigError(f"page=true is not allowed yet: {ort / missing[0]} is missing; {fix}")
    (site / "ort").mkdir(parents=True, exist_ok=True)
    for name in ORT_FILES:
        shutil.copyfile(ort / name, site / "ort" / name)
    for name in ("index.html", "app.js", "style.css"):
        shutil.copyfile(WEB / name, site / name)


def export(ckpt_path: str | Path | None, out: Path, classifier_path: Path, page: bool = False) -> dict:
    """`out/model/{sampler,encoder}.onnx` and `model.json`, with `page` the web page around them."""
    model = checkpoints.load_checkpoint(ckpt_path)  # first: it refuses a missing or wrong ckpt_path
    ckpt_path = Path(checkpoints.shipped(ckpt_path, ("cvae",)))
    if page:  # first: a missing npm install is found before the export's seconds
        assemble_page(out)
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    differences = export_onnx(model, model_dir)
    card = model_card(model, ckpt_path, differences, accuracy_t1(model, ckpt_path, Path(classifier_path)))
    files.write_text(model_dir / "model.json", json.dumps(card, indent=2) + "\n")
    return card
