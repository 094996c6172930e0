"""Training speed of the project beside the ordinary way of doing the same job (issue #5).

    python bench/throughput.py               # batch 128, 512, 2048; 3 repeats; ablation; time to quality
    python bench/throughput.py --quick       # batch 128, 1 repeat: a one-minute check
    python bench/throughput.py --batch-sizes 128 --repeats 5 --threads 1 --skip-quality

Three ways to train the default CVAE (`conf/model/cvae.yaml`: MLP, latent 20, learned conditional prior) on
the same 55k training images, in one process:

1. baseline: `torchvision.datasets.MNIST` + `ToTensor()` + `DataLoader(shuffle=True)` + a plain PyTorch loop
   with the default Adam, as the seed notebook did;
2. compute only: the model's forward + backward + optimizer step on batches already sliced in memory, no data
   pipeline and no Trainer: the limit for this model on this machine (eager, and with `model.compile=true`),
   with the project's process settings (`flush_denormal`, `matmul_precision`; the baseline keeps torch's
   defaults);
3. project: `train.py` itself in a subprocess (DataModule, LightningModule, Trainer, TensorBoard logging,
   checkpoints and image callbacks on), timed by the `EpochTimer` callback added through a Hydra override.

Warm-up (the first steps, or the project's first epoch, torch.compile included) is not timed; every path runs
`--repeats` epochs and the median epoch is reported. This shared machine's speed varies by 10-20% over
minutes, so the project's ratios are paired: its own process runs a baseline and a compute-only epoch before
each of its epochs and after the last (`EpochTimer(interleave=True)`). Writes `bench/results.md`.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
NUM_CLASSES = 10


def clock() -> tuple[float, float]:
    """(wall, CPU) seconds. CPU time (this process, all threads) barely moves when other jobs share the
    cores, so with one thread it stands in for the wall time of a quiet machine."""
    return time.perf_counter(), time.process_time()


def elapsed(start: tuple[float, float], end: tuple[float, float]) -> tuple[float, float]:
    return end[0] - start[0], end[1] - start[1]


class EpochTimer(L.Callback):
    """Wall-clock times of a real `train.py` run, written to `path` as JSON when training ends.

    `epochs`: (wall, CPU) seconds per training epoch (its validation, checkpoints, image callbacks included);
    `steps`: the same epochs up to the start of their validation (the training steps alone).
    `val`: (seconds since this callback was made, val/nelbo) after each validation; with `stop_below` set,
    training stops at the first val/nelbo at or below it.
    `compute`, `baseline`: with `interleave=True`, one compute-only epoch and one baseline epoch (as
    `compute_only` and `baseline` run them, on their own copies of the model) before every project epoch
    and after the last: compute only in this process, the baseline in a child process that keeps
    torch's default for denormals. The machine's speed varies by 10-20% over minutes, so each project
    epoch is compared with the epochs on either side of it (`paired`).
    """

    def __init__(self, path: str, stop_below: float | None = None, interleave: bool = False):
        self.path, self.stop_below, self.interleave = Path(path), stop_below, interleave
        self.created, self.starts, self.ends, self.val_starts = time.perf_counter(), [], [], []
        self.val, self.side_times = [], {"compute": [], "baseline": []}

    def on_fit_start(self, trainer, pl_module):
        if self.interleave:
            batch_size, train = trainer.datamodule.hparams.batch_size, split()[0]
            in_memory = in_memory_batches(train, batch_size)
            # compute only here, with this process's settings; the baseline in a process of its own
            self.compute = (*make_model(like=pl_module), in_memory)
            self.compute_warmup = in_memory_warmup(in_memory)
            self.baseline = process_with(TORCH_DEFAULTS)
            self.batch_size = batch_size

    def _side_epochs(self) -> None:
        warmup, self.compute_warmup = self.compute_warmup, []
        self.side_times["compute"] += timed_epochs(*self.compute, 1, warmup)
        self.side_times["baseline"] += self.baseline.submit(baseline_epochs, self.batch_size, 1).result()

    def on_train_epoch_start(self, trainer, pl_module):
        if self.starts:
            self.ends.append(clock())
        if self.interleave:
            self._side_epochs()
        self.starts.append(clock())

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val_starts.append(clock())

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        elbo = float(trainer.callback_metrics["val/nelbo"])
        self.val.append((time.perf_counter() - self.created, elbo))
        if self.stop_below is not None and elbo <= self.stop_below:
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module):
        self.ends.append(clock())
        if self.interleave:
            self._side_epochs()
            self.baseline.shutdown()
        epochs = [elapsed(start, end) for start, end in zip(self.starts, self.ends, strict=True)]
        steps = [elapsed(start, end) for start, end in zip(self.starts, self.val_starts, strict=False)]
        record = {"epochs": epochs, "steps": steps, "val": self.val, **self.side_times}
        self.path.write_text(json.dumps(record))


# -- the data, two ways -----------------------------------------------------------------------------
def split(val_size: int = 5000, seed: int = 42) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices of the 60k training images, split as the DataModule does (data.split_seed)."""
    order = torch.randperm(60000, generator=torch.Generator().manual_seed(seed))
    return order[val_size:], order[:val_size]


