"""Every command the Markdown documents still works as typed: each `python train.py|evaluate.py|generate.py|
export.py ...` and each `make ...` of README.md, docs/*.md and bench/README.md, in a fenced block or an inline
code span, is composed as `python SCRIPT ... --cfg job` would compose it and then checked as the script
checks it before any work (train.py: its group check, `validate`, and every callback, the model, the data
module and the trainer built; the others: their callbacks and trainer), and each `make` line is `make -n`
(its Python commands then composed too). The `# mypkg.py` examples of usage.md are the module `mypkg` here,
so the classes of one's own that the docs name are built too. A part (model, data, callbacks, trainer) whose
resolved config was built before is not built again: the suite stays cheap as the docs grow.

Placeholders: `<...>` with a space in it (`<same overrides>`) and a word `...` stand for overrides of one's
own and are dropped; any other `<...>` (`<run>`, `<date>_<time>`) is a name, read as `x`. Words such as
CKPT and DIR are plain values to compose. Lines that start with `$ ` are transcripts of refused values
(docs/usage.md, "Bad input"), not commands to compose. NOT_COMPOSED lists the few lines that cannot compose
here, and why.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest

from tests.helpers import ENTRIES, ROOT

DOCS = sorted([ROOT / "README.md", ROOT / "bench" / "README.md", *(ROOT / "docs").glob("*.md")])
SCRIPTS = tuple(ENTRIES)  # train.py, evaluate.py, generate.py, export.py
# documented lines this check cannot compose (a part of the line as written), each with the reason
NOT_COMPOSED = {
    # a pattern for the rows of the table it heads (docs/results.md, written by bench/bmnist_table.py)
    "experiment=bmnist_<row>",
}
SHELL_SEPARATORS = {"&&", "||", ";", "|"}


def code_lines(text: str) -> list[str]:
    """The lines of fenced code blocks (not python ones) and the inline code spans of a Markdown text."""
    lines, fence = [], None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip()
            continue
        if fence is not None:
            if fence not in ("python", "yaml", "text"):
                lines.append(stripped)
        else:
            lines += re.findall(r"`([^`]+)`", line)
    return [line for line in lines if not line.startswith("$ ")]


def commands(line: str) -> list[list[str]]:
    """The project's commands in one shell line: [script or "make", args...]."""
    line = re.sub(r"<[^<>]* [^<>]*>", "", line)  # <same overrides>: one's own overrides
    line = re.sub(r"<[^<>]+>", "x", line)  # <run>, <date>_<time>: a name
    try:
        words = shlex.split(line, comments=True)
    except ValueError:  # prose in backticks with an unbalanced quote
        return []
    found = []
    for i, word in enumerate(words):
        is_entry = Path(word).name.startswith("python") and i + 1 < len(words) and words[i + 1] in SCRIPTS
        is_make = word == "make" and (i == 0 or words[i - 1] in SHELL_SEPARATORS) and i + 1 < len(words)
        if not (is_entry or is_make):
            continue
        start = i + 1
        end = next((j for j in range(start, len(words)) if words[j] in SHELL_SEPARATORS), len(words))
        found.append([w for w in words[start:end] if w != "..."] if is_entry else ["make", *words[start:end]])
    return found


def documented() -> dict[str, list[str]]:
    """Each documented command (as a string, for the test's id) -> its words; first place wins."""
    found: dict[str, list[str]] = {}
    for doc in DOCS:
        for line in code_lines(doc.read_text()):
            if any(part in line for part in NOT_COMPOSED):
                continue
            for words in commands(line):
                shown = " ".join(["python", *words] if words[0] in SCRIPTS else words)
                found.setdefault(shown, words)
    return found


COMMANDS = documented()


