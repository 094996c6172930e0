"""The project's errors: each says in one line what is wrong and what is allowed; entry points print it as
`error: <message>` and exit 1 (`one_line_errors`), never with a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


class Error(Exception):
    """Base of every error a user can cause; its message is one line that names the fix."""


class ConfigError(Error, ValueError):
    """A config value that cannot work: the message names the key, the value and what is allowed."""


class DataError(Error):
    """Missing, corrupt or unreachable data."""


class CheckpointError(Error):
    """A file that is not a checkpoint of the kind asked for."""


class WriteError(Error):
    """A file could not be written (a full disk, a read-only folder); the file before it, if any, is whole."""


class NonFiniteLossError(Error, FloatingPointError):
    """The loss became NaN or infinite."""


class Interrupted(Error):
    """Training stopped from outside (a signal, another rank's end); last.ckpt holds the state to resume."""


def one_line_errors(main: Callable) -> Callable:
    """`main`, with the project's errors turned into `error: <message>` and exit status 1: the one path from
    an Error to the printed line (entry points, Hydra callbacks, the sweeper)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Error as error:
            raise SystemExit(f"error: {error}") from None

    return wrapper


def one_line_errors_in_notebook() -> None:
    """In IPython: the project's errors print as `error: <message>` (the cell still fails)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    if shell := get_ipython():
        shell.set_custom_exc(
            (Error,), lambda shell, etype, value, tb, tb_offset=None: print(f"error: {value}")
        )


def first_line(error: BaseException) -> str:
    """A library's error as one line: its message's first line, or its type when it has none."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# -- value checks: the objects that own a value call these in their constructors ----------------------
def shown(value: Any) -> str:
    """A value as the user would type it back: strings quoted (so a typed number shows as text)."""
    if isinstance(value, Path):
        return str(value)
    return repr(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


def refuse(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{key}={shown(value)} is not allowed: expected {expected}")


def check(key: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise refuse(key, value, expected)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(key: str, value: Any, low: int = 0) -> int:
    check(key, value, _is_int(value) and value >= low, f"an integer >= {low}")
    return value


def check_number(key: str, value: Any, low: float = 0.0, *, above: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    check(
        key,
        value,
        ok and (value > low if above else value >= low),
        f"a number {'>' if above else '>='} {low:g}",
    )
    return value


def check_bool(key: str, value: Any) -> bool:
    check(key, value, isinstance(value, bool), "true or false")
    return value


def check_choice(key: str, value: Any, choices: Iterable[Any]) -> Any:
    choices = tuple(choices)
    ok = isinstance(value, str | bool) and value in choices
    check(key, value, ok, "one of " + ", ".join(map(str, choices)))
    return value


def check_int_list(key: str, value: Any, low: int = 1, example: str = "[512,256]") -> list[int]:
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0
    check(
        key,
        value,
        ok and all(_is_int(v) and v >= low for v in value),
        f"a list of integers >= {low}, e.g. {example}",
    )
    return [int(v) for v in value]