def torchvision_loader(indices: torch.Tensor, batch_size: int, shuffle: bool):
    """The ordinary pipeline: a PIL image per item through ToTensor, collated by a DataLoader."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    mnist = datasets.MNIST(DATA, train=True, download=False, transform=transforms.ToTensor())
    return DataLoader(Subset(mnist, indices.tolist()), batch_size=batch_size, shuffle=shuffle)


def in_memory_batches(indices: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches already sliced, as floats in [0, 1] with integer labels: no data pipeline left to time."""
    from cvae_lightning.data import load_split

    images, labels = load_split(DATA, train=True)
    order = indices[torch.randperm(len(indices), generator=torch.Generator().manual_seed(0))]
    x, y = images[order].float().div_(255), labels[order]
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))


# -- the three paths --------------------------------------------------------------------------------
def default_model(compile: bool = False) -> L.LightningModule:
    """The model `train.py` builds by default (`conf/`, with `model.compile`), with the same initial weights:
    `train.py` seeds everything before it builds the model."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose("train", overrides=[f"model.compile={str(compile).lower()}"])
    torch.manual_seed(cfg.seed)
    return instantiate(cfg.model)


def make_model(compile: bool = False, fused: bool = True, like: L.LightningModule | None = None):
    """The default model (or a fresh one of `like`'s class and hyperparameters) with the optimizer of its
    `configure_optimizers` (fused Adam) or the default Adam."""
    torch._dynamo.reset()  # a fresh compile per model: all models in the process share one recompile limit
    if like is None:
        model = default_model(compile)
    else:
        torch.manual_seed(0)
        model = type(like)(**like.hparams)
    model.configure_model()
    default_adam = torch.optim.Adam(model.parameters(), lr=model.hparams.lr)
    optimizer = model.configure_optimizers() if fused else default_adam
    return model, optimizer


def train_step(model, optimizer, x, y) -> None:
    loss = model.elbo_terms(x, y)["nelbo"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def timed_epochs(model, optimizer, batches, repeats: int, warmup) -> list[float]:
    """(wall, CPU) seconds per epoch over `batches` (iterated afresh), after untimed steps on `warmup`."""
    for x, y in warmup:
        train_step(model, optimizer, x, y)
    times = []
    for _ in range(repeats):
        start = clock()
        for x, y in batches:
            train_step(model, optimizer, x, y)
        times.append(elapsed(start, clock()))
    return times


# The process-wide settings a path runs with: the baseline keeps torch's defaults, as a plain loop does
TORCH_DEFAULTS = {"flush_denormal": False, "matmul_precision": "highest"}


def project_settings(**changes) -> dict:
    """The settings train.py makes (conf/train.yaml), with `changes`."""
    from omegaconf import OmegaConf

    configured = OmegaConf.load(ROOT / "conf" / "train.yaml")
    return {**{key: configured[key] for key in TORCH_DEFAULTS}, **changes}


def start_process(settings: dict, threads: int) -> None:
    from cvae_lightning.process import skip_failing_nvml_check

    torch.set_flush_denormal(settings["flush_denormal"])
    torch.set_float32_matmul_precision(settings["matmul_precision"])
    # a plain loop has no Lightning to switch torch's CUDA check to NVML; train.py drops it without NVML
    skip_failing_nvml_check()
    torch.set_num_threads(threads)


def process_with(settings: dict) -> ProcessPoolExecutor:
    """A fresh Python process (this one's thread count) with `settings` (see TORCH_DEFAULTS).

    The denormal setting is per thread, and OpenMP's workers copy it from the thread that starts them, so a
    path gets its settings in a process of its own: the baseline as people run it (torch's defaults), compute
    only as the project runs. A second thread here would not do: it gets a second OpenMP team, and libgomp
    spins less, so runs slower, when threads outnumber cores.
    """
    spawn = multiprocessing.get_context("spawn")
    setup = (settings, torch.get_num_threads())
    return ProcessPoolExecutor(1, mp_context=spawn, initializer=start_process, initargs=setup)


def with_settings(settings: dict, run, *args, **kwargs):
    """`run(*args, **kwargs)` in a `process_with(settings)`."""
    with process_with(settings) as process:
        return process.submit(run, *args, **kwargs).result()


_BASELINE_RUN: dict = {}  # the baseline's model, optimizer and loader in this process, kept across calls


def baseline_epochs(batch_size: int, repeats: int) -> list[tuple[float, float]]:
    """`repeats` more epochs of this process's baseline run; the first call builds it and warms it up."""
    if not _BASELINE_RUN:
        model, optimizer = make_model(fused=False)
        loader = torchvision_loader(split()[0], batch_size, shuffle=True)
        _BASELINE_RUN.update(
            model=model, optimizer=optimizer, loader=loader, warmup=itertools.islice(loader, 10)
        )
    run = _BASELINE_RUN
    warmup, run["warmup"] = run["warmup"], []
    return timed_epochs(run["model"], run["optimizer"], run["loader"], repeats, warmup)


def baseline(batch_size: int, repeats: int) -> list[tuple[float, float]]:
    return with_settings(TORCH_DEFAULTS, baseline_epochs, batch_size, repeats)


def compute_only(
    batch_size: int, repeats: int, compile: bool, fused: bool = True, settings: dict | None = None
) -> list[tuple[float, float]]:
    settings = settings or project_settings()
    return with_settings(settings, _compute_only, batch_size, repeats, compile, fused)


def _compute_only(batch_size: int, repeats: int, compile: bool, fused: bool) -> list[tuple[float, float]]:
    model, optimizer = make_model(compile=compile, fused=fused)
    batches = in_memory_batches(split()[0], batch_size)
    return timed_epochs(model, optimizer, batches, repeats, in_memory_warmup(batches))


def in_memory_warmup(batches: list) -> list:
    """Untimed steps: ten batches, and the last, shorter one (a graph of its own for torch.compile)."""
    return batches[:10] + batches[-1:]


def project(
    batch_size: int,
    epochs: int,
    threads: int,
    *overrides: str,
    stop_below: float | None = None,
    interleave: bool = False,
) -> dict:
    """Runs `train.py` as a user would (test set skipped) and returns the EpochTimer's record."""
    with tempfile.TemporaryDirectory(prefix="bench-") as run_dir:
        out = Path(run_dir) / "timer.json"
        timer = [
            "+callbacks.bench_timer._target_=bench.throughput.EpochTimer",
            f"+callbacks.bench_timer.path={out}",
        ]
        if stop_below is not None:
            timer.append(f"+callbacks.bench_timer.stop_below={stop_below}")
        if interleave:
            timer.append("+callbacks.bench_timer.interleave=true")
        cmd = [
            sys.executable,
            str(ROOT / "train.py"),
            f"data.batch_size={batch_size}",
            f"trainer.max_epochs={epochs}",
            "test=false",
            f"hydra.run.dir={run_dir}",
            *timer,
            *overrides,
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if result.returncode != 0 or not out.is_file():
            raise RuntimeError(f"train.py {' '.join(cmd[2:])} failed:\n{result.stderr[-3000:]}")
        return json.loads(out.read_text())


# -- time to quality --------------------------------------------------------------------------------
def baseline_to_quality(target: float, max_epochs: int, batch_size: int = 128) -> list[tuple[float, float]]:
    """(seconds since start, val -ELBO) after each epoch of the plain loop, until val -ELBO <= target."""
    return with_settings(TORCH_DEFAULTS, _baseline_to_quality, target, max_epochs, batch_size)


def _baseline_to_quality(target: float, max_epochs: int, batch_size: int) -> list[tuple[float, float]]:
    start = time.perf_counter()
    model, optimizer = make_model(fused=False)
    train_idx, val_idx = split()
    batches = torchvision_loader(train_idx, batch_size, shuffle=True)
    val_batches = torchvision_loader(val_idx, 1000, shuffle=False)
    history = []
    for _ in range(max_epochs):
        for x, y in batches:
            train_step(model, optimizer, x, y)
        with torch.no_grad():
            elbo = sum(float(model.elbo_terms(x, y)["nelbo"]) * len(x) for x, y in val_batches) / len(val_idx)
        history.append((time.perf_counter() - start, elbo))
        if elbo <= target:
            break
    return history


# -- the report -------------------------------------------------------------------------------------
TRAIN_IMAGES = 55000


def load() -> str:
    return "{:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg())


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def measure(rows: list[dict], path: str, batch_size: int, run, *args, **kwargs) -> None:
    """Appends the median of `run(*args, **kwargs)` ((wall, CPU) seconds per epoch) to rows, and prints it."""
    add_row(rows, path, batch_size, run(*args, **kwargs))


def add_row(rows: list[dict], path: str, batch_size: int, epochs: list, paired: dict | None = None) -> None:
    """Appends the median of `epochs` ((wall, CPU) seconds each) to rows, and prints it. `paired`: the
    row's ratios to the baseline and to compute only from epochs interleaved with its own (see `paired`)."""
    seconds, cpu = (statistics.median(t) for t in zip(*epochs, strict=True))
    row = {
        "path": path,
        "batch": batch_size,
        "epoch_s": seconds,
        "ips": TRAIN_IMAGES / seconds,
        "cpu_s": cpu,
        "cpu_ips": TRAIN_IMAGES / cpu,
        "load": load(),
        "paired": paired,
    }
    rows.append(row)
    print(
        f"  {path:<38} batch {batch_size:>5} {row['ips']:>8,.0f} img/s {seconds:6.2f} s/epoch "
        f"{cpu:6.2f} CPU s  load {row['load']}",
        flush=True,
    )


def project_epochs(batch_size: int, repeats: int, threads: int, *overrides: str) -> list[float]:
    """The project's epochs after the first (the warm-up, torch.compile included)."""
    return project(batch_size, repeats + 1, threads, *overrides)["epochs"][1:]


def paired(run: dict, key: str, side: str) -> tuple[float, float]:
    """Median over the timed project epochs (`key`: "epochs" or "steps") of the mean time of the `side`
    epochs just before and after each one ("compute" or "baseline") over the project's time: wall and CPU.
    Above 1: the side path is slower. Epoch 0 is the project's warm-up."""
    ratios = []
    for k in range(1, len(run[key])):
        before, after, own = run[side][k], run[side][k + 1], run[key][k]
        ratios.append([(b + a) / 2 / t for b, a, t in zip(before, after, own, strict=True)])
    return tuple(statistics.median(r) for r in zip(*ratios, strict=True))


def ratio(row: dict, other: dict | None) -> str:
    """Speed-up of row over other, by wall time / by CPU time."""
    if other is None:
        return "–"
    return f"{row['ips'] / other['ips']:.2f} / {row['cpu_ips'] / other['cpu_ips']:.2f}"


def speed_table(rows: list[dict]) -> list[str]:
    """Markdown rows: images/s and epoch seconds, and ratios to the baseline and to compute only, each by
    wall time and by CPU time (wall / CPU)."""

    def find(path, batch):
        return next((r for r in rows if r["path"] == path and r["batch"] == batch), None)

    lines = [
        "| path | batch | images/s | epoch (s) | CPU s/epoch | × baseline | ÷ compute only | load 1/5/15 min "
        "|",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        base, compute = find("baseline", r["batch"]), find(COMPUTE[COMPILED in r["path"]], r["batch"])
        cells = [r["path"], r["batch"], f"{r['ips']:,.0f}", f"{r['epoch_s']:.2f}", f"{r['cpu_s']:.2f}"]
        if r["paired"]:  # interleaved in the project's own process
            cells += ["**{:.2f}** / {:.2f}".format(*r["paired"][side]) for side in ("baseline", "compute")]
        else:
            cells += [ratio(r, base), ratio(r, compute)]
        cells.append(r["load"])
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


COMPILED = "model.compile=true"
COMPUTE = {False: "compute only, eager", True: f"compute only, {COMPILED}"}
PROJECT = {False: "project", True: f"project, {COMPILED}"}
CLASSIFIER = ROOT / "checkpoints" / "classifier.ckpt"  # SampleAccuracy judges samples with it, when present
NO_FLUSH = "flush_denormal=false"
BF16, FP32 = "matmul_precision=medium", "matmul_precision=highest"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed epochs per path; the median is reported"
    )
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch threads (all paths)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="batch 128, 1 repeat, no ablation, no time to quality"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--skip-ablation", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument(
        "--target", type=float, default=105.0, help="val -ELBO (nats) for the time to quality"
    )
    parser.add_argument("--max-epochs", type=int, default=20, help="time to quality gives up after this")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.md")
    args = parser.parse_args()
    if args.quick:
        args.batch_sizes, args.repeats, args.skip_ablation, args.skip_quality = [128], 1, True, True
    torch.set_num_threads(args.threads)
    modes = [False] if args.no_compile else [False, True]
    r, threads = args.repeats, args.threads
    started, load_before = datetime.datetime.now().astimezone(), load()
    print(f"threads {threads}, load {load_before}, {r} timed epoch(s) per path", flush=True)

    rows: list[dict] = []
    for b in args.batch_sizes:
        measure(rows, "baseline", b, baseline, b, r)
        compute = {c: compute_only(b, r, compile=c) for c in modes}
        runs = {
            c: project(b, r + 1, threads, f"model.compile={str(c).lower()}", interleave=True) for c in modes
        }
        for c in modes:  # compute only again after the project: the machine's speed varies over minutes
            add_row(rows, COMPUTE[c], b, compute[c] + compute_only(b, r, compile=c))
        for c in modes:  # the first epoch is the warm-up (torch.compile included)
            for key, path in (("epochs", PROJECT[c]), ("steps", f"{PROJECT[c]}, training steps only")):
                ratios = {side: paired(runs[c], key, side) for side in ("baseline", "compute")}
                add_row(rows, path, b, runs[c][key][1:], ratios)

    ablation: list[dict] = []
    quality: list[tuple[str, list]] = []
    write_report(args, started, load_before, rows, ablation, quality)  # so far, in case of a long run's end
    if not args.skip_ablation:
        print("what each choice does (batch 128)", flush=True)
        first, fp32 = "in-memory batches, default Adam, eager", project_settings(matmul_precision="highest")
        unflushed = {**fp32, "flush_denormal": False}
        measure(ablation, first, 128, compute_only, 128, r, compile=False, fused=False, settings=unflushed)
        measure(ablation, "+ fused Adam", 128, compute_only, 128, r, compile=False, settings=unflushed)
        measure(ablation, "+ denormals flushed to zero", 128, compute_only, 128, r, False, settings=fp32)
        measure(ablation, f"+ bfloat16 matmuls ({BF16})", 128, compute_only, 128, r, compile=False)
        if not args.no_compile:
            measure(ablation, "+ torch.compile", 128, compute_only, 128, r, compile=True)
            if threads > 1:
                torch.set_num_threads(1)
                measure(ablation, "+ torch.compile, 1 thread", 128, compute_only, 128, r, compile=True)
                torch.set_num_threads(threads)
        measure(ablation, "project (log_every_n_steps=50)", 128, project_epochs, 128, r, threads)
        measure(ablation, "project, flush_denormal=false", 128, project_epochs, 128, r, threads, NO_FLUSH)
        measure(ablation, f"project, {FP32}", 128, project_epochs, 128, r, threads, FP32)
        if CLASSIFIER.is_file():
            # the classifier judging 510 samples (50 per digit at T=1, one at the prior mean): an evaluation
            off = "~callbacks.sample_accuracy"
            measure(
                ablation, "project, SampleAccuracy callback off", 128, project_epochs, 128, r, threads, off
            )
        measure(
            ablation,
            "project, log every step",
            128,
            project_epochs,
            128,
            r,
            threads,
            "trainer.log_every_n_steps=1",
        )

    write_report(args, started, load_before, rows, ablation, quality)
    if not args.skip_quality:
        print(f"time to val -ELBO <= {args.target} (batch 128)", flush=True)
        to_quality = {"baseline": lambda: baseline_to_quality(args.target, args.max_epochs)}
        runs = {PROJECT[c]: (f"model.compile={str(c).lower()}",) for c in modes}
        runs[f"{PROJECT[False]}, {NO_FLUSH}"] = (NO_FLUSH,)
        runs[f"{PROJECT[False]}, {FP32}"] = (FP32,)
        for name, overrides in runs.items():
            to_quality[name] = lambda o=overrides: project(
                128, args.max_epochs, threads, *o, stop_below=args.target
            )["val"]
        for name, run in to_quality.items():
            quality.append((name, run()))
            print(f"  {name:<38} {describe(quality[-1][1], args.target)}  load {load()}", flush=True)

    write_report(args, started, load_before, rows, ablation, quality)


def describe(history: list, target: float) -> str:
    hit = next((i for i, (_, elbo) in enumerate(history) if elbo <= target), None)
    if hit is None:
        return f"not reached in {len(history)} epochs (last {history[-1][1]:.1f})"
    seconds, elbo = history[hit]
    return f"{seconds:.1f} s, epoch {hit + 1}, val -ELBO {elbo:.1f}"


def epoch_seconds(history: list) -> list[float]:
    """Each epoch's wall time (its validation included) from the (seconds since start, val) history."""
    ends = [seconds for seconds, _ in history]
    return [end - start for start, end in zip([0.0, *ends[:-1]], ends, strict=True)]


def write_report(args, started, load_before, rows, ablation, quality) -> None:
    import lightning
    import torchvision

    command = " ".join(["python bench/throughput.py", *sys.argv[1:]])
    lines = [
        "# Training throughput (`python bench/throughput.py`)",
        "",
        f"- date: {started:%Y-%m-%d %H:%M %Z}; command: `{command}`",
        f"- machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}",
        f"- python {platform.python_version()}, torch {torch.__version__}, "
        f"lightning {lightning.__version__}, torchvision {torchvision.__version__}",
        f"- torch threads: {args.threads} (every path; `OMP_NUM_THREADS` for the train.py subprocesses)",
        f"- load average (1/5/15 min) before: {load_before}, after: {load()}; the machine is shared, so "
        "compare rows measured at similar load",
        f"- {args.repeats} timed epoch(s) of the 55k training images per path, after a warm-up; "
        "the median is reported",
        "- the classifier-judged SampleAccuracy callback: "
        + ("on" if CLASSIFIER.is_file() else "off (no checkpoints/classifier.ckpt: `make classifier`)"),
        "",
        "## Images per second",
        "",
        "baseline: torchvision MNIST + ToTensor + DataLoader(shuffle=True), a plain loop, default Adam, "
        "torch's defaults (denormals kept, float32 matmuls). "
        "compute only: forward + backward + fused Adam on batches already in memory (no data pipeline, no "
        "Trainer), with the project's settings (denormals flushed to zero, `flush_denormal`; bfloat16 "
        "matmuls where the CPU has them, `matmul_precision`); measured before and "
        "after the project rows. project: `train.py` (DataModule, Trainer, "
        "TensorBoard, checkpoints, image and evaluation callbacks); its epoch includes the validation and "
        "the per-epoch callbacks; *training steps only*: the same epochs up to their validation. "
        "÷ compute only: against the compute-only row of the same batch "
        "size and mode (eager or compiled).",
        "",
        "**Project rows' ratios are paired** (in bold): the project's own process also runs one baseline "
        "epoch and one compute-only epoch (eager or compiled, as the project) before each of its epochs and "
        "after the last, and each project epoch is compared with the epochs on either side of it (median "
        "over epochs). The machine's speed varies by 10-20% over minutes, so this is the fair comparison; "
        "the unpaired rows above and below were measured minutes apart.",
        "",
        *speed_table(rows),
    ]
    if ablation:
        first = ablation[0]
        lines += [
            "",
            "## What each choice does (batch 128)",
            "",
            "Each compute-only row adds one choice to the row above (× first row: against the first row).",
            "Project rows: as configured (`self.log` and a TensorBoard write every 50 steps); with",
            "denormals kept (`flush_denormal=false`); with float32 matmuls (`matmul_precision=highest`);",
            "without the classifier-judged SampleAccuracy callback;",
            "with `self.log` and TensorBoard writes on every step (`trainer.log_every_n_steps=1`).",
            "",
            "| choice | images/s | CPU s / epoch | × first row (wall / CPU) | load 1/5/15 min |",
            "|---|---:|---:|---:|---|",
            *(
                f"| {r['path']} | {r['ips']:,.0f} | {r['cpu_s']:.2f} | {ratio(r, first)} | {r['load']} |"
                for r in ablation
            ),
        ]
    if quality:
        lines += [
            "",
            f"## Time to val −ELBO ≤ {args.target} nats (batch 128, the same model and lr)",
            "",
            "Wall time from the start of the job (data loading, compile and per-epoch validation included; "
            "process start-up and imports excluded), checked after every epoch. Adam's moments of rarely "
            "used weights decay into float32's denormal range from about the second epoch, so epochs slow "
            "down as training goes on unless denormals are flushed to zero.",
            "",
            "| path | reached | val −ELBO by epoch | seconds by epoch |",
            "|---|---|---|---|",
            *(
                f"| {name} | {describe(h, args.target)} | {', '.join(f'{e:.1f}' for _, e in h)} "
                f"| {', '.join(f'{t:.1f}' for t in epoch_seconds(h))} |"
                for name, h in quality
            ),
        ]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
