"""On an NVIDIA GPU (`pytest -m gpu`; skipped where none is visible): the maths on the device against the CPU,
a train.py run whose checkpoint loads without a GPU, exact resume, and evaluate.py's scores on the device.
Training speed and the two checks inside a run (data on the device, no host sync per step) are
bench/gpu.py's (`make bench-gpu`)."""

import json
import signal

import pytest
import torch
from PIL import Image

from cvae_lightning.harness.process import float32_matmul_precision
from tests.helpers import (
    SHORT_RUN,
    assert_ran,
    assert_same_state,
    mlp_cvae,
    read_events,
    run_script,
    wait_for_checkpoint,
)
from tests.test_resume import RUN

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible"),
]


@pytest.mark.parametrize("prior", ["standard", "conditional", "flow"])
def test_the_bounds_on_the_gpu_equal_the_cpus(prior):
    torch.manual_seed(0)
    cpu = mlp_cvae(latent_dim=4, hidden_dims=(64,), prior=prior)
    for p in cpu.parameters():  # a prior away from its N(0, I) start, so that it takes part
        p.data.add_(0.1 * torch.randn_like(p))
    gpu = mlp_cvae(latent_dim=4, hidden_dims=(64,), prior=prior).cuda()
    gpu.load_state_dict(cpu.state_dict())
    x, y, eps = torch.rand(32, 1, 28, 28).bernoulli(), torch.arange(32) % 10, torch.randn(50, 32, 4)
    results = []
    # float32 matmuls without TF32, so that the GPU's sums differ from the CPU's only by their order
    with float32_matmul_precision("highest"):
        for model in (cpu, gpu):
            d = model.device
            mu, logvar = model.encode(x.to(d), y.to(d))
            y_hot = model.condition(y.to(d))
            results.append(
                {
                    "log_weights": model.log_weights(x.to(d), y_hot, mu, logvar, eps.to(d)),
                    "prior_log_prob": model.prior_log_prob(mu, y_hot),
                    "images": model.images(mu, y.to(d)),
                }
            )
    for name, value in results[0].items():
        torch.testing.assert_close(results[1][name].cpu(), value, rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("prior", ["standard", "flow"])
def test_the_loss_and_its_gradient_wait_for_nothing_on_the_host(prior):
    """What bench/gpu.py's probe checks inside a run, on the maths alone: a float default once became a
    CUDA tensor in every step, a copy that waits for the device."""
    model = mlp_cvae(latent_dim=4, hidden_dims=(64,), prior=prior).cuda()
    x, y = torch.rand(32, 1, 28, 28, device="cuda"), torch.arange(32, device="cuda") % 10
    torch.cuda.set_sync_debug_mode("error")
    try:
        model.elbo(x, y)["nelbo"].backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_a_run_on_the_gpu_logs_and_its_checkpoint_draws_on_a_cpu(tmp_path, data_dir):
    assert_ran(run_script("train.py", "trainer=gpu", *SHORT_RUN, f"hydra.run.dir={tmp_path}"))
    scalars, images = read_events(tmp_path)
    assert {"val/nelbo", "test/nelbo"} <= set(scalars)
    assert images
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True, map_location="cpu")["global_step"] == 5
    # the checkpoint holds no CUDA tensor a CPU-only machine could not load
    drawn = run_script(
        "generate.py", f"ckpt_path={ckpt}", "digits=[2,0]", "n=3", f"out={tmp_path}/d.png",
        env={"CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip
    assert_ran(drawn)
    assert Image.open(tmp_path / "d.png").size == (3 * 28 + 4 * 2, 2 * 28 + 3 * 2)


def test_a_killed_run_on_the_gpu_resumes_to_the_uninterrupted_one(tmp_path, data_dir):
    """As tests/test_resume.py on the CPU, with cuDNN/cuBLAS deterministic (trainer.deterministic=true)."""
    overrides = ["trainer=gpu", "trainer.deterministic=true", *RUN]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert_ran(run_script("train.py", *overrides, f"hydra.run.dir={whole}"))
    process = run_script("train.py", *overrides, f"hydra.run.dir={killed}", background=True)
    wait_for_checkpoint(killed, "checkpoints/last.ckpt", 6, process, timeout=240)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=120)
    assert_ran(run_script("train.py", *overrides, f"hydra.run.dir={killed}", "ckpt_path=last"))
    expected, ckpt = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for d in (whole, killed))
    assert_same_state(ckpt, expected)


def test_evaluate_scores_on_the_gpu(tiny_checkpoints, tmp_path):
    result = run_script(
        "evaluate.py",
        f"ckpt_path={tiny_checkpoints['cvae']}",
        f"classifier_path={tiny_checkpoints['classifier']}",
        f"out_dir={tmp_path}",
        "trainer.accelerator=gpu",
        "callbacks.log_likelihood.k=5",
        "data.eval_batch_size=50",
        "trainer.limit_test_batches=2",
        "eval.n_per_digit=20",
        "eval.temperatures=[1.0]",
        "eval.cas=true",
        "eval.cas_epochs=1",
    )
    assert_ran(result)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test_images"] == 100 and metrics["k"] == 5
    assert 0 <= metrics["accuracy"]["T=1"]["overall"] <= 1
    assert metrics["cas"]["epochs"] == 1 and 0 <= metrics["cas"]["overall"] <= 1
