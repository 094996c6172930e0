"""bench/gpu.py (`make bench-gpu`) without a GPU: the runs it plans, the probe inside them, the results file.
(The non-finite loss check that a GPU reads only when Lightning logs or an epoch ends is tested in
tests/test_reliability.py.)"""

import json
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from bench.gpu import (
    SYNC_WARNING,
    GpuProbe,
    command,
    main,
    plan,
    run,
    summarize,
    violations,
    write_results,
)
from cvae_lightning.callbacks.averaging import EMA
from cvae_lightning.model.cvae import CVAE
from cvae_lightning.model.data import MNISTDataModule
from cvae_lightning.model.nets import MLPDecoder, MLPEncoder
from cvae_lightning.model.priors import ConditionalPrior
from tests.helpers import composed, tiny_trainer


def test_it_plans_three_modes_on_one_gpu_and_ddp_over_every_gpu_from_two(tmp_path):
    one, four = plan(1, 3), plan(4, 3)
    assert [r["mode"] for r in one] == ["eager fp32", "bf16-mixed", "compiled", "ddp"]
    assert one[-1] == {"mode": "ddp", "skipped": "1 GPU visible; DDP needs 2 or more"}
    assert four[:3] == one[:3] and four[-1]["mode"] == "ddp x4"
    expected = {
        "eager fp32": ("gpu", 1, "32-true", False),
        "bf16-mixed": ("gpu", 1, "bf16-mixed", False),
        "compiled": ("gpu", 1, "32-true", True),
        "ddp x4": ("gpu", 4, "32-true", False),
    }
    for r in four:
        # the command as it runs, probe included, composes to what its mode says
        cfg = composed(*command(r["args"], tmp_path)[2:])
        t = cfg.trainer
        assert (t.accelerator, t.devices, t.precision, cfg.compile) == expected[r["mode"]], r["mode"]
        assert t.max_epochs == 3 and not cfg.test
        assert cfg.callbacks.gpu_probe._target_ == "bench.gpu.GpuProbe"
    assert composed(*plan(4, 3)[-1]["args"]).trainer.strategy == "ddp"
    assert "data.batch_size=512" in plan(1, 10, "data.batch_size=512")[0]["args"]


