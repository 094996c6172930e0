"""The installed cvae-train, cvae-evaluate, cvae-generate and cvae-export: train.py etc. (installed beside
conf/ as `cvae_lightning_scripts`) run with the current folder as the project root (logs/, data/, ...)."""

import os
import sys
from functools import partial
from importlib import import_module


def _run(script: str) -> None:
    os.environ.setdefault("PROJECT_ROOT", os.getcwd())
    module = import_module(f"cvae_lightning_scripts.{script}")
    if script == "train":  # what train.py does first as a script
        from cvae_lightning.errors import one_line_errors
        from cvae_lightning.harness.config import check_group_choices

        one_line_errors(check_group_choices)(sys.argv[1:], module.ROOT / "conf")
    # conf/ beside the installed script, by path: Hydra would look for it as a module with an __init__.py
    sys.argv[1:1] = ["--config-path", str(module.ROOT / "conf")]
    module.main()


train, evaluate, generate, export = (
    partial(_run, name) for name in ("train", "evaluate", "generate", "export")
)
