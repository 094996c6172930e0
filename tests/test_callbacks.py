"""The callbacks: image grids and the latent projector (what TensorBoard shows), and metric curves (sample
accuracy, active units)."""

import io
import json
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from torchvision.utils import make_grid

from cvae_lightning import MNISTDataModule
from cvae_lightning.callbacks.images import (
    GeneratedDigits,
    ImageLogger,
    Interpolation,
    LatentManifold,
    LatentProjector,
)
from cvae_lightning.callbacks.metrics import ActiveUnits, SampleAccuracy, dataset_nll
from cvae_lightning.harness.checkpoints import load_module
from cvae_lightning.harness.loggers import log_image
from cvae_lightning.harness.training import train
from cvae_lightning.model.cvae import gaussian_kl
from tests.helpers import (
    composed,
    mlp_cvae,
    read_events,
    tiny_module,
    tiny_trainer,
)


def test_latent_manifold_decodes_a_grid_of_the_plane_for_one_digit():
    callback = LatentManifold(n=5, digit=3)
    model = mlp_cvae(latent_dim=2)
    images = callback.images(None, model)
    assert images.shape == (25, 1, 28, 28)
    # the corners of the grid differ: z changes across the plane
    assert not torch.allclose(images[0], images[-1])
    assert callback.images(None, mlp_cvae(latent_dim=2, n_labels=0)).shape == (25, 1, 28, 28)


@pytest.mark.parametrize("latent_dim", [2, 3])
def test_latent_manifold_is_skipped_for_other_latent_sizes(latent_dim):
    callback = LatentManifold()
    trainer = mock.MagicMock(sanity_checking=False, global_step=1)
    pl_module = mock.MagicMock(model=mlp_cvae(latent_dim=latent_dim))  # what the callback reads: .model
    with (
        mock.patch("cvae_lightning.callbacks.images.holds_images", return_value=True),
        mock.patch("cvae_lightning.callbacks.images.log_image") as add,
        mock.patch.object(LatentManifold, "images", return_value=torch.zeros(4, 1, 28, 28)) as images,
    ):
        callback.on_validation_epoch_end(trainer, pl_module)
    assert images.call_count == add.call_count == (latent_dim == 2)


@pytest.mark.parametrize("n_labels", [0, 10])
def test_fixed_noise_grids_are_the_same_every_epoch(n_labels):
    """GeneratedDigits and Interpolation decode the same noise at every call: the slider shows learning."""
    model = mlp_cvae(latent_dim=3, n_labels=n_labels).eval()
    for callback in (GeneratedDigits(n_per_digit=4), Interpolation(steps=5)):
        torch.manual_seed(0)
        first = callback.images(None, model)
        torch.manual_seed(1)
        assert torch.equal(callback.images(None, model), first)
        assert len(first) == 10 * callback.nrow
    a, b = model.noise(10, 10, seed=1)
    assert torch.allclose(
        Interpolation(steps=5).images(None, model)[::5], model.sample(labels=torch.arange(10), noise=a)
    )


def test_an_image_logger_is_a_tag_and_a_picture():
    """The public base: a subclass says what to draw from the CVAE (the LightningModule's `model`) and
    whether it applies to it; logging, grids, eval mode and rank zero are the base's."""
    drawn_from = []

    class Blank(ImageLogger):
        tag, nrow = "samples/blank", 2

        def applies(self, model):
            drawn_from.append(model)
            return True

        def images(self, trainer, model):
            drawn_from.append(model)
            assert not model.training
            return torch.ones(4, 1, 28, 28)

    pl_module = tiny_module()
    trainer = mock.MagicMock(sanity_checking=False, global_step=7)
    with (
        mock.patch("cvae_lightning.callbacks.images.holds_images", return_value=True),
        mock.patch("cvae_lightning.callbacks.images.log_image") as add,
    ):
        Blank().on_validation_epoch_end(trainer, pl_module)
    assert drawn_from == [pl_module.model, pl_module.model] and pl_module.training
    (loggers, tag, grid), kwargs = add.call_args
    assert (
        loggers is trainer.loggers
        and tag == "samples/blank"
        and grid.shape == (1, 2 * 28 + 3 * 2, 2 * 28 + 3 * 2)
        and kwargs["step"] == 7
    )


