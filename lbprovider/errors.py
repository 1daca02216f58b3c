"""The one exception hierarchy of lbprovider.

::

    LBError                          every error we raise; .message, .retryable
    ├── ConfigError                  bad input the user must fix (CLI exit code 2)
    │   ├── ProfileNameError         a name that could become a path
    │   ├── ProfileNotFoundError     no file with that name on the search path
    │   ├── ProfileFormatError       unreadable or truncated JSON (names line and column)
    │   └── ProfileValidationError   a field with a bad value (names the field path)
    └── BackendError                 one member failed one attempt (.member, .status)
        (more request-time errors join here with the routing engine)

Every error carries structured fields as well as a readable message, so hosts can
map them (to ``llm.ModelError``, to litellm's exception classes) without parsing
text.  Messages never contain a key: callers pass redacted values only.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "BackendError",
    "ConfigError",
    "LBError",
    "ProfileFormatError",
    "ProfileNameError",
    "ProfileNotFoundError",
    "ProfileValidationError",
]


class LBError(Exception):
    """Base class of every lbprovider error."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return self.message


class ConfigError(LBError):
    """Bad input: a profile, a setting or an argument. Fix it and run again.

    ``file`` is the profile file concerned (when there is one) and ``field`` the
    dotted field path inside it (``profiles[2]``, ``ephemeralSettings.timeout_ms``).
    """

    def __init__(
        self,
        message: str,
        *,
        file: Path | str | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.file = Path(file) if file is not None else None
        self.field = field
        self.hint = hint
        where = ""
        if self.file is not None:
            where = f"{self.file}"
            if field:
                where += f": {field}"
            where += ": "
        elif field:
            where = f"{field}: "
        text = f"{where}{message}"
        if hint:
            text += f" ({hint})"
        super().__init__(text, retryable=False)
        self.reason = message


class ProfileNameError(ConfigError):
    """A profile name outside ``[A-Za-z0-9][A-Za-z0-9._-]*``."""


class ProfileNotFoundError(ConfigError):
    """No profile with that name in any directory of the search path."""

    def __init__(
        self, name: str, searched: list[Path], *, file: Path | None = None, field: str | None = None
    ) -> None:
        self.name = name
        self.searched = list(searched)
        dirs = ", ".join(str(d) for d in searched) or "(no directories)"
        super().__init__(
            f"profile {name!r} not found; searched {dirs}",
            file=file,
            field=field,
            hint="create it, fix the name, or add its directory to LBPROVIDER_PROFILES_PATH",
        )


class ProfileFormatError(ConfigError):
    """A profile file that is not valid JSON (truncated, hand-edited)."""

    def __init__(
        self, message: str, *, file: Path, line: int | None = None, column: int | None = None
    ) -> None:
        self.line = line
        self.column = column
        pos = f" at line {line} column {column}" if line is not None else ""
        super().__init__(
            f"not valid JSON{pos}: {message}",
            file=file,
            hint="fix the file or restore it from a backup",
        )


class ProfileValidationError(ConfigError):
    """A field of a profile holds a value we cannot use."""


class BackendError(LBError):
    """One member failed one attempt.

    ``member`` is the member profile's name, ``status`` the HTTP status when there
    was one, ``retry_after`` the backend's ``Retry-After`` in seconds when given.
    """

    def __init__(
        self,
        message: str,
        *,
        member: str | None = None,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.member = member
        self.status = status
        self.retry_after = retry_after
        super().__init__(message, retryable=retryable)
