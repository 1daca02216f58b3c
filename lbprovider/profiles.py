"""Profile models (SPEC §2.1, §2.2): the llxprt-compatible JSON format, parsed once.

A profile file is either a *member* (one backend) or a *load balancer*
(``"type": "loadbalancer"``).  :func:`parse_profile` turns the JSON object into a
frozen pydantic model or raises :class:`ProfileValidationError` naming the file
and every bad field path.  :class:`Member` and :class:`LoadBalancerConfig` are the
resolved, ready-to-route forms the engine sees.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from lbprovider.errors import ConfigError, ProfileNameError, ProfileValidationError
from lbprovider.redaction import is_path_like, redact, redact_profile
from lbprovider.settings import LBSettings

__all__ = [
    "NAME_PATTERN",
    "NATIVE_PROVIDERS",
    "Continuation",
    "LoadBalancerConfig",
    "LoadBalancerProfile",
    "Member",
    "MemberProfile",
    "Policy",
    "TransportKind",
    "check_name",
    "parse_profile",
    "redact",
    "redact_profile",
    "resolve_key",
]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_MAX = 100
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KEY_FIELDS = ("auth-key",)


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


class Policy(StrEnum):
    """How the start member of a request is chosen (SPEC §3.1)."""

    ROUNDROBIN = "roundrobin"
    FAILOVER = "failover"


class TransportKind(StrEnum):
    """How a member is called (SPEC §4.1)."""

    NATIVE = "native"  # the provider's own HTTP API (OpenAI-compatible, Anthropic), no litellm
    LITELLM = "litellm"  # litellm.acompletion, for every other provider

    @classmethod
    def default_for(cls, provider: str) -> TransportKind:
        """``native`` for providers ``openai`` (whatever its base URL) and ``anthropic``,
        else ``litellm``."""
        return cls.NATIVE if provider.lower() in NATIVE_PROVIDERS else cls.LITELLM


# The providers whose API the native transport speaks (SPEC §4.1, §4.2).
NATIVE_PROVIDERS = frozenset({"openai", "anthropic"})


class Continuation(StrEnum):
    """Whether a member can continue a partial answer (SPEC §3.4)."""

    NONE = "none"
    PREFILL = "prefill"  # give the partial answer as a trailing assistant message


class MemberSettings(BaseModel):
    """A member's ``ephemeralSettings``: the keys we use, the rest kept and ignored."""

    model_config = ConfigDict(
        extra="allow", frozen=True, hide_input_in_errors=True, populate_by_name=True
    )

    base_url: StrictStr | None = Field(default=None, alias="base-url")
    auth_key: SecretStr | None = Field(default=None, alias="auth-key")
    auth_keyfile: StrictStr | None = Field(default=None, alias="auth-keyfile")
    auth_key_env: StrictStr | None = Field(default=None, alias="auth-key-env")
    context_limit: Annotated[StrictInt, Field(gt=0)] | None = Field(
        default=None, alias="context-limit"
    )
    transport: TransportKind | None = None
    max_output_tokens: Annotated[StrictInt, Field(gt=0)] | None = Field(
        default=None, alias="max-output-tokens"
    )
    continuation: Continuation = Continuation.NONE

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"https?://[^\s/]+", v):
            raise ValueError("must be an http:// or https:// URL")
        return v

    @field_validator("auth_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.fullmatch(v):
            raise ValueError("must be an environment variable name, not a value")
        return v

    @field_validator("auth_key", mode="before")
    @classmethod
    def _key_is_string(cls, v: Any) -> Any:
        if v is not None and (not isinstance(v, str) or not v.strip()):
            raise ValueError("must be a non-empty string")
        return v


class _ProfileBase(BaseModel):
    # Unknown top-level keys (llxprt's "auth", ...) are kept and ignored.
    model_config = ConfigDict(extra="allow", frozen=True, hide_input_in_errors=True)

    version: Annotated[StrictInt, Field(ge=1, le=1)] = 1
    modelParams: dict[str, Any] = Field(default_factory=dict)


class MemberProfile(_ProfileBase):
    """One backend: provider + model + base URL + key."""

    provider: Annotated[StrictStr, Field(min_length=1)]
    model: Annotated[StrictStr, Field(min_length=1)]
    ephemeralSettings: MemberSettings = Field(default_factory=MemberSettings)

    @field_validator("provider", "model")
    @classmethod
    def _no_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, v: str) -> str:
        from lbprovider.providers import KNOWN_PROVIDERS

        if v not in KNOWN_PROVIDERS:
            close = difflib.get_close_matches(v.lower(), KNOWN_PROVIDERS, n=1)
            suggestion = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown provider {v!r}{suggestion}")
        return v


class InlineMember(MemberProfile):
    """A member written inside a load-balancer file (it has its own ``name``)."""

    name: StrictStr

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        if not NAME_PATTERN.fullmatch(v) or ".." in v:
            raise ValueError("must match [A-Za-z0-9][A-Za-z0-9._-]*")
        return v


class LoadBalancerProfile(_ProfileBase):
    """A load balancer: a policy over member profiles."""

    type: StrictStr
    policy: Policy
    # Entries are names or inline objects; each is checked on resolution so that an
    # error names `profiles[i]` rather than pydantic's union branches.
    profiles: Annotated[list[Any], Field(min_length=1)]
    ephemeralSettings: LBSettings = Field(default_factory=LBSettings)

    @field_validator("policy", mode="before")
    @classmethod
    def _normalise_policy(cls, v: Any) -> Any:
        if isinstance(v, str):
            low = v.strip().lower()
            return {"round-robin": "roundrobin", "round_robin": "roundrobin"}.get(low, low)
        return v

    @field_validator("type")
    @classmethod
    def _is_lb(cls, v: str) -> str:
        if v.lower() != "loadbalancer":
            raise ValueError("must be 'loadbalancer' (or leave it out for a member profile)")
        return "loadbalancer"