def test_dry_run_prints_the_commands_and_runs_nothing(capsys):
    main(["--dry-run", "--gpus", "2", "--epochs", "5"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("eager fp32: python train.py trainer=gpu trainer.precision=32-true ")
    assert lines[-1].startswith("ddp x2: python train.py trainer=ddp trainer.devices=2 trainer.max_epochs=5 ")


def test_without_a_gpu_it_stops_with_one_line(monkeypatch):
    import bench.gpu

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # as with CUDA_VISIBLE_DEVICES=""
    with pytest.raises(SystemExit) as stopped:
        bench.gpu.main([])
    assert str(stopped.value.code).startswith("error: no CUDA GPU visible; bench/gpu.py needs one")


def fake_run(**changes) -> dict:
    record = {
        "command": "python train.py trainer=gpu ...",
        "process_s": 30.0,
        "epochs": [10.0, 2.0, 2.5],
        "steps": [9.0, 1.0, 1.25],
        "images": [1000, 1000, 1000],
        "world_size": 1,
        "device_name": "NVIDIA Test",
        "cuda": "12.8",
        "data": {"model": "cuda:0", "train images": "cuda:0", "train labels": "cuda:0"},
        "checked_steps": [5, 6, 7],
        "skipped_steps": {"9": "the progress bar redraws"},
        "syncs": [],
    }
    return summarize({**record, **changes})


def test_images_per_second_leave_out_the_first_epoch_and_count_every_rank():
    run = fake_run()
    assert run["images_per_s"] == pytest.approx((500 + 400) / 2)  # the median of epochs 2 and 3
    assert run["steps_images_per_s"] == pytest.approx((1000 + 800) / 2)
    assert fake_run(world_size=2)["images_per_s"] == pytest.approx(900)
    assert fake_run(epochs=[4.0], steps=[2.0], images=[1000])["images_per_s"] == pytest.approx(250)
    assert run["data_on_device"] and run["no_host_sync"]


def test_a_failed_run_or_a_broken_check_is_reported():
    assert violations([fake_run(), {"mode": "ddp", "skipped": "1 GPU visible"}]) == []
    broken = [
        {"mode": "a", **fake_run(data={"model": "cuda:0", "train images": "cpu"})},
        {"mode": "b", **fake_run(syncs=["step 6: models.py:240"])},
        {"mode": "c", **fake_run(checked_steps=[])},
        {"mode": "d", "command": "python train.py", "process_s": 1.0, "error": "error: out of memory"},
    ]
    found = violations(broken)
    assert len(found) == 4
    assert found[0].startswith("a: data not on the model's device")
    assert found[1] == "b: host syncs in training steps (step 6: models.py:240)"
    assert found[2] == "c: no training step was checked for host syncs"
    assert found[3] == "d failed (error: out of memory)"


def test_results_file_holds_every_run_its_command_and_the_checks(tmp_path):
    runs = [
        {"mode": "eager fp32", **fake_run()},
        {"mode": "compiled", **fake_run(syncs=["step 6: models.py:240"])},
        {"mode": "ddp", "skipped": "1 GPU visible; DDP needs 2 or more"},
    ]
    results = {
        "date": "2026-12-02 10:00 UTC",
        "commit": "abc1234",
        "command": "python bench/gpu.py",
        "gpu": "NVIDIA Test",
        "gpus": 1,
        "torch": "2.9.0",
        "cuda": "12.8",
        "lightning": "2.6.0",
        "python": "3.11.7",
        "machine": "16 cores, Test CPU",
        "load_before": "0.10/0.20/0.30",
        "load_after": "1.10/0.40/0.35",
        "runs": runs,
    }
    write_results(results, tmp_path / "gpu_results.md")
    text = (tmp_path / "gpu_results.md").read_text()
    for expected in (
        "2026-12-02 10:00 UTC; commit: abc1234",
        "GPU: NVIDIA Test x 1; torch 2.9.0 (CUDA 12.8)",
        "host: 16 cores, Test CPU; load average before 0.10/0.20/0.30, after 1.10/0.40/0.35",
        "| eager fp32 | 450 | 900 | 10.00, 2.00, 2.50 | 30.0 | yes | none in 3 steps |",
        "| compiled | 450 | 900 | 10.00, 2.00, 2.50 | 30.0 | yes | step 6: models.py:240 |",
        "| ddp | skipped: 1 GPU visible; DDP needs 2 or more |",
        "training steps 5, 6, 7 ran under",
        "9 (the progress bar redraws)",
        "- eager fp32: `python train.py trainer=gpu ...`",
    ):
        assert expected in text, expected
    assert json.loads((tmp_path / "gpu_results.json").read_text()) == results


def test_one_command_runs_every_mode_writes_the_results_and_fails_on_a_broken_check(
    tmp_path, monkeypatch, capsys
):
    import bench.gpu

    def fake_train(args, run_dir):  # what `run` returns for a train.py that synced in compiled mode
        record = {k: v for k, v in fake_run().items() if k not in ("images_per_s", "steps_images_per_s")}
        return {**record, "syncs": ["step 6: models.py:240"] if "compile=true" in args else []}

    monkeypatch.setattr(bench.gpu.torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(bench.gpu, "run", fake_train)
    monkeypatch.setattr(bench.gpu, "RESULTS", tmp_path / "gpu_results.md")
    with pytest.raises(SystemExit, match=r"^error: compiled: host syncs in training steps \(step 6: models"):
        main(["--epochs", "2"])
    results = json.loads((tmp_path / "gpu_results.json").read_text())
    assert [r["mode"] for r in results["runs"]] == ["eager fp32", "bf16-mixed", "compiled", "ddp"]
    assert results["command"] == "python bench/gpu.py --epochs 2" and results["gpu"] == "NVIDIA Test"
    assert results["commit"] and results["runs"][0]["images_per_s"] == pytest.approx(450)
    assert results["machine"] == bench.gpu.machine.machine() and results["load_after"].count("/") == 2
    assert "| compiled | 450 |" in (tmp_path / "gpu_results.md").read_text()
    assert "ddp: skipped, 1 GPU visible" in capsys.readouterr().out


class SyncsAt(L.LightningModule):
    """A small CVAE that emits torch's warning for a host sync at the given steps, as CUDA's sync debug mode
    would."""

    def __init__(self, sync_at=()):
        super().__init__()
        self.model = CVAE(MLPEncoder(4, 10, [32]), MLPDecoder(4, 10, [32]), 4, prior=ConditionalPrior(4, 10))
        self.sync_at = set(sync_at)

    def training_step(self, batch, batch_idx):
        if self.global_step in self.sync_at:
            warnings.warn(SYNC_WARNING, stacklevel=1)
        terms = self.model.elbo(*batch)
        return terms["recon"] + terms["kl"]

    def validation_step(self, batch, batch_idx):
        return self.model.elbo(*batch)["nelbo"]

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def datamodule(data_dir):
    return MNISTDataModule(data_dir=str(data_dir), batch_size=16, eval_batch_size=64)


def test_the_probe_times_epochs_and_checks_the_steps_that_read_nothing_back(tmp_path, data_dir):
    probe = GpuProbe(str(tmp_path / "probe.json"), check_steps=(1, 8))
    trainer = tiny_trainer(
        max_epochs=2,
        limit_train_batches=5,
        limit_val_batches=1,
        log_every_n_steps=3,
        enable_progress_bar=True,
        callbacks=[TQDMProgressBar(refresh_rate=4), EMA(decay=0.9, update_every_n_steps=7), probe],
    )
    with pytest.warns(UserWarning, match=SYNC_WARNING):  # step 5's, outside what is checked, is not kept
        trainer.fit(SyncsAt(sync_at=(5, 6)), datamodule(data_dir))
    record = json.loads((tmp_path / "probe.json").read_text())
    assert len(record["epochs"]) == len(record["steps"]) == 2 and record["images"] == [80, 80]
    assert all(0 < s < e for s, e in zip(record["steps"], record["epochs"], strict=True))
    assert set(record["data"].values()) == {"cpu"} and len(record["data"]) == 5
    # steps 2, 5 log (log_every_n_steps=3); batch 4 of each epoch redraws the bar; 4 ends epoch 0; the
    # average updates after steps 0 and 7
    assert record["checked_steps"] == [1, 6]
    assert record["skipped_steps"] == {
        "2": "Lightning logs",
        "3": "the progress bar redraws",
        "4": "the epoch's last step",
        "5": "Lightning logs",
        "7": "the weights average updates",
    }
    assert record["syncs"] == [
        f"step 6: test_gpu_bench.py:{SyncsAt.training_step.__code__.co_firstlineno + 2}"
    ]
    assert violations([{"mode": "cpu", **summarize(record)}]) == [
        f"cpu: host syncs in training steps ({record['syncs'][0]})"
    ]


@pytest.mark.slow
def test_the_probe_inside_train_py(tmp_path, data_dir, monkeypatch):
    # the command bench/gpu.py runs, on a CPU and short: the Hydra override finds the probe
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = ["trainer=cpu" if a == "trainer=gpu" else a for a in plan(1, 1)[0]["args"]]
    record = summarize(run([*args, "trainer.limit_train_batches=8", "trainer.limit_val_batches=1"], tmp_path))
    assert "error" not in record, record["error"]
    assert record["command"].startswith("python train.py trainer=cpu trainer.precision=32-true")
    assert record["data_on_device"] and record["data"]["model"] == "cpu"
    assert record["checked_steps"] == [5, 6] and record["no_host_sync"]
    assert len(record["epochs"]) == 1 and record["images"] == [8 * 128] and record["images_per_s"] > 0
