"""The one exception hierarchy of lbprovider.

::

    LBError                          every error we raise; .message, .retryable
    ├── ConfigError                  bad input the user must fix (CLI exit code 2)
    │   ├── ProfileNameError         a name that could become a path
    │   ├── ProfileNotFoundError     no file with that name on the search path
    │   ├── ProfileFormatError       unreadable or truncated JSON (names line and column)
    │   ├── ProfileValidationError   a field with a bad value (names the field path)
    │   └── InvalidRequestError      a request that cannot be sent as given (not valid text,
    │                                a message of the wrong shape): no member is asked
    ├── AttemptError                 one failed call to one member: .member, .status,
    │   │                            .retry_after, .code, .network, .timeout (written once)
    │   ├── TransportError           a transport's failure in neutral terms: what every
    │   │                            transport raises, and all that classification reads
    │   └── BackendError             one member failed one attempt, classified (.kind)
    │       ├── FirstChunkTimeoutError   no content chunk within timeout_ms (retryable)
    │       ├── StreamIdleTimeoutError   no chunk for stream_idle_timeout_ms after the first
    │       └── StreamInterruptedError   failed after text reached the caller (no replay)
    ├── NoBackendAvailableError      every member failed or was skipped (.failures)
    │   └── RequestRejectedError     every member rejected the request itself (400-like)
    └── RefusedError                 the gateway refused a client at its door (.status:
                                     401 no or wrong key, 403 a browser origin)

Every error carries structured fields as well as a readable message, so hosts can
map them (to ``llm.ModelError``, to litellm's exception classes) without parsing
text.  Messages never contain a key: callers pass redacted values only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TypedDict

__all__ = [
    "AttemptError",
    "BackendError",
    "ConfigError",
    "FailureKind",
    "FirstChunkTimeoutError",
    "InvalidRequestError",
    "LBError",
    "MemberFailure",
    "NoBackendAvailableError",
    "ProfileFormatError",
    "ProfileNameError",
    "ProfileNotFoundError",
    "ProfileValidationError",
    "RefusedError",
    "RequestRejectedError",
    "StreamIdleTimeoutError",
    "StreamInterruptedError",
    "TransportError",
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


class InvalidRequestError(ConfigError):
    """The caller's request cannot be sent as given (SPEC §3.2 item 5): text that is not
    valid UTF-8, a message list of the wrong shape.  Refused before any member is asked,
    it counts against no member."""


class FailureFields(TypedDict):
    """:class:`AttemptError`'s fields, as keyword arguments."""

    member: str | None
    status: int | None
    retry_after: float | None
    code: str | None
    network: bool
    timeout: bool
    limits: Mapping[str, str] | None


class AttemptError(LBError):
    """What one failed call to one member says, in fields every layer shares.

    ``member`` is the member profile's name, ``status`` the HTTP status when there was a
    response, ``retry_after`` the backend's wait in seconds (``Retry-After`` as seconds
    or an HTTP date, or ``retry-after-ms``), ``code`` the provider's error code
    (``context_length_exceeded``, ``content_policy_violation``, ...), ``network`` a
    connection that failed or broke, ``timeout`` a wait that ran out (the client's, or
    the engine's first-chunk or idle limit).  Written once, so a transport's facts reach
    routing whole (:class:`TransportError` → :class:`BackendError`).
    """

    def __init__(
        self,
        message: str,
        *,
        member: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        code: str | None = None,
        network: bool = False,
        timeout: bool = False,
        limits: Mapping[str, str] | None = None,
        retryable: bool | None = None,
    ) -> None:
        self.member = member
        self.status = status
        self.retry_after = retry_after
        self.code = code
        self.network = network
        self.timeout = timeout
        # The answer's rate-limit headers, when it came with some (SPEC §3.6).
        self.limits = limits
        super().__init__(message, retryable=retryable)

    def failure_fields(self) -> FailureFields:
        """The shared fields, to build another error of this family from this one."""
        return {
            "member": self.member,
            "status": self.status,
            "retry_after": self.retry_after,
            "code": self.code,
            "network": self.network,
            "timeout": self.timeout,
            "limits": self.limits,
        }


class TransportError(AttemptError):
    """One call to a member failed, in terms no client library owns (SPEC §4.1).

    Each transport maps its own exceptions to this one at its boundary (as httpx maps
    lower-layer errors), so routing rules never see litellm's, aiohttp's or an SDK's
    classes; the fields are :class:`AttemptError`'s.  The message has the member's
    secrets removed already.
    """


class FailureKind(StrEnum):
    """What a failed attempt means for routing (SPEC §3.2)."""

    RETRYABLE = "retryable"  # retry on the same member, then move on; counts for the breaker
    IMMEDIATE = "immediate"  # 401/402/403 and the like: move on at once; counts for the breaker
    REQUEST = "request"  # the request itself is bad here (400, 404, 413, 422, context window)
    FINAL = "final"  # the request ends: a content-policy refusal (unless failing over on it)


