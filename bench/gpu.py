"""Training speed on NVIDIA GPUs, in one command: `make bench-gpu` (bench/README.md says what it measures).

    python bench/gpu.py                       # 3 epochs per mode
    python bench/gpu.py --epochs 10 data.batch_size=512   # longer runs; train.py overrides for every run
    python bench/gpu.py --dry-run [--gpus 4]  # print the train.py commands, run nothing (no GPU needed)

One `python train.py trainer=gpu ... test=false` process per mode (eager fp32, bf16-mixed, compiled, DDP over
every visible GPU when there are 2 or more), timed from outside and from inside by `GpuProbe`, which also
checks that the data sit on the model's device and that training steps force no host sync. Writes
bench/gpu_results.md and .json; exits 1 with one line if a run fails or a check does not hold.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/gpu.py` puts bench/ on the path, not the project root
    sys.path.insert(0, str(ROOT))

from bench import machine  # noqa: E402
from cvae_lightning.harness import compat  # noqa: E402  (after the path: the project need not be pip-installed)

RESULTS = ROOT / "bench" / "gpu_results.md"
SYNC_WARNING = "called a synchronizing CUDA operation"  # torch's text under set_sync_debug_mode("warn")
MODES = {
    "eager fp32": ("trainer.precision=32-true",),
    "bf16-mixed": ("trainer.precision=bf16-mixed",),
    "compiled": ("compile=true",),
}


# -- inside each run ---------------------------------------------------------------------------------
class GpuProbe(L.Callback):
    """Epoch times and the two checks of a `train.py` run, written to `path` as JSON on rank 0 when training
    ends: seconds per epoch (`epochs`) and up to its validation (`steps`), images per epoch, each loader's
    device (`data`) and the host syncs seen in the global steps `check_steps`."""

    def __init__(self, path: str, check_steps: tuple[int, int] = (5, 25)):
        self.path, self.check_steps = Path(path), range(*check_steps)
        self.starts, self.ends, self.val_starts, self.images = [], [], [], []
        self.data, self.checked, self.skipped, self.syncs = {}, [], {}, []
        self._watch = None

    def _now(self, pl_module) -> float:
        if pl_module.device.type == "cuda":  # the work queued so far belongs to the time before now
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_start(self, trainer, pl_module):
        self.data = {"model": str(pl_module.device)}
        for stage, loader in (("train", trainer.train_dataloader), ("val", trainer.val_dataloaders)):
            if not loader:  # no validation set (data.val_size=0)
                continue
            for name in ("images", "labels"):
                tensor = getattr(loader, name, None)
                self.data[f"{stage} {name}"] = str(tensor.device) if tensor is not None else "not in memory"

    def on_train_epoch_start(self, trainer, pl_module):
        if self.starts:
            self.ends.append(self._now(pl_module))
        self.starts.append(self._now(pl_module))
        self.images.append(0)

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking and len(self.val_starts) < len(self.starts):
            self.val_starts.append(self._now(pl_module))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        if step not in self.check_steps:
            return
        reason = reads_back(trainer, batch_idx)
        if reason:
            self.skipped[step] = reason
            return
        self.checked.append(step)
        self._step, self._watch = step, warnings.catch_warnings(record=True)
        self._caught = self._watch.__enter__()
        warnings.simplefilter("always")  # every sync, not only the first from each line
        if pl_module.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.images[-1] += len(batch[0])
        if self._watch is not None:
            self._stop_watching(pl_module)

    def _stop_watching(self, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
        self._watch.__exit__(None, None, None)
        self._watch = None
        for caught in self._caught:
            if SYNC_WARNING in str(caught.message):
                self.syncs.append(f"step {self._step}: {Path(caught.filename).name}:{caught.lineno}")
            else:  # not ours to swallow
                warnings.showwarning(caught.message, caught.category, caught.filename, caught.lineno)

    def on_exception(self, trainer, pl_module, exception):
        if self._watch is not None:
            self._stop_watching(pl_module)

    def on_train_end(self, trainer, pl_module):
        self.ends.append(self._now(pl_module))
        if not trainer.is_global_zero:
            return
        cuda = pl_module.device.type == "cuda"
        record = {
            "epochs": [end - start for start, end in zip(self.starts, self.ends, strict=True)],
            "steps": [val - start for start, val in zip(self.starts, self.val_starts, strict=False)],
            "images": self.images,
            "world_size": trainer.world_size,
            "precision": str(trainer.precision),
            "device_name": torch.cuda.get_device_name(pl_module.device) if cuda else "cpu",
            "cuda": torch.version.cuda,
            "data": self.data,
            "checked_steps": self.checked,
            "skipped_steps": self.skipped,
            "syncs": self.syncs,
        }
        self.path.write_text(json.dumps(record, indent=1))


def reads_back(trainer: L.Trainer, batch_idx: int) -> str | None:
    """Why a training step reads a value back from the device by design, or None: Lightning's logging and
    progress bar, the weights average's count (torch's AveragedModel), an epoch's non-finite loss check."""
    if compat.logs_this_step(trainer):
        return "Lightning logs"
    # WeightAveraging updates after the optimizer step, with step_idx = the global step before it
    averaging = (cb for cb in trainer.callbacks if isinstance(cb, WeightAveraging))
    if any(cb.should_update(step_idx=trainer.global_step) for cb in averaging):
        return "the weights average updates"
    if batch_idx + 1 >= trainer.num_training_batches:
        return "the epoch's last step"
    rate = getattr(trainer.progress_bar_callback, "refresh_rate", 0)  # 0: no progress bar
    if rate and (batch_idx + 1) % rate == 0:
        return "the progress bar redraws"
    return None