def test_grayscale_images_read_back_as_add_image_shows_them(tmp_path):
    """TensorBoard reads the grayscale PNG summary as it reads add_image's: the same tag, step and size,
    and the same pixels (to within add_image's truncation of x * 255)."""
    grid = make_grid(torch.rand(12, 1, 28, 28), nrow=4, pad_value=1.0)
    logger = TensorBoardLogger(tmp_path, name="", version="")
    log_image([logger], "ours", grid[:1], step=7)
    logger.experiment.add_image("add_image", grid, global_step=7)
    logger.finalize("success")
    _, images = read_events(tmp_path)
    ours, reference = images["ours"][-1], images["add_image"][-1]
    assert ours.step == reference.step == 7
    assert (ours.height, ours.width) == (reference.height, reference.width) == tuple(grid.shape[1:])
    decoded = np.asarray(Image.open(io.BytesIO(ours.encoded_image_string)))
    rgb = np.asarray(Image.open(io.BytesIO(reference.encoded_image_string)))
    assert decoded.ndim == 2 and rgb.shape == (*decoded.shape, 3)
    expected = grid[0].mul(255).round().to(torch.uint8).numpy()
    assert np.array_equal(decoded, expected)
    assert np.abs(decoded.astype(int) - rgb[..., 0]).max() <= 1


def test_a_short_run_logs_the_grids_and_curves(short_run):
    tmp_path = short_run
    scalars, images = read_events(tmp_path)
    for name in ("T1", "mu"):
        assert 0 <= scalars[f"samples/accuracy_{name}"][-1].value <= 1
    assert "samples/accuracy_T0.5" not in scalars  # evaluate.py's, not logged every epoch by default
    assert 0 <= scalars["val/active_units"][-1].value <= 20
    # 8 validation digits, each followed by its decoding as 0-9: 8 rows of 11
    style = images["samples/style_transfer"][-1]
    assert (style.height, style.width) == (8 * 28 + 9 * 2, 11 * 28 + 12 * 2)
    interpolation = images["samples/interpolation"][-1]
    assert (interpolation.height, interpolation.width) == (10 * 28 + 11 * 2, 10 * 28 + 11 * 2)
    # the default callbacks end with the projector's 1000 validation digits (conf/callbacks/images.yaml)
    (embedding,) = _projector_files(tmp_path)
    assert embedding.tensor_name == "latent/mu:00005"
    assert len((tmp_path / embedding.metadata_path).read_text().split()) == 1000


class _Module:
    """Just what the metric callbacks read of the LightningModule: `model`, log, and the train/eval mode
    (ActiveUnits' KL comes with the validation step's outputs)."""

    device = torch.device("cpu")

    def __init__(self, model=None):
        self.model, self.logged, self.training = model, {}, True

    def log(self, name, value, **kwargs):
        self.logged[name] = value

    def eval(self):
        self.training = False

    def train(self, mode=True):
        self.training = mode


def test_active_units_counts_dimensions_above_the_threshold():
    module, callback = _Module(), ActiveUnits(threshold=0.01)
    outputs = {"kl_per_dim": torch.tensor([0.0, 0.005, 0.02, 3.0])}
    callback.on_validation_epoch_start(None, module)
    for _ in range(3):
        callback.on_validation_batch_end(None, module, outputs, (torch.zeros(4, 1), None), 0)
    callback.on_validation_epoch_end(None, module)
    assert module.logged["val/active_units"].item() == 2


def test_kl_per_dim_is_zero_for_dimensions_the_encoder_ignores():
    torch.manual_seed(0)
    model = mlp_cvae(latent_dim=4)
    with torch.no_grad():  # mu = 0 and logvar = 0 (the prior) for latent dimensions 2 and 3
        model.encoder[-1].weight[[2, 3, 6, 7]] = 0
        model.encoder[-1].bias[[2, 3, 6, 7]] = 0
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8)
    terms = model.elbo(x, y)
    kl = terms["kl_per_dim"]
    assert kl[2:].abs().max() < 1e-6 and (kl[:2] > 0).all()
    assert kl.sum().item() == pytest.approx(terms["kl"].item(), rel=1e-6)
    per_image = gaussian_kl(*model.encode(x, y)).sum(1)
    assert kl.sum().item() == pytest.approx(per_image.mean().item(), rel=1e-5)


class _Sampler:
    """Just what SampleAccuracy reads of the CVAE: one whose T=1 threes come out as fours (90% right at T=1),
    drawn in eval mode."""

    latent_dim = 3

    def __init__(self, module):
        self.module, self.drawn = module, {}

    def noise(self, n, seed):
        return torch.randn(n, self.latent_dim, generator=torch.Generator().manual_seed(seed))

    def sample(self, labels, temperature, noise):
        assert len(noise) == len(labels) and not self.module.training
        self.drawn[temperature] = labels.clone()
        drawn = torch.where((labels == 3) & (temperature == 1.0), 4, labels)
        return drawn.float().view(-1, 1, 1, 1).expand(-1, 1, 28, 28)


