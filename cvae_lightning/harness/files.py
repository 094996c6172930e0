"""Files a reader sees whole or not at all: a synced temporary file renamed over it (docs/design.md)."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from contextlib import suppress
from pathlib import Path

from cvae_lightning.errors import WriteError


def leftovers(path: Path) -> list[Path]:
    """Temporary files of `path` a killed write left behind."""
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """`path` holds `data` whole, or is as it was and a one-line WriteError says why."""
    path = Path(path)
    # hidden, ending in .tmp: no reader takes it for the file
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(3)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in leftovers(path):
            old.unlink(missing_ok=True)
        # 0o666: the user's umask applies, as with open() (mkstemp would give 0600)
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException as error:
        with suppress(OSError):  # first: the free space reported is then what is left without it
            tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise WriteError(why_not_written(path, error, len(data))) from None
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def _fsync_folder(folder: Path) -> None:
    """The rename on disk: a folder's entry survives a power loss once the folder is synced."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:  # some filesystems (and Windows) cannot sync a folder
        if error.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def why_not_written(path: Path, error: OSError, needed: int) -> str:
    name = errno.errorcode.get(error.errno, "")
    reason = f"{error.strerror or error}" + (f" ({name})" if name else "")
    folder = next((p for p in path.parents if p.exists()), path.parent)  # the folder may be what failed
    try:
        free = size(shutil.disk_usage(folder).free)
    except OSError:
        free = "unknown space"
    return f"could not write {path}: {reason}; {free} free in {path.parent}, {size(needed)} needed"


def size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"