Profile = MemberProfile | LoadBalancerProfile


def _field_path(loc: tuple[int | str, ...], prefix: str = "") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_PLAIN: dict[str, str] = {
    "missing": "is required",
    "string_type": "must be a string",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "dict_type": "must be a JSON object",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "list_type": "must be a JSON list",
    "tuple_type": "must be a JSON list",
    "string_too_short": "must not be empty",
    "too_short": "must not be empty",
    "extra_forbidden": "is not a known field",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "enum": "must be one of {expected}",
    "literal_error": "must be one of {expected}",
}


def plain_message(err: Mapping[str, Any]) -> str:
    """One pydantic error in plain words: what the value must be, and ``null`` named
    as such (pydantic says "NoneType", "valid tuple", "instance of LBSettings")."""
    kind = str(err.get("type", ""))
    ctx = err.get("ctx") or {}
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    template = _PLAIN.get(kind)
    if template is None:
        return str(err.get("msg", "is not valid"))
    try:
        text = template.format(**ctx)
    except (KeyError, IndexError):
        text = template
    if err.get("input", ...) is None and kind != "missing":
        text += " (null is not allowed here)"
    return text


def validation_error(
    exc: ValidationError, *, file: Path | None, prefix: str = "", what: str = ""
) -> ProfileValidationError:
    """Turn a pydantic error into one that names the file and every field path, in
    words a profile's author uses (not pydantic's)."""
    problems = [
        (_field_path(err["loc"], prefix) or prefix or "(top level)", plain_message(err))
        for err in exc.errors(include_url=False)
    ]
    first_field, first_msg = problems[0]
    if len(problems) == 1:
        message = first_msg
    else:
        rest = "; ".join(f"{f}: {m}" for f, m in problems[1:])
        message = f"{first_msg}; also {rest}"
    err = ProfileValidationError(
        (f"{what}: " if what else "") + message,
        file=file,
        field=first_field,
        hint="fix the value in the file; docs/profiles.md lists every field",
    )
    err.problems = problems  # type: ignore[attr-defined]
    return err


def is_loadbalancer(data: Mapping[str, Any]) -> bool:
    """True when a raw profile object declares itself a load balancer."""
    t = data.get("type")
    return isinstance(t, str) and t.lower() == "loadbalancer"


def parse_profile(data: Any, *, file: Path | None = None) -> Profile:
    """Validate a raw JSON value as a member or load-balancer profile."""
    if not isinstance(data, dict):
        raise ProfileValidationError(
            f"a profile must be a JSON object, not {type(data).__name__}",
            file=file,
            field="(top level)",
            hint="see docs/profiles.md for the format",
        )
    model: type[MemberProfile] | type[LoadBalancerProfile] = (
        LoadBalancerProfile if is_loadbalancer(data) or "profiles" in data else MemberProfile
    )
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, file=file) from None
    if isinstance(parsed, MemberProfile):
        _check_transport(parsed, file=file, prefix="")
    return parsed


def _check_transport(member: MemberProfile, *, file: Path | None, prefix: str) -> None:
    """A native member must be of a provider whose API the native transport speaks."""
    if (
        member.ephemeralSettings.transport is TransportKind.NATIVE
        and member.provider.lower() not in NATIVE_PROVIDERS
    ):
        raise ProfileValidationError(
            f"the native transport speaks providers {', '.join(sorted(NATIVE_PROVIDERS))}, "
            f"not {member.provider!r}",
            file=file,
            field=f"{prefix}ephemeralSettings.transport",
            hint='use "transport": "litellm", or provider "openai" for an OpenAI-compatible server',
        )


def parse_inline_member(data: Any, *, file: Path | None, field: str) -> InlineMember:
    """Validate an inline member object found at ``field`` of a load-balancer file."""
    if isinstance(data, dict) and is_loadbalancer(data):
        raise ProfileValidationError(
            "a member may not itself be a load balancer (no nesting)",
            file=file,
            field=field,
            hint="list that load balancer's members directly instead",
        )
    try:
        parsed = InlineMember.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, file=file, prefix=field) from None
    _check_transport(parsed, file=file, prefix=f"{field}.")
    return parsed


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


KEYFILE_LIMIT = 64 * 1024


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


@dataclass(frozen=True, slots=True)
class Member:
    """A resolved member: everything one backend call needs."""

    name: str
    provider: str
    model: str
    api_base: str | None
    api_key: SecretStr | None = field(repr=False)
    model_params: Mapping[str, Any]
    context_limit: int | None = None
    file: Path | None = None
    # None: the provider's default (TransportKind.default_for), filled in below.
    transport: TransportKind = None  # type: ignore[assignment]
    max_output_tokens: int | None = None
    continuation: Continuation = Continuation.NONE

    def __post_init__(self) -> None:
        if self.transport is None:
            object.__setattr__(self, "transport", TransportKind.default_for(self.provider))

    @property
    def litellm_model(self) -> str:
        """The litellm model string ``provider/model``."""
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True, slots=True)
class LoadBalancerConfig:
    """A resolved load balancer: its members in order, its settings, what was dropped."""

    name: str
    policy: Policy
    members: tuple[Member, ...]
    settings: LBSettings
    model_params: Mapping[str, Any]
    file: Path | None = None
    warnings: tuple[str, ...] = ()

    @property
    def member_names(self) -> list[str]:
        """Member names in routing order."""
        return [m.name for m in self.members]