class _ReadsTheFill:
    """A perfect 'classifier' for _Sampler's images: the digit is the pixel value."""

    def to(self, device):
        return self

    def predict(self, x):
        return x[:, 0, 0, 0].long()


def test_sample_accuracy_without_a_classifier_warns_and_logs_nothing(tmp_path, caplog):
    callback = SampleAccuracy(tmp_path / "missing.ckpt")
    module = SimpleNamespace(hparams={"n_labels": 10}, device="cpu")
    with caplog.at_level("WARNING", logger="cvae_lightning.callbacks.metrics"):
        callback.setup(None, module, "fit")
    assert callback.classifier is None
    assert f"no classifier at {tmp_path / 'missing.ckpt'}: samples/accuracy_* not logged" in caplog.text
    callback.on_validation_epoch_end(SimpleNamespace(sanity_checking=False), module)  # nothing to judge with


def test_sample_accuracy_judges_n_per_digit_samples_and_one_image_per_digit_at_the_prior_mean():
    callback = SampleAccuracy("unused.ckpt", n_per_digit=7, temperatures=(1.0, 0.5, 0.0), misread_per_digit=9)
    callback.classifier = _ReadsTheFill()
    module = _Module()
    module.model = sampler = _Sampler(module)
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, loggers=["logger"], global_step=5)
    with mock.patch("cvae_lightning.callbacks.metrics.log_image") as log_image:
        callback.on_validation_epoch_end(trainer, module)
    assert module.logged == {
        "samples/accuracy_T1": pytest.approx(0.9),
        "samples/accuracy_T0.5": 1.0,
        "samples/accuracy_mu": 1.0,
    }
    assert sampler.drawn[1.0].tolist() == sampler.drawn[0.5].tolist() == sorted(list(range(10)) * 7)
    assert sampler.drawn[0.0].tolist() == list(range(10))  # z = the prior mean: the noise plays no part
    assert module.training
    # the misread T=1 samples: the seven threes (read as fours) in row 3, black cells elsewhere
    (loggers, tag, grid), kwargs = log_image.call_args
    assert (loggers, tag, kwargs, log_image.call_count) == (["logger"], "samples/misread_T1", {"step": 5}, 1)
    cells = grid[0, 2:, 2:].unfold(0, 28, 30).unfold(1, 28, 30)  # (row, column, 28, 28) inside the padding
    assert cells.shape[:2] == (10, 9)
    filled = cells.amax(dim=(2, 3))
    assert filled[3, :7].eq(4).all() and filled[3, 7:].eq(0).all()
    assert filled[torch.arange(10) != 3].eq(0).all()


def _projector_files(log_dir):
    """The embeddings in log_dir's projector_config.pbtxt, as TensorBoard's projector reads them."""
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    config = text_format.Parse((log_dir / "projector_config.pbtxt").read_text(), ProjectorConfig())
    return list(config.embeddings)


@pytest.mark.parametrize("overrides", [["model=vae"], []], ids=["vae", "cvae"])
def test_the_projector_holds_the_encoder_means_of_labelled_validation_digits(tmp_path, data_dir, overrides):
    model = tiny_module(*overrides, latent_dim=3, hidden=16)
    datamodule = MNISTDataModule(data_dir=str(data_dir), batch_size=32, eval_batch_size=20)
    logger = TensorBoardLogger(tmp_path, name="", version="")  # as conf/logger/tensorboard.yaml
    trainer = tiny_trainer(max_steps=2, limit_val_batches=1, logger=logger, callbacks=[LatentProjector(50)])
    trainer.fit(model, datamodule=datamodule)

    (embedding,) = _projector_files(tmp_path)
    assert embedding.tensor_name == "latent/mu:00002" and list(embedding.sprite.single_image_dim) == [28, 28]
    # 50 digits from three validation batches of 20
    x, labels = datamodule.val_images[:50].float() / 255, datamodule.val_labels[:50]
    metadata = (tmp_path / embedding.metadata_path).read_text().split()
    assert metadata == [str(y) for y in labels.tolist()]
    mu = np.loadtxt(tmp_path / embedding.tensor_path, ndmin=2)
    assert mu.shape == (50, 3)
    expected = model.model.encode(x, labels)[0].detach().numpy()
    assert np.allclose(mu[[0, 17, 49]], expected[[0, 17, 49]], atol=1e-5)
    # the sprite: a square of 8 x 8 digits (the projector's layout: 50 rounded up to a square)
    assert Image.open(tmp_path / embedding.sprite.image_path).size == (8 * 28, 8 * 28)


