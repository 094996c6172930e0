"""Hydra callbacks: unmakeable run folders refused, the config tree, a multirun's table of results."""

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
# the config tree's top-level keys in this order, then the others as composed
TREE_ORDER = ("data", "model", "callbacks", "logger", "trainer", "paths", "extras")
# what gives a process its rank before Lightning knows it: torchrun, Lightning's DDP launcher, SLURM
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


class Callback(callback.Callback):
    """A Hydra callback whose hooks end the run with a project Error's one line, not a traceback."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name, hook in list(vars(cls).items()):
            if name.startswith("on_") and callable(hook):
                setattr(cls, name, one_line_errors(hook))


def collect(sweep_dir: Path) -> list[dict]:
    """One row per job that wrote results.json, best val/nelbo first, failed ones last with why."""
    runs = [(p.parent, json.loads(p.read_text())) for p in sorted(sweep_dir.glob("*/results.json"))]
    shared = set.intersection(*(set(r["overrides"]) for _, r in runs)) if runs else set()
    rows = [
        {
            "job": job_dir.name.split("_", 1)[0],
            "overrides": " ".join(o for o in r["overrides"] if o not in shared),
            "status": r.get("status", "completed"),
            **{name: r.get("metrics", {}).get(name) for name in METRICS},
            **{key: r.get(key) for key in ("epochs", "fit_seconds", "best_checkpoint")},
            "error": r.get("error", ""),
        }
        for job_dir, r in runs
    ]
    return sorted(rows, key=lambda row: float("inf") if row["val/nelbo"] is None else row["val/nelbo"])


def to_markdown(rows: list[dict]) -> str:
    cell = lambda v: f"{v:.2f}" if isinstance(v, float) else "–" if v is None else str(v)  # noqa: E731
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(map(cell, row.values())) + " |" for row in rows]) + "\n"


class SweepSummary(Callback):
    """summary.csv and .md when a multirun ends; one line if a job failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():  # no job launched (a complete study)
            return
        if not (rows := collect(sweep_dir)):
            log.warning(f"no finished runs under {sweep_dir}: no summary written")
            return
        csv_text = io.StringIO(newline="")
        csv.writer(csv_text).writerows([rows[0].keys(), *(row.values() for row in rows)])
        files.write_text(sweep_dir / "summary.csv", csv_text.getvalue())
        files.write_text(sweep_dir / "summary.md", table := to_markdown(rows))
        log.info(f"sweep summary ({sweep_dir / 'summary.md'}):\n{table}")
        if failed := [row for row in rows if row["status"] != "completed"]:
            raise Error(
                f"{len(failed)} of {len(rows)} jobs failed, e.g. job {failed[0]['job']}: "
                f"{failed[0]['error']} (summary: {sweep_dir / 'summary.md'})"
            )


def can_create(folder: Path) -> str | None:
    """None if `folder` exists or can be made, else why not; made ones removed (Hydra makes its own)."""
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


class ChecksFirst(Callback):
    """A run's values (a sweep's: each value it takes) checked before Hydra makes its folder, log or config
    tree: a refused run leaves nothing in logs/. train() checks each job's again (combinations too)."""

    def on_run_start(self, config, **kwargs) -> None:
        from cvae_lightning.harness.config import build, validate

        validate(config)
        for key in ("model", "data"):  # their own checks, in a few milliseconds
            build(config[key], key)

    def on_multirun_start(self, config, **kwargs) -> None:
        """Each value of each discrete sweep (`a=1,2`), the other sweeps at their first value: not every
        combination, which could be thousands. Other sweeps (Optuna's ranges) keep the base value."""
        from hydra import compose
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.errors import HydraException

        parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        swept = [  # each sweep's overrides, `+`/`++` kept (get_key_element has them)
            [f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()]
            for o in parsed
            if o.is_sweep_override() and o.is_discrete_sweep()
        ]
        firsts = [values[0] for values in swept]
        jobs = [firsts] + [
            [*firsts[:i], value, *firsts[i + 1 :]] for i, values in enumerate(swept) for value in values[1:]
        ]
        try:
            configs = [compose(config.hydra.job.config_name, overrides=[*fixed, *job]) for job in jobs]
        except HydraException:  # Hydra's own to report, as it launches
            configs = [config]
        for job_config in configs:
            self.on_run_start(job_config)


class WritableOutputDir(Callback):
    """A run or sweep folder that cannot be made, refused in one line before Hydra fails with a traceback."""

    def on_run_start(self, config, **kwargs) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(folder: str, key: str) -> None:
        if why := can_create(Path(folder).absolute()):
            raise ConfigError(
                f"{key}={folder} is not allowed: {why}; expected a folder this user can write "
                "(set paths.log_dir, or the folder itself)"
            )


def run_name(num, overrides: str) -> str:
    """A sweep job's folder and run name: its number and overrides, without '/', cut to fit a folder name."""
    name = f"{num}_{overrides}".replace("/", "_") if overrides else str(num)
    return name if len(name) <= 120 else name[:117] + "..."


def resolved(node: Any, key: Any) -> Any:
    """`node[key]` as plain data, interpolations resolved where they can be, else shown as written."""
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
    """The task's config (no `hydra`) as YAML, a branch per group, then top-level values."""
    fields = [k for k in TREE_ORDER if k in config] + [k for k in config if k not in (*TREE_ORDER, "hydra")]
    tree = Tree("CONFIG", style="dim", guide_style="dim")
    for field in fields:
        value = resolved(config, field)
        group = isinstance(value, dict | list)
        text = OmegaConf.to_yaml(value if group else {field: value}).rstrip()
        syntax = Syntax(text, "yaml", word_wrap=True, background_color="default")  # wrapped, not cropped
        (tree.add(field, style="dim", guide_style="dim") if group else tree).add(syntax)
    return tree


def plain_text(tree: Tree) -> str:
    """The tree without colours, wrapping or trailing spaces."""
    console = Console(file=io.StringIO(), width=1000, color_system=None)
    console.print(tree)
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines()) + "\n"


class ConfigTree(Callback):
    """Each job's config tree (rank zero) printed and in config_tree.log unless extras.print_config=false."""

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        enabled = OmegaConf.select(config, "extras.print_config", default=True)
        rank_zero = all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)
        if check_bool("extras.print_config", enabled) and rank_zero:
            rich.print(tree := config_tree(config))
            files.write_text(Path(config.hydra.runtime.output_dir, "config_tree.log"), plain_text(tree))


# on import: every process that resolves a job's folder builds this module's callbacks first
OmegaConf.register_new_resolver("run_name", run_name, replace=True)
