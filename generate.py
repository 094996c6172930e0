"""Draw digits from a trained CVAE into a PNG grid.

python generate.py ckpt_path=CKPT digits=[2,0,2,6] n=8 out=digits.png    # a row per digit
python generate.py ckpt_path=CKPT style_from=[0,1,2] out=style.png        # same handwriting, digits 0-9
python generate.py ckpt_path=CKPT interpolate=z digits=[3,5] n=10         # z from one draw to another
python generate.py ckpt_path=CKPT interpolate=digits digits=[1,7] n=10    # label 1 -> 7 at a fixed z
"""

import os
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, ListConfig
from torchvision.utils import save_image

from cvae_lightning.errors import ConfigError, check, check_int, check_number, one_line_errors, refuse
from cvae_lightning.evaluation import generation
from cvae_lightning.harness import checkpoints
from cvae_lightning.model.data import NUM_CLASSES, MNISTDataModule

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    one_line_errors(generate)(cfg)


def generate(cfg: DictConfig) -> None:
    check_int("n", cfg.n, 1)
    check_number("temperature", cfg.temperature)
    check_int("seed", cfg.seed)
    check("interpolate", cfg.interpolate, cfg.interpolate in (None, "z", "digits"), "one of null, z, digits")
    digits = integers("digits", cfg.digits, NUM_CLASSES)
    model = checkpoints.load_checkpoint(cfg.ckpt_path)
    if not model.n_labels and (cfg.style_from is not None or cfg.interpolate == "digits"):
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} is a VAE: style_from and interpolate=digits need a CVAE"
        )
    check(
        "out", cfg.out, str(cfg.out).lower().endswith((".png", ".jpg", ".jpeg")), "a .png or .jpg file name"
    )
    torch.manual_seed(cfg.seed)
    if cfg.style_from is not None:
        datamodule = MNISTDataModule(data_dir=cfg.paths.data_dir)
        datamodule.prepare_data()
        datamodule.setup("test")
        index = torch.tensor(integers("style_from", cfg.style_from, len(datamodule.test_images)))
        x = datamodule.test_images[index].float() / 255.0
        images, nrow = generation.style_transfer(model, x, datamodule.test_labels[index]), NUM_CLASSES + 1
    elif cfg.interpolate == "digits":
        check("digits", cfg.digits, len(digits) >= 2, "2 or more digits with interpolate=digits, e.g. [1,7]")
        images = generation.label_interpolation(model, digits, cfg.n, rows=4, temperature=cfg.temperature)
        nrow = cfg.n * (len(digits) - 1)
    elif cfg.interpolate == "z":
        images, nrow = generation.latent_interpolation(model, digits, cfg.n, cfg.temperature), cfg.n
    else:  # a row per digit (a VAE draws as many unconditional samples)
        images, nrow = generation.digit_grid(model, digits, cfg.n, cfg.temperature), cfg.n

    out = Path(cfg.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(images.cpu(), out, nrow=nrow, padding=2, pad_value=1.0)
    except OSError as error:
        raise ConfigError(
            f"out={out} is not allowed: it cannot be written ({error.strerror or error})"
        ) from None
    print(f"wrote {out} ({len(images)} images, {nrow} per row)")


def integers(key: str, value, high: int) -> list[int]:
    """A list of integers in 0..high-1 (a single integer is a list of one)."""
    values = list(value) if isinstance(value, ListConfig | list | tuple) else [value]
    if not values or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < high for v in values
    ):
        raise refuse(key, value, f"integers in 0..{high - 1}, e.g. [2,0,2,6]")
    return values


if __name__ == "__main__":
    main()
