"""Export a trained CVAE/VAE to ONNX: `python export.py ckpt_path=CKPT out=DIR [page=true]`.

Writes DIR/model/sampler.onnx ((digit, noise, temperature) -> images, the prior folded in), encoder.onnx
((image, digit) -> latent mean and style) and model.json, after checking each graph against PyTorch with
onnxruntime on the same inputs. With page=true DIR is also the "pick a digit" web page (`make demo`).
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cvae_lightning.errors import ConfigError, check_bool, check_number, one_line_errors
from cvae_lightning.evaluation.export import export

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    one_line_errors(run)(cfg)


def run(cfg: DictConfig) -> dict:
    check_bool("page", cfg.page)
    check_number("tolerance", cfg.tolerance)
    out = Path(cfg.out)
    card = export(cfg.ckpt_path, out, Path(cfg.classifier_path), page=cfg.page)
    for name, difference in card["max_abs_difference_vs_pytorch"].items():
        size = (out / "model" / f"{name}.onnx").stat().st_size
        print(f"{name}.onnx: {size / 1e6:.1f} MB, largest difference from PyTorch {difference:.1e}")
        if difference > cfg.tolerance:
            raise ConfigError(
                f"tolerance={cfg.tolerance} is not allowed for this model: {name}.onnx differs from PyTorch "
                f"by {difference:.1e} on the same inputs"
            )
    print(f"wrote {out / 'model'}" + (f" and the page: {out / 'index.html'}" if cfg.page else ""))
    return card


if __name__ == "__main__":
    main()