def test_the_projector_is_skipped_without_tensorboard(tmp_path, data_dir):
    datamodule = MNISTDataModule(data_dir=str(data_dir), batch_size=32, eval_batch_size=20)
    trainer = tiny_trainer(
        max_steps=1, limit_val_batches=1, default_root_dir=tmp_path, callbacks=[LatentProjector(5)]
    )
    with mock.patch("cvae_lightning.callbacks.images._validation_batch") as validation_batch:
        trainer.fit(tiny_module(latent_dim=3, hidden=16), datamodule=datamodule)
    validation_batch.assert_not_called()
    assert not list(tmp_path.rglob("projector_config.pbtxt"))


@pytest.mark.slow  # 40 steps of the default model, then three test passes
@pytest.mark.parametrize(
    "target, warmup, tested",
    [
        ("cvae_lightning.callbacks.averaging.EMA", "callbacks.ema.warmup=1", "average"),  # no warmup
        # the negative control: Lightning's own reloads the trained weights for the test after the fit
        ("lightning.pytorch.callbacks.EMAWeightAveraging", "~callbacks.ema.warmup", "trained"),
    ],
)
def test_the_ema_callback_checkpoints_and_tests_the_weights_average(
    target, warmup, tested, tmp_path, data_dir
):
    cfg = composed(
        "callbacks=[checkpointing,ema]",
        f"callbacks.ema._target_={target}",
        warmup,
        "callbacks.ema.decay=0.99",  # far behind the trained weights after 40 steps
        "callbacks.ema.update_every_n_steps=1",
        "+callbacks.test_nll._target_=cvae_lightning.callbacks.metrics.NLLCurve",
        "+callbacks.test_nll.k=2",
        "+callbacks.test_nll.n_images=50",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=20",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        "logger=csv",
        f"paths.output_dir={tmp_path}",
        f"paths.data_dir={data_dir}",
    )
    train(cfg)
    results = json.loads((tmp_path / "results.json").read_text())

    scores = {}
    for weights in ("average", "trained"):  # evaluate.py's weights=
        torch.manual_seed(0)
        trainer = tiny_trainer(limit_test_batches=2)
        best = load_module(results["best_checkpoint"], weights=weights)
        scores[weights] = trainer.test(best, datamodule=instantiate(cfg.data), verbose=False)[0]["test/nelbo"]
    assert abs(scores["average"] - scores["trained"]) > 5
    after_fit = results["metrics"]["test/nelbo"]
    assert after_fit == pytest.approx(scores[tested], abs=1.0)
    # the test-NLL curve's last point: the same weights, from the last checkpoint (its bound is exact again)
    last = load_module(tmp_path / "checkpoints" / "last.ckpt", weights=tested)
    data = instantiate(cfg.data)
    data.setup("test")
    torch.manual_seed(0)
    nll = dataset_nll(last.model.eval(), data.test_dataloader(), k=2, chunk=100, n_images=50)
    curve = json.loads((tmp_path / "test_nll.json").read_text())
    assert curve[-1]["nll"] == pytest.approx(nll, rel=1e-6)


def test_the_weights_average_warms_up_a_short_runs_average_is_of_its_last_steps():
    from torch.optim.swa_utils import AveragedModel

    from cvae_lightning.callbacks.averaging import warmup_ema

    def average_of(seen, warmup):
        weight = torch.nn.Parameter(torch.zeros(()))
        average = AveragedModel(torch.nn.ParameterList([weight]), avg_fn=warmup_ema(0.995, warmup))
        for value in seen:
            weight.data.fill_(value)
            average.update_parameters(torch.nn.ParameterList([weight]))
        return average.module[0].item()

    # a 1-epoch run (43 updates): the weights moved from 0 to 1 over its last 10 updates
    short = [0.0] * 33 + [1.0] * 10
    assert average_of(short, warmup=10) > 0.75
    assert average_of(short, warmup=1) < 0.1  # warmup=1: the plain EMA, still near its first weights
    # a long run: the decay reaches 0.995, the average spans about the last 200 updates
    long = [0.0] * 5000 + [1.0] * 200
    assert average_of(long, warmup=10) == pytest.approx(1 - 0.995**200, rel=1e-3)