# -- the runs ----------------------------------------------------------------------------------------
def plan(gpus: int, epochs: int, *overrides: str) -> list[dict]:
    """The runs for `gpus` visible GPUs: {"mode", "args"} (train.py's overrides), or {"mode", "skipped"}."""
    common = (f"trainer.max_epochs={epochs}", "test=false", *overrides)
    runs = [{"mode": mode, "args": ["trainer=gpu", *args, *common]} for mode, args in MODES.items()]
    if gpus >= 2:
        runs.append({"mode": f"ddp x{gpus}", "args": ["trainer=ddp", f"trainer.devices={gpus}", *common]})
    else:
        runs.append({"mode": "ddp", "skipped": f"{gpus} GPU visible; DDP needs 2 or more"})
    return runs


def command(args: list[str], run_dir: Path) -> list[str]:
    probe = [
        f"hydra.run.dir={run_dir}",
        "+callbacks.gpu_probe._target_=bench.gpu.GpuProbe",
        f"+callbacks.gpu_probe.path={run_dir / 'gpu_probe.json'}",
    ]
    return [sys.executable, str(ROOT / "train.py"), *args, *probe]


def shown(cmd: list[str]) -> str:
    return shlex.join(["python", "train.py", *cmd[2:]])


def preview(r: dict) -> str:
    return f"skipped, {r['skipped']}" if "skipped" in r else shown(command(r["args"], Path("<run dir>")))


def run(args: list[str], run_dir: Path) -> dict:
    """What GpuProbe recorded, the command, its whole time and how it ended."""
    cmd = command(args, run_dir)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    outcome = {"command": shown(cmd), "process_s": time.perf_counter() - start}
    probe = run_dir / "gpu_probe.json"
    if result.returncode != 0 or not probe.is_file():
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        return {**outcome, "error": lines[-1]}
    return {**outcome, **json.loads(probe.read_text())}


def summarize(record: dict) -> dict:
    """Images per second (all ranks) of the median epoch after the first, and each check's verdict."""
    if "error" in record or "skipped" in record:
        return record
    timed = slice(1, None) if len(record["epochs"]) > 1 else slice(None)

    def per_second(seconds: list[float]) -> float:
        images = [n * record["world_size"] for n in record["images"]]
        return statistics.median(n / s for n, s in list(zip(images, seconds, strict=False))[timed])

    model = record["data"]["model"]
    return {
        **record,
        "images_per_s": per_second(record["epochs"]),
        "steps_images_per_s": per_second(record["steps"]) if record["steps"] else None,
        "data_on_device": all(device == model for device in record["data"].values()),
        "no_host_sync": bool(record["checked_steps"]) and not record["syncs"],
    }


def violations(runs: list[dict]) -> list[str]:
    """One clause per run that failed or broke a check."""
    found = []
    for r in runs:
        if "error" in r:
            found.append(f"{r['mode']} failed ({r['error']})")
        elif "skipped" in r:
            continue
        elif not r["data_on_device"]:
            found.append(f"{r['mode']}: data not on the model's device ({r['data']})")
        elif not r["checked_steps"]:
            found.append(f"{r['mode']}: no training step was checked for host syncs")
        elif r["syncs"]:
            found.append(f"{r['mode']}: host syncs in training steps ({', '.join(r['syncs'][:3])})")
    return found


