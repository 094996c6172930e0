import shutil

import numpy as np
import pytest
import torch

from cvae_lightning.errors import DataError
from cvae_lightning.model.data import (
    RAW_SHA256,
    InMemoryLoader,
    MNISTDataModule,
    _idx_bytes,
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


def test_load_split_returns_the_files_images_and_labels_in_order(tmp_path):
    rng = np.random.default_rng(0)
    written = {}
    raw_dir(tmp_path).mkdir(parents=True)
    for prefix, n in (("train", 7), ("t10k", 3)):
        written[prefix] = rng.integers(0, 256, (n, 28, 28), np.uint8), rng.integers(0, 10, n, np.uint8)
        for kind, array in zip(("images-idx3", "labels-idx1"), written[prefix], strict=True):
            (raw_dir(tmp_path) / f"{prefix}-{kind}-ubyte").write_bytes(_idx_bytes(array))
    for train, prefix in ((True, "train"), (False, "t10k")):
        images, labels = load_split(tmp_path, train=train)
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64  # torch.equal ignores dtypes
        assert torch.equal(images, torch.from_numpy(written[prefix][0]).unsqueeze(1))
        assert torch.equal(labels, torch.from_numpy(written[prefix][1]).long())


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


def test_missing_file_is_named_in_one_line(converted, tmp_path):
    shutil.copytree(raw_dir(converted), raw_dir(tmp_path))
    missing = raw_dir(tmp_path) / "t10k-images-idx3-ubyte"
    missing.unlink()
    for read in (verify_raw_files, lambda d: load_split(d, train=True)):
        with pytest.raises(DataError) as error:
            read(tmp_path)
        message = str(error.value)
        assert message.startswith(f"MNIST file missing: {missing}; run with data.download=true")
        assert "\n" not in message


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


def test_batches_are_images_in_unit_range_with_integer_labels(data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), batch_size=32, eval_batch_size=64)
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))[0].shape == (32, 1, 28, 28)
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) == 1.0
    assert y.shape == (64,) and y.dtype == torch.int64
    assert torch.equal(y, dm.val_labels[:64])


def _ids(batches) -> torch.Tensor:
    return torch.cat([x.flatten() * 255 for x, _ in batches]).round().long()


N = 1000
IMAGES = torch.arange(N).float().view(N, 1, 1, 1)  # pixel value = image id (the loader divides by 255)
LABELS = torch.arange(N) % 10


def test_loader_yields_every_image_once_per_epoch_shuffled_by_seed():
    def epoch_order(loader, epoch):
        loader.sampler.set_epoch(epoch)  # as Lightning's fit loop does at every epoch start
        return _ids(loader)

    loader = InMemoryLoader(IMAGES, LABELS, batch_size=64, shuffle=True, seed=7)
    first, second = epoch_order(loader, 0), epoch_order(loader, 1)
    assert sorted(first.tolist()) == list(range(N)) and sorted(second.tolist()) == list(range(N))
    assert not torch.equal(first, second)  # a new shuffle each epoch
    assert torch.equal(epoch_order(InMemoryLoader(IMAGES, LABELS, 64, shuffle=True, seed=7), 0), first)
    assert not torch.equal(epoch_order(InMemoryLoader(IMAGES, LABELS, 64, shuffle=True, seed=8), 0), first)
    assert len(loader) == 16  # 15 full batches and a last partial one
    assert _ids(InMemoryLoader(IMAGES, LABELS, 64)).tolist() == list(range(N))


def test_ranks_read_disjoint_shards_that_cover_the_data():
    shards = [
        _ids(InMemoryLoader(IMAGES, LABELS, 64, shuffle=True, seed=3, rank=r, world_size=2)) for r in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == N // 2
    assert sorted(torch.cat(shards).tolist()) == list(range(N))


def test_loader_state_resumes_mid_epoch_at_the_next_batch():
    loader = InMemoryLoader(IMAGES, LABELS, 64, shuffle=True, seed=7)
    loader.sampler.set_epoch(3)
    full = _ids(loader)
    it = iter(loader)
    seen = _ids([next(it) for _ in range(5)])
    state = loader.state_dict()
    assert state == {"epoch": 3, "batches_done": 5}

    resumed = InMemoryLoader(IMAGES, LABELS, 64, shuffle=True, seed=7)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(3)
    assert torch.equal(torch.cat([seen, _ids(resumed)]), full)
    # the saved position applies to its own epoch only
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(4)
    assert len(_ids(resumed)) == N


def test_dynamic_binarization_samples_bernoulli_pixels():
    images = torch.full((500, 1, 28, 28), 64, dtype=torch.uint8)  # p = 64/255
    x, _ = next(iter(InMemoryLoader(images, LABELS[:500], 500, binarize=True)))
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert abs(x.mean().item() - 64 / 255) < 0.01


@pytest.mark.parametrize("path", ["/proc/no/such/dir", "/etc/hostname"])
def test_a_data_dir_that_cannot_be_written_is_refused_in_one_line(path):
    with pytest.raises(DataError) as error:
        MNISTDataModule(data_dir=path).prepare_data()
    message = str(error.value)
    assert message.startswith(f"data.data_dir={path} is not allowed: MNIST cannot be written there (")
    assert message.endswith("expected a folder this user can write") and "\n" not in message


def test_val_size_zero_trains_on_all_60k_and_has_no_validation_batches(data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), val_size=0)
    dm.setup()
    assert len(dm.train_images) == 60_000 and dm.val_dataloader() == []
