"""The gateway's own keys (SPEC §11.1): who may spend the members' keys through it.

Keys come from ``LBPROVIDER_SERVE_KEY`` (comma-separated, several allowed) or
``--key-file PATH``; with neither, the first start generates a random key and saves it
to ``<home>/serve.key`` (mode 0600), and later starts read it back.  Clients present
one as ``Authorization: Bearer KEY`` or ``x-api-key: KEY``; every presented key is
compared with every accepted one in constant time (``hmac.compare_digest``).  A key is
never logged nor printed: the gateway says only where it is.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lbprovider.errors import ConfigError

__all__ = ["KEY_ENV", "KEY_FILE_NAME", "ServeKeys", "presented_key"]

KEY_ENV = "LBPROVIDER_SERVE_KEY"
KEY_FILE_NAME = "serve.key"
_KEY_FILE_LIMIT = 64 * 1024
_MIN_LENGTH = 16


@dataclass(frozen=True)
class ServeKeys:
    """The accepted keys, and where they came from (said on stderr, never the keys)."""

    keys: tuple[bytes, ...]
    source: str
    generated: Path | None = None  # the file a new key was just written to

    @classmethod
    def load(
        cls, *, key_file: Path | None, home: Path, env: Mapping[str, str] | None = None
    ) -> ServeKeys:
        """The keys from the environment, ``key_file``, or ``<home>/serve.key`` (made
        with a new random key when it does not exist)."""
        env = os.environ if env is None else env
        if raw := env.get(KEY_ENV, "").strip():
            return cls(_split(raw, field=KEY_ENV), f"${KEY_ENV}")
        if key_file is not None:
            return cls(
                _split(_read(key_file, field="--key-file"), field="--key-file"), str(key_file)
            )
        path = home / KEY_FILE_NAME
        if os.path.lexists(path):
            return cls(_split(_read(path, field="serve.key"), field=str(path)), str(path))
        key = "lbp-" + secrets.token_urlsafe(32)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key + "\n")
        except OSError as exc:
            raise ConfigError(
                f"cannot write a new gateway key to {path}: {exc.strerror or exc}",
                field="LBPROVIDER_HOME",
                hint=f"set {KEY_ENV} or pass --key-file",
            ) from None
        return cls((key.encode(),), str(path), generated=path)

    def accepts(self, presented: str | None) -> bool:
        """Whether ``presented`` is one of the keys (constant time per key, and every
        key is compared, so the time says nothing about which one came close)."""
        if not presented:
            return False
        given = presented.encode()
        ok = False
        for key in self.keys:
            ok |= hmac.compare_digest(given, key)
        return ok


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a client sent: ``Authorization: Bearer KEY`` or ``x-api-key: KEY``."""
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return headers.get("x-api-key", "").strip() or None


def _split(raw: str, *, field: str) -> tuple[bytes, ...]:
    keys = tuple(k.strip().encode() for k in raw.split(",") if k.strip())
    if not keys:
        raise ConfigError(
            "holds no key", field=field, hint="put one key (or several, comma-separated)"
        )
    short = [k for k in keys if len(k) < _MIN_LENGTH]
    if short:
        raise ConfigError(
            f"a key shorter than {_MIN_LENGTH} characters is too easy to guess",
            field=field,
            hint="use a long random key: python3 -c 'import secrets; print(secrets.token_hex(32))'",
        )
    return keys


def _read(path: Path, *, field: str) -> str:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > _KEY_FILE_LIMIT:
            raise ConfigError(
                f"{path} is not a key file (a regular file of at most 64 KiB)", field=field
            )
        return path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror or exc}", field=field, hint="fix the path"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text", field=field) from None
