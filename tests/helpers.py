"""What the tests share: the composed config, a script run in this process (run_entry, entry_error) or as a
process where the process is the point (run_script), one short run, one tiny trainer, the TensorBoard reader,
and probes that report on a train.py process from inside it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]

# a run of a few steps: enough to write every file and log every tag
SHORT_RUN = (
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=5",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
)


def composed(*overrides: str, return_hydra_config: bool = False, config: str = "train"):
    """The `config` (conf/<config>.yaml) as `python train.py OVERRIDES` composes it (not validated, nothing
    built)."""
    from hydra import compose, initialize_config_dir

    import cvae_lightning.harness.runs  # noqa: F401  (registers the resolvers of conf/hydra)
    import cvae_lightning.harness.slurm  # noqa: F401

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(config, overrides=list(overrides), return_hydra_config=return_hydra_config)


# each script's config and task function, as its @hydra.main runs it
ENTRIES = {
    "train.py": ("train", "cvae_lightning.harness.training", "train"),
    "evaluate.py": ("eval", "evaluate.py", "evaluate"),
    "generate.py": ("generate", "generate.py", "generate"),
    "export.py": ("export", "export.py", "run"),
}


@contextmanager
def hydra_job(*overrides: str, output_dir=None, config: str = "train"):
    """The config a script's task function gets from `python SCRIPT OVERRIDES`, inside the run context Hydra
    gives it (HydraConfig: `${hydra:runtime.output_dir}`, the run's overrides) and after conf/hydra's
    callbacks, as Hydra calls them: what a run writes of Hydra's own (.hydra/, <task>.log) needs a process.
    The run folder is `output_dir`, else the config's hydra.run.dir; it is made, as Hydra makes it."""
    import copy

    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from omegaconf import open_dict, read_write

    cfg = composed(*overrides, return_hydra_config=True, config=config)
    with read_write(cfg), open_dict(cfg):
        if output_dir is not None:
            cfg.hydra.run.dir = str(output_dir)
        cfg.hydra.runtime.output_dir = str(Path(cfg.hydra.run.dir).absolute())
    callbacks = [instantiate(c) for c in (cfg.hydra.callbacks or {}).values()]
    for callback in callbacks:
        callback.on_run_start(config=cfg)
    Path(cfg.hydra.runtime.output_dir).mkdir(parents=True, exist_ok=True)
    HydraConfig.instance().set_config(cfg)
    try:
        for callback in callbacks:
            callback.on_job_start(config=cfg, task_function=None)
        task = copy.deepcopy(cfg)
        with read_write(task), open_dict(task):
            del task["hydra"]
        yield task
    finally:
        HydraConfig.instance().cfg = None


def run_entry(script: str, *overrides: str, output_dir=None):
    """`python SCRIPT OVERRIDES` in this process: what its task function returns; a project error exits as
    the script does, SystemExit("error: <message>")."""
    import importlib
    import importlib.util

    from cvae_lightning.errors import one_line_errors

    config, module_name, function = ENTRIES[script]
    if script == "train.py":
        from cvae_lightning.harness.config import check_group_choices

        one_line_errors(check_group_choices)(list(overrides), ROOT / "conf")
    if module_name.endswith(".py"):  # the script itself, by path: its name may be another package's
        spec = importlib.util.spec_from_file_location(f"script_{module_name[:-3]}", ROOT / module_name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    with hydra_job(*overrides, output_dir=output_dir, config=config) as cfg:
        return one_line_errors(getattr(module, function))(cfg)


def entry_error(script: str, *overrides: str, output_dir=None) -> str:
    """The one line `python SCRIPT OVERRIDES` ends with on a project error, from a run in this process."""
    import pytest

    with pytest.raises(SystemExit) as stopped:
        run_entry(script, *overrides, output_dir=output_dir)
    line = str(stopped.value.code)
    assert line.startswith("error: ") and "\n" not in line, line
    return line


def tiny_module(*overrides: str, latent_dim: int = 2, hidden: int = 32):
    """The LightningModule `python train.py model.latent_dim=... OVERRIDES` builds (MLPs of one hidden layer
    of `hidden` units unless the overrides say otherwise), seeded; `.model` is its CVAE."""
    from hydra.utils import instantiate

    torch.manual_seed(0)
    sizes = (
        f"model.latent_dim={latent_dim}",
        f"model.encoder.hidden_dims=[{hidden}]",
        f"model.decoder.hidden_dims=[{hidden}]",
    )
    return instantiate(composed(*sizes, *overrides).model)


def mlp_cvae(latent_dim: int = 3, hidden_dims=(16,), n_labels: int = 10, prior: str = "standard"):
    """A bare `cvae_lightning.model.cvae.CVAE` with MLP networks (no Lightning, no config)."""
    from cvae_lightning.model import priors
    from cvae_lightning.model.cvae import CVAE
    from cvae_lightning.model.nets import MLPDecoder, MLPEncoder

    encoder = MLPEncoder(latent_dim, n_labels, list(hidden_dims))
    decoder = MLPDecoder(latent_dim, n_labels, list(reversed(hidden_dims)))
    prior_net = getattr(priors, f"{prior.capitalize()}Prior")(latent_dim, n_labels)  # prior: standard, ...
    return CVAE(encoder, decoder, latent_dim, n_labels, prior_net)


def run_script(script: str, *args: str, timeout: float = 600, env: dict | None = None, background=False):
    """`python SCRIPT ARGS` from the project root as a user runs it, with one torch thread so that parallel
    runs don't thrash; a finished CompletedProcess, or with `background` a running Popen."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", **(env or {})}
    # a W&B run made in this process leaves its service's address here: a script would join that service,
    # which outlives a killed script and keeps its run id in use, instead of starting its own as a user's does
    env.pop("WANDB_SERVICE", None)
    command = [sys.executable, str(ROOT / script), *args]
    if background:
        return subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def assert_ran(result: subprocess.CompletedProcess) -> None:
    """Exit status 0; else the first error in stderr (another DDP rank's, say) and its end."""
    first = result.stderr.find("Traceback")
    shown = result.stderr[first : first + 3000] + "\n...\n" if first >= 0 else ""
    assert result.returncode == 0, shown + result.stderr[-3000:]


def assert_one_line_error(result: subprocess.CompletedProcess, expected: str) -> None:
    """A non-zero exit whose last line is `error: ...` holding `expected`, and no traceback."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, result.stderr[-3000:]


def tiny_trainer(**kwargs) -> L.Trainer:
    """A CPU Trainer with nothing around the loop: no logger, checkpoints, progress bar or summary."""
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**defaults, **kwargs})


def read_events(log_dir: Path):
    """(scalars, images) tag -> events of the one TensorBoard run in log_dir.

    Lightning closes the writer after fit, so `trainer.test` appends another event file to the same
    folder; TensorBoard reads a folder's files as one run, and so does this.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(Path(log_dir).rglob("events.out.tfevents.*"))
    assert files and {f.parent for f in files} == {Path(log_dir)}, files  # no version_N or other sub-runs
    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    return (
        {t: acc.Scalars(t) for t in tags["scalars"]},
        {t: acc.Images(t) for t in tags["images"]},
    )


def denormals_flushed_per_thread(n: int = 1 << 20) -> list[float]:
    """The fraction of denormal products flushed to zero in each half of one parallel op: with two threads,
    one half is the calling thread's, the other its OpenMP worker's (the setting is per thread)."""
    tiny = torch.full((n,), 713, dtype=torch.int32).view(torch.float32)  # a denormal, made without arithmetic
    flushed = (tiny * 1.0).view(torch.int32) == 0
    return [half.float().mean().item() for half in flushed.chunk(2)]


class SettingsProbe(L.Callback):
    """Writes the process-wide settings `train()` makes to `path` as JSON when fitting starts:
    `python train.py +callbacks.probe._target_=tests.helpers.SettingsProbe +callbacks.probe.path=...`"""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_fit_start(self, trainer, pl_module):
        settings = {
            "denormals_flushed": denormals_flushed_per_thread(),
            "matmul_precision": torch.get_float32_matmul_precision(),
            "nvml_cuda_check": os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK"),
            "cuda_available": torch.cuda.is_available(),
        }
        self.path.write_text(json.dumps(settings))


def read_hparams(log_dir: Path) -> dict:
    """The HPARAMS tab's row of the run in log_dir: hyperparameter -> value (asserting that the run writes no
    experiment summary, which would fix TensorBoard's columns in alphabetical order)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    assert metadata.EXPERIMENT_TAG not in content
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    return {
        name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
        for name, value in start.hparams.items()
    }


def sweep_summary(sweep_dir: Path) -> list[dict]:
    """The rows of a sweep's summary.csv (runs.SweepSummary), one per job."""
    import csv

    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


def assert_same_state(a: dict, b: dict) -> None:
    """Two checkpoints at the same step, with bit-identical weights and Adam moments."""
    assert a["global_step"] == b["global_step"]
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    moments_a, moments_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for i in moments_a:
        assert torch.equal(moments_a[i]["exp_avg"], moments_b[i]["exp_avg"]), i


def wait_for_checkpoint(folder: Path, pattern: str, step: int, process, timeout: float = 300) -> None:
    """Returns once a checkpoint `folder/pattern` (a glob) holds a step >= `step`, while `process` runs."""
    import time

    end = time.time() + timeout
    while time.time() < end and process.poll() is None:
        for path in folder.glob(pattern):
            try:
                if torch.load(path, weights_only=True)["global_step"] >= step:
                    return
            except Exception:  # mid-rename: try again
                pass
        time.sleep(0.02)
    raise AssertionError("the run ended, or never got there, before it could be interrupted")


def read_wandb_run(run_file: Path) -> list:
    """The records (wandb_internal_pb2.Record) of an offline W&B run's `run-<id>.wandb`: a 7-byte header, then
    LevelDB's log format (32 KiB blocks of chunks, each a CRC, a length, a type: 1 whole, 2 first, 3 middle,
    4 last). wandb no longer ships a Python reader of its own files."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = Path(run_file).read_bytes()
    assert data[:4] == b":W&B", run_file
    records, chunks, position, block = [], [], 7, 32768
    while position + 7 <= len(data):
        left_in_block = block - position % block
        if left_in_block < 7:  # a block's tail too short for a chunk header is padding
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunks.append(data[position + 7 : position + 7 + length])
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
        elif kind == 0:  # zeroed space after the last record
            break
    return records


def wandb_history(run_file: Path) -> list[dict]:
    """The rows an offline W&B run logged (its history records), each key -> decoded JSON value."""
    rows = []
    for record in read_wandb_run(run_file):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
            )
    return rows


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str, server: subprocess.Popen, timeout: float = 120, request_timeout: float = 10) -> dict:
    """GET url as JSON from a local server (mlflow ui, optuna-dashboard), retrying while it starts."""
    end = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=request_timeout) as response:
                return json.load(response)
        except OSError:
            if server.poll() is not None or time.time() > end:
                raise AssertionError(f"no answer from {url}: {server.stderr.read()[-3000:]}") from None
            time.sleep(0.2)