# -- the results file --------------------------------------------------------------------------------
def table(runs: list[dict]) -> list[str]:
    lines = [
        "| mode | images/s, epoch | images/s, training steps | epochs (s) | process (s) | data on the GPU "
        "| host syncs in checked steps |",
        "|---|---:|---:|---|---:|---|---|",
    ]
    for r in runs:
        if "skipped" in r or "error" in r:
            why = f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {r['error']}"
            lines.append(f"| {r['mode']} | {why} | | | | | |")
            continue
        steps = f"{r['steps_images_per_s']:,.0f}" if r["steps_images_per_s"] else "-"
        syncs = "; ".join(r["syncs"]) or f"none in {len(r['checked_steps'])} steps"
        lines.append(
            f"| {r['mode']} | {r['images_per_s']:,.0f} | {steps} "
            f"| {', '.join(f'{s:.2f}' for s in r['epochs'])} | {r['process_s']:.1f} "
            f"| {'yes' if r['data_on_device'] else 'NO'} | {syncs} |"
        )
    return lines


def write_results(results: dict, path: Path = RESULTS) -> None:
    """`path` (markdown) and the same results as JSON beside it."""
    runs = results["runs"]
    checked = next((r for r in runs if r.get("checked_steps")), {})
    lines = [
        "# Training on a GPU (`python bench/gpu.py`)",
        "",
        f"- date: {results['date']}; commit: {results['commit']}; command: `{results['command']}`",
        f"- GPU: {results['gpu']} x {results['gpus']}; torch {results['torch']} (CUDA {results['cuda']}), "
        f"lightning {results['lightning']}, python {results['python']}",
        f"- host: {results['machine']}; load average before {results['load_before']}, after "
        f"{results['load_after']}",
        "- images/s: the median epoch after the first (bench/README.md); process: the whole `train.py` run.",
        "",
        *table(runs),
        "",
        "## Checks",
        "",
        "- **data on the GPU**: the loaders' images and labels sit on the model's device.",
        "- **host syncs**: training steps "
        f"{', '.join(map(str, checked.get('checked_steps', []))) or '(none)'} ran under "
        '`torch.cuda.set_sync_debug_mode("warn")`. Not checked, as they read values back by design: '
        + (", ".join(f"{step} ({why})" for step, why in checked.get("skipped_steps", {}).items()) or "none")
        + ".",
        "",
        "## Commands",
        "",
        *[f"- {r['mode']}: `{r['command']}`" for r in runs if "command" in r],
        *[f"- {r['mode']}: skipped, {r['skipped']}" for r in runs if "skipped" in r],
        "",
    ]
    path.write_text("\n".join(lines))
    path.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "overrides", nargs="*", help="train.py overrides for every run, e.g. data.batch_size=512"
    )
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3)")
    parser.add_argument("--gpus", type=int, help="GPUs for the DDP run (default: every visible one)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    visible = torch.cuda.device_count()
    gpus = visible if args.gpus is None else args.gpus
    if args.dry_run:
        for r in plan(gpus, args.epochs, *args.overrides):
            print(f"{r['mode']}: {preview(r)}")
        return
    if not visible:
        raise SystemExit("error: no CUDA GPU visible; bench/gpu.py needs one (--dry-run shows its commands)")
    if not 1 <= gpus <= visible:
        raise SystemExit(f"error: --gpus={gpus} is not allowed: expected 1 to {visible} (the GPUs visible)")

    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = machine.load()
    runs = []
    for r in plan(gpus, args.epochs, *args.overrides):
        print(f"{r['mode']}: {preview(r)}", flush=True)
        if "args" in r:
            with tempfile.TemporaryDirectory(prefix="bench-gpu-") as run_dir:
                r = {"mode": r["mode"], **summarize(run(r["args"], Path(run_dir)))}
            print(f"  {table([r])[-1]}", flush=True)
        runs.append(r)
    measured = next((r for r in runs if "device_name" in r), {})
    versions = machine.versions()
    results = {
        "date": f"{started:%Y-%m-%d %H:%M %Z}",
        "commit": machine.commit(),
        "command": shlex.join(["python", "bench/gpu.py", *(sys.argv[1:] if argv is None else argv)]),
        "gpu": measured.get("device_name", "unknown"),
        "gpus": visible,
        **{name: versions[name] for name in ("torch", "lightning", "python")},
        "cuda": measured.get("cuda", torch.version.cuda),
        "machine": machine.machine(),
        "load_before": load_before,
        "load_after": machine.load(),
        "runs": runs,
    }
    write_results(results, RESULTS)
    print(f"wrote {RESULTS} and {RESULTS.with_suffix('.json').name}")
    problems = violations(runs)
    if problems:
        raise SystemExit("error: " + "; ".join(problems))


if __name__ == "__main__":
    main()
