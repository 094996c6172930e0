"""What every bench result records about where it ran: the commit, the machine and CPU, the versions, the
threads a torch process gets, the load average. Reads versions from the installed packages' metadata, so it
imports neither torch nor Lightning."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """The short commit of the working tree, marked when tracked files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + (" with uncommitted changes" if dirty else "")


def cpu() -> str:
    """The CPU's model name (/proc/cpuinfo), or what the platform says where there is none."""
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load() -> str:
    """The 1, 5 and 15 minute load averages, as 0.60/1.27/1.34."""
    return "{:.2f}/{:.2f}/{:.2f}".format(*os.getloadavg())


def threads(env: Mapping[str, str] = os.environ) -> str:
    """The intra-op threads a torch process started with `env` uses."""
    set_to = env.get("OMP_NUM_THREADS")
    return f"{set_to} torch thread(s) (OMP_NUM_THREADS)" if set_to else "torch's default threads (one a core)"


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    return {"python": platform.python_version()} | {
        p: version(p) for p in ("torch", "lightning", "torchvision")
    }


def machine(env: Mapping[str, str] = os.environ) -> str:
    """One line: cores, CPU, OS, versions and threads."""
    shown = ", ".join(f"{'Python' if name == 'python' else name} {v}" for name, v in versions().items())
    return (
        f"{os.cpu_count()} cores, {cpu()}, {platform.system()} {platform.release()}; {shown}; {threads(env)}"
    )