@pytest.fixture(scope="module")
def mypkg(tmp_path_factory):
    """The `# mypkg.py` blocks of docs/usage.md, as the module `mypkg` they say to write."""
    text = (ROOT / "docs" / "usage.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if b.startswith("# mypkg.py")]
    assert blocks, "docs/usage.md has no `# mypkg.py` example"
    folder = tmp_path_factory.mktemp("mypkg")
    (folder / "mypkg.py").write_text("\n".join(blocks))
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("mypkg", None)


def runs_of(script: str, args: list[str]) -> list[list[str]]:
    """The jobs' overrides: Hydra's flags dropped; a sweep (-m a=1,2 b=3,4) gives each value of each swept key
    once, beside the other keys' first values."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from cvae_lightning.harness.compat import hydra_args_parser

    parsed = hydra_args_parser().parse_args(args)
    assert parsed.cfg is None or parsed.cfg == "job", args
    overrides = OverridesParser.create().parse_overrides(parsed.overrides)
    choices = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [o.input_line]
        for o in overrides
    ]
    swept = any(len(c) > 1 for c in choices)
    assert parsed.multirun or not swept or script != "train.py", f"a sweep without -m: {args}"
    firsts = [c[0] for c in choices]
    jobs = [firsts] + [firsts[:i] + [v] + firsts[i + 1 :] for i, c in enumerate(choices) for v in c[1:]]
    return [list(job) for job, _ in itertools.groupby(jobs)]


@contextmanager
def job_config(config: str, overrides: list[str], output_dir: Path):
    """The task's config of `python SCRIPT OVERRIDES`, Hydra's runtime (the run folder) set as in a run."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    import cvae_lightning.harness.runs  # noqa: F401  (registers the resolvers of conf/hydra)
    import cvae_lightning.harness.slurm  # noqa: F401

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config, overrides=overrides, return_hydra_config=True)
    with read_write(cfg), open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    try:
        with read_write(cfg), open_dict(cfg):
            del cfg["hydra"]
        yield cfg
    finally:
        HydraConfig.instance().cfg = None


@contextmanager
def gpus_if_asked(cfg):
    """A command for GPUs is checked as on a machine with 8 of them; the trainer is then not built here."""
    import torch

    if str(cfg.get("trainer", {}).get("accelerator")) not in ("gpu", "cuda") or torch.cuda.is_available():
        yield False
        return
    with (
        mock.patch("torch.cuda.is_available", return_value=True),
        mock.patch("torch.cuda.device_count", return_value=8),
    ):
        yield True


BUILT: set[tuple] = set()  # the parts already built: (how, the part's config resolved)
CHECKED: set[tuple] = set()  # the jobs already checked and found good: (script, run folder, overrides)


def build_once(node, how, make) -> None:
    """`make()`, unless a part with this config, resolved, was built the same way before (many commands
    change one part and share the others)."""
    from omegaconf import OmegaConf

    try:
        key = (how, repr(OmegaConf.to_container(node, resolve=True)))
    except Exception:  # an interpolation that does not resolve: building it says which
        key = None
    if key is None or key not in BUILT:
        make()
        BUILT.add(key)


