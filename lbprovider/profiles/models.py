"""Profile format models (SPEC §2.1, §2.2): the llxprt-compatible JSON format, parsed once.

A profile file is either a *member* (one backend) or a *load balancer*
(``"type": "loadbalancer"``).  :func:`parse_profile` turns the JSON object into a
frozen pydantic model or raises :class:`ProfileValidationError` naming the file
and every bad field path, in words a profile's author uses.

Schemas are built on first use (``defer_build``): a command that reads only member
profiles never builds the load-balancer schema, and one that reads none builds nothing.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
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

from lbprovider.config import NATIVE_PROVIDERS, Continuation, Policy, TransportKind
from lbprovider.errors import ProfileValidationError
from lbprovider.profiles.files import NAME_PATTERN, is_loadbalancer
from lbprovider.settings import LBSettings

__all__ = [
    "InlineMember",
    "LoadBalancerProfile",
    "MemberProfile",
    "MemberSettings",
    "Profile",
    "parse_inline_member",
    "parse_profile",
    "plain_message",
    "validation_error",
]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class MemberSettings(BaseModel):
    """A member's ``ephemeralSettings``: the keys we use, the rest kept and ignored."""

    model_config = ConfigDict(
        extra="allow",
        frozen=True,
        hide_input_in_errors=True,
        populate_by_name=True,
        defer_build=True,
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
    model_config = ConfigDict(
        extra="allow", frozen=True, hide_input_in_errors=True, defer_build=True
    )

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
