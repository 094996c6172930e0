"""The project's errors, each one line naming the fix; entry points print `error: <message>` and exit 1."""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


class Error(Exception):
    """Base of every error a user can cause; its message is one line that names the fix."""


class ConfigError(Error, ValueError):
    """A config value that cannot work, named with what is allowed."""


class DataError(Error):
    """Missing, corrupt or unreachable data."""


class CheckpointError(Error):
    """A file that is not a checkpoint of the kind asked for."""


class WriteError(Error):
    """A file could not be written; the file before it, if any, is whole."""


class NonFiniteLossError(Error, FloatingPointError):
    """The loss became NaN or infinite."""


class Interrupted(Error):
    """Training stopped from outside (a signal, another rank's end); last.ckpt can resume it."""


def one_line_errors(main: Callable) -> Callable:
    """`main`, with the project's errors turned into `error: <message>` and exit status 1."""

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
        shell.set_custom_exc((Error,), lambda *args, **kwargs: print(f"error: {args[2]}"))


def first_line(error: BaseException) -> str:
    """A library's error as one line: its message's first line, or its type when it has none."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# value checks, called by the objects that own each value
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
    ok = ok and (value > low if above else value >= low)
    check(key, value, ok, f"a number {'>' if above else '>='} {low:g}")
    return value


def check_bool(key: str, value: Any) -> bool:
    check(key, value, isinstance(value, bool), "true or false")
    return value


def check_choice(key: str, value: Any, choices: Collection[Any]) -> Any:
    ok = isinstance(value, str | bool) and value in choices
    check(key, value, ok, "one of " + ", ".join(map(str, choices)))
    return value


def check_int_list(key: str, value: Any, low: int = 1, example: str = "[512,256]") -> list[int]:
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0
    ok = ok and all(_is_int(v) and v >= low for v in value)
    check(key, value, ok, f"a list of integers >= {low}, e.g. {example}")
    return [int(v) for v in value]
