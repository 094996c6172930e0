import shutil

import pytest
import torch

from cvae_lightning.data import (
    RAW_SHA256,
    DataError,
    InMemoryLoader,
    MNISTDataModule,
    load_split,
    raw_dir,
    verify_raw_files,
    write_raw_from_offline_copy,
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist")
    write_raw_from_offline_copy(out)
    return out


def test_offline_conversion_reproduces_mnist(converted):
    verify_raw_files(converted)  # byte-identical to the published raw files
    train_x, train_y = load_split(converted, train=True)
    test_x, test_y = load_split(converted, train=False)
    assert train_x.shape == (60000, 1, 28, 28) and test_x.shape == (10000, 1, 28, 28)
    assert train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test_y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert train_x.dtype == torch.uint8 and int(train_x.max()) == 255


def test_torchvision_reads_the_same_files(converted):
    from torchvision.datasets import MNIST

    dataset = MNIST(converted, train=False, download=False)
    images, labels = load_split(converted, train=False)
    assert torch.equal(dataset.data, images.squeeze(1)) and torch.equal(dataset.targets, labels)


@pytest.mark.parametrize("damage", ["flip_byte", "truncate"])
def test_corrupt_file_is_refused_with_a_fix(converted, tmp_path, damage):
    shutil.copytree(raw_dir(converted), raw_dir(tmp_path))
    path = raw_dir(tmp_path) / "train-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    if damage == "flip_byte":
        data[100] ^= 0xFF
    path.write_bytes(data if damage == "flip_byte" else data[:-10])
    with pytest.raises(DataError) as error:
        MNISTDataModule(data_dir=str(tmp_path)).prepare_data()
    message = str(error.value)
    assert message.startswith(f"MNIST file corrupt (SHA-256 mismatch): {path}; delete it and run again")
    assert "\n" not in message


def test_missing_file_is_named(converted, tmp_path):
    shutil.copytree(raw_dir(converted), raw_dir(tmp_path))
    (raw_dir(tmp_path) / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(
        DataError, match="MNIST file missing: .*t10k-images-idx3-ubyte; run with data.download=true"
    ):
        verify_raw_files(tmp_path)


def test_prepare_data_writes_missing_files(tmp_path):
    MNISTDataModule(data_dir=str(tmp_path)).prepare_data()
    assert sorted(p.name for p in raw_dir(tmp_path).iterdir()) == sorted(RAW_SHA256)


def test_split_is_seeded_and_disjoint(data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), val_size=5000, split_seed=1)
    dm.setup("fit")
    assert len(dm.train_images) == 55000 and len(dm.val_images) == 5000
    again = MNISTDataModule(data_dir=str(data_dir), val_size=5000, split_seed=1)
    again.setup("fit")
    assert torch.equal(dm.val_images, again.val_images)
    other = MNISTDataModule(data_dir=str(data_dir), val_size=5000, split_seed=2)
    other.setup("fit")
    assert not torch.equal(dm.val_images, other.val_images)
    # the two parts together are the whole training set: no image lost or duplicated
    all_train, _ = load_split(data_dir, train=True)
    key = lambda x: x.flatten(1).long().sum(1).sort().values  # noqa: E731
    assert torch.equal(key(torch.cat([dm.train_images, dm.val_images])), key(all_train))


def test_batches_are_images_in_unit_range_with_one_hot_labels(data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), batch_size=64)
    dm.setup("fit")
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) == 1.0
    assert y.shape == (64, 10) and torch.equal(y.sum(1), torch.ones(64))
    assert torch.equal(y.argmax(1), dm.val_labels[:64])


def test_loader_yields_every_image_once_per_epoch_shuffled_by_seed():
    n = 1000
    images = torch.arange(n).float().view(n, 1, 1, 1)  # pixel value = image id (the loader divides by 255)
    labels = torch.arange(n) % 10

    def epoch_order(loader):
        return torch.cat([x.flatten() * 255 for x, _ in loader]).round().long()

    loader = InMemoryLoader(images, labels, batch_size=64, shuffle=True, seed=7)
    first, second = epoch_order(loader), epoch_order(loader)
    assert sorted(first.tolist()) == list(range(n)) and sorted(second.tolist()) == list(range(n))
    assert not torch.equal(first, second)  # a new shuffle each epoch
    assert torch.equal(epoch_order(InMemoryLoader(images, labels, 64, shuffle=True, seed=7)), first)
    assert not torch.equal(epoch_order(InMemoryLoader(images, labels, 64, shuffle=True, seed=8)), first)
    assert len(loader) == 16  # 15 full batches and a last partial one
    unshuffled = epoch_order(InMemoryLoader(images, labels, 64))
    assert unshuffled.tolist() == list(range(n))
