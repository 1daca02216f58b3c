"""Key resolution (SPEC §2.2): ``auth-key``, ``auth-keyfile``, ``auth-key-env``.

A key is read when a member is resolved for use, never when a profile is saved; a key
file is a regular file of at most 64 KiB (a FIFO would block), and a value that does
not look like a path is redacted in every message (it may be a key pasted in the wrong
field).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from lbprovider.errors import ConfigError
from lbprovider.redaction import is_path_like, redact

if TYPE_CHECKING:
    from lbprovider.profiles.models import MemberProfile

__all__ = ["KEYFILE_LIMIT", "resolve_key"]

KEYFILE_LIMIT = 64 * 1024


def resolve_key(
    member: MemberProfile,
    *,
    file: Path | None = None,
    field_prefix: str = "",
    env: Mapping[str, str] | None = None,
) -> SecretStr | None:
    """Resolve a member's key: ``auth-key``, ``auth-keyfile``, ``auth-key-env``, else None.

    None means "let litellm use its provider default" (e.g. ``OPENAI_API_KEY``).
    """
    env = os.environ if env is None else env
    s = member.ephemeralSettings
    where = f"{field_prefix}ephemeralSettings"
    if s.auth_key is not None:
        return s.auth_key
    if s.auth_keyfile is not None:
        return SecretStr(_read_keyfile(s.auth_keyfile, file=file, field=f"{where}.auth-keyfile"))
    if s.auth_key_env is not None:
        value = env.get(s.auth_key_env, "").strip()
        if not value:
            raise ConfigError(
                f"environment variable {s.auth_key_env} is not set",
                file=file,
                field=f"{where}.auth-key-env",
                hint=f"export {s.auth_key_env}=... or use auth-keyfile",
            )
        return SecretStr(value)
    return None


def _read_keyfile(value: str, *, file: Path | None, field: str) -> str:
    """The key in a key file: a regular file of at most 64 KiB (a FIFO would block)."""
    # A value that does not look like a path may be a key pasted in the wrong field.
    shown = repr(value) if is_path_like(value) else f"{redact(value)} (redacted: not a path)"

    def error(problem: str, hint: str) -> ConfigError:
        return ConfigError(f"key file {shown} {problem}", file=file, field=field, hint=hint)

    path = Path(value).expanduser()
    try:
        info = path.stat()
    except OSError as exc:
        raise error(
            f"cannot be read: {exc.strerror or exc}",
            "create the file, fix the path, or use auth-key-env",
        ) from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise error(f"is {kind}", "point auth-keyfile at a file holding only the key")
    if info.st_size > KEYFILE_LIMIT:
        raise error(f"is larger than {KEYFILE_LIMIT // 1024} KiB", "a key file holds only the key")
    try:
        text = path.read_text(encoding="utf-8-sig").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise error(
            f"cannot be read: {getattr(exc, 'strerror', None) or exc}", "fix its permissions"
        ) from None
    if not text:
        raise error("is empty", "put the key in the file")
    return text