class BackendError(AttemptError):
    """One member failed one attempt, classified.

    The fields are :class:`AttemptError`'s, plus ``kind``, what the failure means for
    routing, and ``interrupted``: the stream broke after its first chunk.  Neither a
    timeout nor an interruption is retried on the same member: a silent backend stays
    silent, a broken answer is not asked again.  ``retryable`` is true for
    :attr:`FailureKind.RETRYABLE`.
    """

    def __init__(
        self,
        message: str,
        *,
        member: str | None = None,
        status: int | None = None,
        kind: FailureKind = FailureKind.RETRYABLE,
        retry_after: float | None = None,
        network: bool = False,
        code: str | None = None,
        timeout: bool = False,
        interrupted: bool = False,
        limits: Mapping[str, str] | None = None,
    ) -> None:
        self.kind = kind
        self.interrupted = interrupted
        super().__init__(
            message,
            member=member,
            status=status,
            retry_after=retry_after,
            code=code,
            network=network,
            timeout=timeout,
            limits=limits,
            retryable=kind is FailureKind.RETRYABLE,
        )

    @property
    def counts_for_breaker(self) -> bool:
        """Request-specific errors (and refusals) say nothing about the backend's health."""
        return self.kind in (FailureKind.RETRYABLE, FailureKind.IMMEDIATE)

    def reason(self) -> str:
        """A short reason for the exhausted-everything message."""
        status = f"{self.status} " if self.status is not None else ""
        return f"{status}{self.message}"


class FirstChunkTimeoutError(BackendError):
    """No content chunk arrived within ``timeout_ms`` (SPEC §4); retryable."""

    def __init__(self, timeout_s: float, *, member: str | None = None) -> None:
        self.timeout_s = timeout_s
        super().__init__(
            f"no first chunk within {timeout_s * 1000:.0f} ms",
            member=member,
            kind=FailureKind.RETRYABLE,
            timeout=True,
        )


class StreamIdleTimeoutError(BackendError):
    """No chunk for ``stream_idle_timeout_ms`` after the answer had started (SPEC §3.4)."""

    def __init__(self, idle_s: float, *, member: str | None = None) -> None:
        self.idle_s = idle_s
        super().__init__(
            f"the stream went silent for {idle_s * 1000:.0f} ms after it had started",
            member=member,
            kind=FailureKind.RETRYABLE,
            timeout=True,
            interrupted=True,
        )


class StreamInterruptedError(BackendError):
    """The member failed after text had reached the caller; nothing is replayed.

    ``cause`` is that member's classified failure (drop, reset, idle, cut short).
    """

    def __init__(self, cause: BackendError) -> None:
        self.cause = cause
        fields = cause.failure_fields()
        fields["retry_after"] = None  # a broken answer is never waited for
        super().__init__(
            f"{cause.member} failed after the answer had started: {cause.message}",
            kind=cause.kind,
            interrupted=True,
            **fields,
        )


@dataclass(frozen=True, slots=True)
class MemberFailure:
    """Why one member could not serve a request: its final error, or a skip."""

    member: str
    reason: str
    status: int | None = None
    kind: FailureKind | None = None  # None for a skip
    skipped: bool = False
    recovery_at: float | None = None  # epoch seconds, for a breaker skip
    retry_after: float | None = None  # seconds, when the backend said


RETRY_AFTER_MAX_S = 30.0  # the longest Retry-After a caller is given (SPEC §3.3)


class NoBackendAvailableError(LBError):
    """Nothing could serve the request. Lists every member with its reason.

    ``retryable`` says whether trying again later can help; ``recovery_at`` (epoch
    seconds) is when the first skipped member recovers, when every member was skipped;
    ``retry_after`` the seconds until then, or else until the first member that said
    ``Retry-After`` may be asked again; ``status`` the status every member failed with,
    when they agree (429: all rate limited; 401: every key rejected).
    """

    def __init__(
        self,
        profile: str,
        failures: Sequence[MemberFailure],
        *,
        retryable: bool,
        recovery_at: float | None = None,
        now: float | None = None,
    ) -> None:
        self.profile = profile
        self.failures = tuple(failures)
        self.recovery_at = recovery_at
        statuses = {f.status for f in self.failures if f.status is not None}
        self.status = statuses.pop() if len(statuses) == 1 else None
        tried = [f for f in self.failures if not f.skipped]
        keys_rejected = bool(tried) and all(f.status in (401, 403) for f in tried)
        # Every member was asked and every one rejected its key (a gateway answers 401).
        self.keys_rejected = keys_rejected and len(tried) == len(self.failures)
        self.retry_after: float | None = None
        if recovery_at is not None and now is not None:
            self.retry_after = max(0.0, recovery_at - now)
        elif tried and all(f.retry_after is not None for f in tried):
            self.retry_after = min(f.retry_after or 0.0 for f in tried)
        if self.retry_after is not None:
            # SPEC §3.3: a caller asks again soon, and meets a recovered member (a panic
            # probe serves then), rather than wait out the breakers' doubled recovery.
            self.retry_after = min(self.retry_after, RETRY_AFTER_MAX_S)
        lines = "; ".join(f"{f.member}: {f.reason}" for f in self.failures)
        if self.keys_rejected:
            retryable = False
            advice = "every member rejected its key: check the members' keys"
        else:
            advice = "retrying later may help" if retryable else "retrying will not help"
        if recovery_at is not None and now is not None:
            advice += f"; the first member recovers in {max(0.0, recovery_at - now):.0f} s"
        super().__init__(
            f"no backend of {profile!r} could serve the request ({lines}); {advice}",
            retryable=retryable,
        )


class RequestRejectedError(NoBackendAvailableError):
    """Every member rejected the request itself (400, 404, 413, 422, context, policy)."""


class RefusedError(LBError):
    """The gateway refused a client before reading its request (SPEC §11.1): ``status``
    401 (no key, or a wrong one) or 403 (a web page's ``Origin``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
