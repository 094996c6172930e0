"""Draw digits from a trained CVAE into a PNG grid.

python generate.py ckpt_path=CKPT digits=[2,0,2,6] n=8 out=digits.png    # a row per digit
python generate.py ckpt_path=CKPT style_from=[0,1,2] out=style.png        # same handwriting, digits 0-9
python generate.py ckpt_path=CKPT interpolate=z digits=[3,5] n=10         # z from one draw to another
python generate.py ckpt_path=CKPT interpolate=digits digits=[1,7] n=10    # label 1 -> 7 at a fixed z
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
INTERPOLATE = ("z", "digits")


def _ints(value, key: str, low: int, high: int) -> list[int]:
    values = list(value) if isinstance(value, ListConfig | list | tuple) else [value]
    if not values or not all(
        isinstance(v, int) and not isinstance(v, bool) and low <= v < high for v in values
    ):
        raise ValueError(
            f"{key}={value} is not allowed: expected integers in {low}..{high - 1}, e.g. [2,0,2,6]"
        )
    return values


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    import torch
    from torchvision.utils import save_image

    from cvae_lightning import generation
    from cvae_lightning.data import NUM_CLASSES, DataError, MNISTDataModule
    from cvae_lightning.evaluation import CheckpointKindError, load_generative_model

    try:
        if not cfg.ckpt_path:
            raise ValueError(
                "ckpt_path is required, e.g. ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt"
            )
        if not (isinstance(cfg.n, int) and cfg.n >= 1):
            raise ValueError(f"n={cfg.n} is not allowed: expected an integer >= 1")
        if cfg.interpolate not in (None, *INTERPOLATE):
            raise ValueError(f"interpolate={cfg.interpolate} is not allowed: expected one of null, z, digits")
        digits = _ints(cfg.digits, "digits", 0, NUM_CLASSES)
        model = load_generative_model(cfg.ckpt_path)
        if not model.n_classes and (cfg.style_from is not None or cfg.interpolate == "digits"):
            raise CheckpointKindError(
                f"ckpt_path={cfg.ckpt_path} is a VAE: style_from and digits need a CVAE"
            )
        torch.manual_seed(cfg.seed)
        if cfg.style_from is not None:
            datamodule = MNISTDataModule(data_dir=cfg.paths.data_dir)
            datamodule.prepare_data()
            datamodule.setup("test")
            index = torch.tensor(_ints(cfg.style_from, "style_from", 0, len(datamodule.test_images)))
            x = datamodule.test_images[index].float() / 255.0
            images, nrow = (
                generation.style_transfer(model, x, model.one_hot(datamodule.test_labels[index])),
                11,
            )
        elif cfg.interpolate == "digits":
            if len(digits) < 2:
                raise ValueError(
                    f"digits={cfg.digits} is not allowed with interpolate=digits: expected 2 or more"
                )
            images = generation.label_interpolation(model, digits, cfg.n, rows=4, temperature=cfg.temperature)
            nrow = cfg.n * (len(digits) - 1)
        elif cfg.interpolate == "z":
            images, nrow = generation.latent_interpolation(model, digits, cfg.n, cfg.temperature), cfg.n
        elif model.n_classes:
            images, nrow = generation.digit_grid(model, digits, cfg.n, cfg.temperature), cfg.n
        else:
            images, nrow = model.sample(cfg.n * cfg.n, temperature=cfg.temperature), cfg.n
    except (ValueError, FileNotFoundError, DataError) as error:
        raise SystemExit(f"error: {error}") from None

    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.cpu(), out, nrow=nrow, padding=2, pad_value=1.0)
    print(f"wrote {out} ({len(images)} images, {nrow} per row)")


if __name__ == "__main__":
    main()