def check_script(script: str, args: list[str], output_dir: Path) -> None:
    from cvae_lightning.errors import one_line_errors
    from cvae_lightning.harness.config import build, check_group_choices, validate
    from cvae_lightning.harness.training import build_group

    config = ENTRIES[script][0]
    if script == "train.py":
        one_line_errors(check_group_choices)(args, ROOT / "conf")
    for overrides in runs_of(script, args):
        if (script, output_dir, *overrides) in CHECKED:  # the same job in another command
            continue
        with job_config(config, overrides, output_dir) as cfg:
            with gpus_if_asked(cfg) as fake_gpus:
                if script == "train.py":
                    validate(cfg)
                    build_once(cfg.model, "model", lambda: build(cfg.model, "model").configure_optimizers())
                    build_once(cfg.data, "data", lambda: build(cfg.data, "data"))
                elif script == "evaluate.py":
                    build_once(cfg.data, "data none", lambda: build(cfg.data, "data", binarize="none"))
                if "callbacks" in cfg:
                    how = f"callbacks {fake_gpus}"
                    build_once(cfg.callbacks, how, lambda: build_group(cfg.callbacks, "callbacks"))
                if "trainer" in cfg and not fake_gpus:
                    build_once(cfg.trainer, "trainer", lambda: build(cfg.trainer, "trainer"))
        CHECKED.add((script, output_dir, *overrides))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One run folder for every command: the parts whose config names it then compare equal."""
    return tmp_path_factory.mktemp("run")


@pytest.mark.parametrize("shown", list(COMMANDS))
def test_documented_command_composes(shown, mypkg, run_dir):
    words = COMMANDS[shown]
    if words[0] != "make":
        check_script(words[0], words[1:], run_dir)
        return
    # not the suite's own make's variables (`make test ARGS=-x` would hand its ARGS to every line)
    env = {
        k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "ARGS", "CKPT")
    }
    dry = subprocess.run(
        ["make", "-n", *words[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert dry.returncode == 0, dry.stderr
    for line in dry.stdout.splitlines():  # what make runs: train.py ... with ARGS, composed too
        for run in commands(line):
            if run[0] != "make":
                check_script(run[0], run[1:], run_dir)


def test_the_docs_document_commands():
    """The extraction finds the commands (a change of format would make the test above vacuous)."""
    scripts = {words[0] for words in COMMANDS.values()}
    assert scripts == {*SCRIPTS, "make"} and len(COMMANDS) > 50, sorted(COMMANDS)
    assert "python train.py -m model.latent_dim=2,4,8,16,32" in COMMANDS


@pytest.mark.parametrize(
    "line, expected",
    [
        (
            "python train.py <same overrides> hydra.run.dir=logs/<run> ckpt_path=last  # resume",
            [["train.py", "hydra.run.dir=logs/x", "ckpt_path=last"]],
        ),
        ("pip install x && python generate.py ckpt_path=CKPT ...", [["generate.py", "ckpt_path=CKPT"]]),
        ('make evaluate ARGS="eval.cas=true" # + CAS', [["make", "evaluate", "ARGS=eval.cas=true"]]),
        ("/usr/bin/time -f %e .venv/bin/python train.py seed=1", [["train.py", "seed=1"]]),
        ("the make target", []),
    ],
)
def test_commands_are_read_as_a_shell_reads_them(line, expected):
    assert commands(line) == expected


def test_a_command_that_no_longer_composes_fails():
    """Negative controls: what `--cfg job` refuses, and what train.py refuses before any work."""
    from hydra.errors import ConfigCompositionException

    from cvae_lightning.errors import Error

    with pytest.raises(ConfigCompositionException, match="Could not override"):
        check_script("train.py", ["logger.wandb.entity=me"], Path("/tmp"))
    with pytest.raises(Error, match="every_n_train_steps"):
        check_script("train.py", ["callbacks.last_checkpoint.every_n_train_steps=100"], Path("/tmp"))
    with pytest.raises(Error, match="model.encoder"):
        check_script("train.py", ["model.encoder._target_=no.such.Encoder"], Path("/tmp"))


def anchor(heading: str) -> str:
    """GitHub's id of a Markdown heading: lower case, punctuation but `-` and `_` dropped, spaces as `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_docs_leads_somewhere():
    """Each relative link of the Markdown (and each `*.md#anchor` named in conf/) names a file that exists
    and, after `#`, one of its headings."""
    linked = [(doc, target) for doc in DOCS for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text())]
    for conf in (ROOT / "conf").rglob("*.yaml"):
        named = re.findall(r"docs/(\w+\.md#[\w-]+)", conf.read_text())
        linked += [(ROOT / "README.md", f"docs/{target}") for target in named]
    broken = []
    for doc, target in linked:
        if re.match(r"\w+://", target):
            continue
        path, _, fragment = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{doc.name}: {target}")
        elif fragment and file.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", file.read_text(), re.M)
            if fragment not in {anchor(h) for h in headings}:
                broken.append(f"{doc.name}: {target}")
    assert not broken, broken
