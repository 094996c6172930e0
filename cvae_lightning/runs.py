"""Hydra's run and sweep folders: refused in one line when they cannot be made, a sweep job's name, and
at the end of a multirun one table of every job's results in the sweep dir."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cvae_lightning import files
from cvae_lightning.errors import WriteError

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


class SweepSummary(Callback):
    """Writes summary.csv and summary.md (one row per job, sorted by val/nelbo) when a multirun ends, and
    exits non-zero in one line if a job failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect(sweep_dir)
        if not rows:
            log.warning(f"no finished runs under {sweep_dir}: no summary written")
            return
        csv_text = io.StringIO(newline="")
        writer = csv.DictWriter(csv_text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        table = to_markdown(rows)
        try:
            files.write_text(sweep_dir / "summary.csv", csv_text.getvalue())
            files.write_text(sweep_dir / "summary.md", table)
        except WriteError as error:
            raise SystemExit(f"error: {error}") from None
        log.info(f"sweep summary ({sweep_dir / 'summary.md'}):\n{table}")
        failed = [row for row in rows if row["status"] != "completed"]
        if failed:
            first = failed[0]
            raise SystemExit(
                f"error: {len(failed)} of {len(rows)} jobs failed, e.g. job {first['job']}: {first['error']} "
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
            raise SystemExit(
                f"error: {key}={folder} is not allowed: {why}; expected a folder this user can write "
                "(set paths.log_dir, or the folder itself)"
            )


def run_name(num, overrides: str) -> str:
    """A sweep job's folder name, which is also its run name in TensorBoard: its number, then its overrides
    (hydra.job.override_dirname), without '/' and cut short (a folder name holds at most 255 bytes)."""
    name = f"{num}_{overrides}".replace("/", "_") if overrides else str(num)
    return name if len(name) <= 120 else name[:117] + "..."


# Registered on import: Hydra instantiates the callbacks of conf/hydra/default.yaml (this module's
# WritableOutputDir) in every process that resolves a job's folder, a submitit job's too, before it does.
OmegaConf.register_new_resolver("run_name", run_name, replace=True)
