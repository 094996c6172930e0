"""Hydra's run and sweep folders: refused in one line when they cannot be made, a sweep job's name, the
composed config as a tree at the start of every job (and in its folder), and at the end of a multirun one
table of every job's results in the sweep dir."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import rich
from hydra.experimental import callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.syntax import Syntax
from rich.tree import Tree

from cvae_lightning.errors import ConfigError, Error, check_bool, one_line_errors
from cvae_lightning.harness import files

log = logging.getLogger(__name__)

METRICS = ("val/nelbo", "test/nelbo", "val/recon", "val/kl", "test/recon", "test/kl")


def collect(sweep_dir: Path) -> list[dict]:
    """One row per job that ended (wrote results.json): the completed ones by val/nelbo (best first), then
    the failed ones with their reason."""
    runs = [(p.parent, json.loads(p.read_text())) for p in sorted(sweep_dir.glob("*/results.json"))]
    # show what differs between the jobs, not the overrides they all share
    shared = set.intersection(*(set(r["overrides"]) for _, r in runs)) if runs else set()
    rows = [
        {
            "job": job_dir.name.split("_", 1)[0],
            "overrides": " ".join(o for o in r["overrides"] if o not in shared),
            "status": r.get("status", "completed"),
            **{name: r.get("metrics", {}).get(name) for name in METRICS},
            "epochs": r.get("epochs"),
            "fit_seconds": r.get("fit_seconds"),
            "best_checkpoint": r.get("best_checkpoint"),
            "error": r.get("error", ""),
        }
        for job_dir, r in runs
    ]
    return sorted(rows, key=lambda row: float("inf") if row["val/nelbo"] is None else row["val/nelbo"])


def to_markdown(rows: list[dict]) -> str:
    cell = lambda v: f"{v:.2f}" if isinstance(v, float) else "–" if v is None else str(v)  # noqa: E731
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(cell(v) for v in row.values()) + " |" for row in rows]
    return "\n".join(lines) + "\n"


class Callback(callback.Callback):
    """A Hydra callback whose hooks stop the run with the one line of a project Error (one_line_errors),
    where Hydra would print the traceback of any other exception."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name, hook in list(vars(cls).items()):
            if name.startswith("on_") and callable(hook):
                setattr(cls, name, one_line_errors(hook))


class SweepSummary(Callback):
    """Writes summary.csv and summary.md (one row per job, sorted by val/nelbo) when a multirun ends, and
    exits non-zero in one line if a job failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():  # no job launched (a search whose study was complete): nothing to sum
            return
        rows = collect(sweep_dir)
        if not rows:
            log.warning(f"no finished runs under {sweep_dir}: no summary written")
            return
        csv_text = io.StringIO(newline="")
        writer = csv.DictWriter(csv_text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        table = to_markdown(rows)
        files.write_text(sweep_dir / "summary.csv", csv_text.getvalue())
        files.write_text(sweep_dir / "summary.md", table)
        log.info(f"sweep summary ({sweep_dir / 'summary.md'}):\n{table}")
        failed = [row for row in rows if row["status"] != "completed"]
        if failed:
            first = failed[0]
            raise Error(
                f"{len(failed)} of {len(rows)} jobs failed, e.g. job {first['job']}: {first['error']} "
                f"(summary: {sweep_dir / 'summary.md'})"
            )


def _can_create(folder: Path) -> str | None:
    """None if `folder` exists or can be made; else why not. Leaves nothing behind: Hydra makes the folder
    itself moments later (from a fresh `${now:}`), so the folders made here to find out are removed."""
    made = []
    try:
        for path in reversed([folder, *folder.parents]):
            if not path.exists():
                path.mkdir()
                made.append(path)
            elif not path.is_dir():
                return f"{path} is not a folder"
    except OSError as error:
        return f"{path} cannot be created ({error.strerror or error})"
    finally:
        for path in reversed(made):
            path.rmdir()
    return None


class WritableOutputDir(Callback):
    """Refuses, in one line, a run or sweep folder that cannot be created, before Hydra tries and fails with
    a traceback (e.g. paths.log_dir=/proc/x)."""

    def on_run_start(self, config, **kwargs) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(folder: str, key: str) -> None:
        why = _can_create(Path(folder).absolute())
        if why:
            raise ConfigError(
                f"{key}={folder} is not allowed: {why}; expected a folder this user can write "
                "(set paths.log_dir, or the folder itself)"
            )


def run_name(num, overrides: str) -> str:
    """A sweep job's folder name, which is also its run name in TensorBoard: its number, then its overrides
    (hydra.job.override_dirname), without '/' and cut short (a folder name holds at most 255 bytes)."""
    name = f"{num}_{overrides}".replace("/", "_") if overrides else str(num)
    return name if len(name) <= 120 else name[:117] + "..."


# the config tree's top-level keys in this order, then the others as composed
TREE_ORDER = ("data", "model", "callbacks", "logger", "trainer", "paths", "extras")
# what gives a process its rank: torchrun (RANK), Lightning's DDP launcher, which reruns train.py for the
# other ranks (LOCAL_RANK, NODE_RANK), and SLURM, which starts one train.py per task (SLURM_PROCID)
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def is_global_rank_zero() -> bool:
    """Whether this process is a run's first, before Lightning knows the ranks."""
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)


def resolved(node: Any, key: Any) -> Any:
    """`node[key]` as plain data: each interpolation resolved where it can be, and shown as written where it
    cannot (a missing key, an unset environment variable), so that the run itself reports it."""
    try:
        value = node[key]
    except OmegaConfBaseException:
        return OmegaConf.to_container(node, resolve=False)[key]
    if not OmegaConf.is_config(value):
        return value
    if OmegaConf.is_dict(value):
        return {k: resolved(value, k) for k in value}
    return [resolved(value, i) for i in range(len(value))]


def config_tree(config: DictConfig) -> Tree:
    """The task's config (without `hydra`) as YAML: a branch per group, TREE_ORDER's first, then the rest
    (top-level values as one line each)."""
    fields = [k for k in TREE_ORDER if k in config] + [k for k in config if k not in (*TREE_ORDER, "hydra")]
    tree = Tree("CONFIG", style="dim", guide_style="dim")
    for field in fields:
        value = resolved(config, field)
        group = isinstance(value, dict | list)
        text = OmegaConf.to_yaml(value if group else {field: value}).rstrip()
        # wrapped rather than cropped at the terminal's width
        syntax = Syntax(text, "yaml", word_wrap=True, background_color="default")
        (tree.add(field, style="dim", guide_style="dim") if group else tree).add(syntax)
    return tree


def plain_text(tree: Tree) -> str:
    """The tree without colours, wide enough that no line is wrapped, without trailing spaces."""
    console = Console(file=io.StringIO(), width=1000, color_system=None)
    console.print(tree)
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines()) + "\n"


class ConfigTree(Callback):
    """Prints the composed config as a tree at the start of every job (a sweep's too), on the first process
    only, and writes it without colours to config_tree.log in the job's folder; `extras.print_config=false`
    turns both off."""

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        enabled = OmegaConf.select(config, "extras.print_config", default=True)
        if not (check_bool("extras.print_config", enabled) and is_global_rank_zero()):
            return
        tree = config_tree(config)
        rich.print(tree)
        files.write_text(Path(config.hydra.runtime.output_dir, "config_tree.log"), plain_text(tree))


# Registered on import: Hydra instantiates the callbacks of conf/hydra/default.yaml (this module's
# WritableOutputDir) in every process that resolves a job's folder, a submitit job's too, before it does.
OmegaConf.register_new_resolver("run_name", run_name, replace=True)
