"""Profile files, safely (SPEC §2): names that never become paths, the one check of a
profile path, strict JSON reading, atomic writes and the edit lock.

Nothing here imports pydantic: listing and reports read files through this module
alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lbprovider.errors import ConfigError, ProfileFormatError, ProfileNameError

__all__ = [
    "NAME_MAX",
    "NAME_PATTERN",
    "PROFILE_LIMIT",
    "SUFFIX",
    "atomic_write_json",
    "check_name",
    "check_profile_file",
    "is_loadbalancer",
    "profile_lock",
    "read_profile_json",
    "valid_name",
]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_MAX = 100
SUFFIX = ".json"
PROFILE_LIMIT = 1024 * 1024


def check_name(name: str, *, file: Path | None = None, field: str | None = None) -> str:
    """Return ``name`` if it is a valid profile name, else raise ProfileNameError.

    A name never becomes an arbitrary path: no ``/``, no ``..``, no leading dot, at most
    :data:`NAME_MAX` characters.
    """
    if isinstance(name, str) and len(name) > NAME_MAX:
        raise ProfileNameError(
            f"profile name of {len(name)} characters ({name[:20]!r}...)",
            file=file,
            field=field,
            hint=f"use at most {NAME_MAX} characters",
        )
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise ProfileNameError(
            f"invalid profile name {name!r}",
            file=file,
            field=field,
            hint="use letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    return name


def valid_name(name: str) -> bool:
    """Whether :func:`check_name` accepts ``name``."""
    try:
        check_name(name)
    except ConfigError:
        return False
    return True


def is_loadbalancer(data: Mapping[str, Any]) -> bool:
    """True when a raw profile object declares itself a load balancer."""
    t = data.get("type")
    return isinstance(t, str) and t.lower() == "loadbalancer"


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` with temp file + fsync + rename, mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def check_profile_file(path: Path) -> None:
    """The one check of a profile path: a regular file of sensible size, or an error
    that says what is there instead (never "not found", never a hang on a FIFO)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise ConfigError("the file does not exist", file=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", file=path) from None
    if stat.S_ISLNK(info.st_mode):
        try:
            info = path.stat()
        except OSError:
            target = os.readlink(path)
            raise ConfigError(
                f"is a symbolic link to {target!r}, which does not exist",
                file=path,
                hint="fix or remove the link",
            ) from None
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(
            "is a directory, not a profile file", file=path, hint="profiles are NAME.json files"
        )
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(
            "is not a regular file (a FIFO, socket or device)",
            file=path,
            hint="profiles are NAME.json files",
        )
    if info.st_size > PROFILE_LIMIT:
        raise ConfigError(
            f"is larger than {PROFILE_LIMIT // 1024} KiB",
            file=path,
            hint="a profile is a small JSON object",
        )


def read_profile_json(path: Path) -> Any:
    """A profile file's JSON: UTF-8 (a BOM is fine), no duplicate keys, not absurdly
    nested; every problem is a :class:`ConfigError` naming the file."""
    check_profile_file(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ProfileFormatError("the file is not UTF-8 text", file=path) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read the file: {exc.strerror or exc}",
            file=path,
            hint="check that it is readable",
        ) from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise ProfileFormatError(exc.msg, file=path, line=exc.lineno, column=exc.colno) from None
    except _DuplicateKey as exc:
        raise ProfileFormatError(
            f"the key {exc.key!r} appears twice in one object (which one was meant?)", file=path
        ) from None
    except RecursionError:
        raise ProfileFormatError("it is nested too deeply to be a profile", file=path) from None


@contextlib.contextmanager
def profile_lock(path: Path) -> Iterator[None]:
    """Hold the exclusive lock that serialises edits of a profile (SPEC §2): ten
    processes pushing ten members at once leave all ten in the file.

    The lock is taken on the profile's directory (``flock`` works on a directory's file
    descriptor), so no lock file is left beside the profiles; edits are rare enough
    that one lock per directory costs nothing.
    """
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
