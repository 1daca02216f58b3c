"""Resolution (SPEC §2.1, §2.2): a load-balancer profile becomes what the engine routes.

:func:`resolve` gives a :class:`~lbprovider.config.LoadBalancerConfig`: members in
order, duplicates dropped (first position kept), missing members dropped (or an error
when ``strict``), no nesting, keys resolved (a member whose key cannot be resolved is
left out), then the policy's minimum number of members.  :func:`outline` walks the same
list the same way for a report, from the raw JSON alone: member names and models, no
keys, no pydantic; a profile it does not fully understand goes through :func:`resolve`,
whose error then names the problem.  Each rule is written once, below, and used by both
and by the store's edits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from lbprovider.config import (
    DEFAULT_FAILURE_WINDOW_MS,
    LoadBalancerConfig,
    Member,
    Outline,
    Policy,
    TransportKind,
)
from lbprovider.errors import ConfigError, ProfileNotFoundError, ProfileValidationError
from lbprovider.profiles.files import check_name, is_loadbalancer

if TYPE_CHECKING:
    from pydantic import SecretStr

    from lbprovider.profiles.models import LoadBalancerProfile, MemberProfile

__all__ = [
    "MemberSource",
    "check_minimum",
    "duplicate_warning",
    "nesting_error",
    "outline",
    "resolve",
]

T = TypeVar("T")


class MemberSource(Protocol):
    """Where member profiles are found: the store's search path."""

    @property
    def dirs(self) -> list[Path]:
        """The search path, for a "not found" error."""
        ...

    def find(self, name: str) -> Path | None:
        """Where profile ``name`` is, or None."""
        ...

    def read_raw(self, path: Path) -> Any:
        """A profile file's JSON."""
        ...


# -- the rules, once ---------------------------------------------------------------------


def duplicate_warning(where: str, name: str, kept_at: int) -> str:
    """The warning for a member listed twice: the first position is kept."""
    return f"{where}: duplicate member {name!r} ignored (kept at profiles[{kept_at}])"


def nesting_error(member: str, *, file: Path | None, field: str) -> ConfigError:
    """A member that is itself a load balancer: load balancers do not nest."""
    return ConfigError(
        f"member {member!r} is itself a load balancer; load balancers do not nest",
        file=file,
        field=field,
        hint="list that load balancer's members directly instead",
    )


def check_minimum(
    policy: Policy, count: int, *, file: Path | None, warnings: list[str] | tuple[str, ...]
) -> None:
    """Too few usable members for the policy is an error naming what was dropped."""
    if count >= policy.minimum_members:
        return
    need = "at least 2 usable members" if policy.minimum_members == 2 else "a usable member"
    dropped = f": {'; '.join(warnings)}" if warnings else ""
    raise ProfileValidationError(
        f"a {policy.value} load balancer needs {need}, {count} left{dropped}",
        file=file,
        field="profiles",
    )


# -- the walk over a load balancer's list --------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Found:
    """One member of the list that survived the walk, parsed by the caller's parser."""

    index: int
    name: str
    parsed: Any
    file: Path | None  # where the member is written: its own file, or the LB's (inline)
    inline: bool

    @property
    def where(self) -> str:
        return f"profiles[{self.index}]"


def _walk(
    entries: list[Any],
    *,
    source: MemberSource,
    file: Path | None,
    strict: bool,
    warnings: list[str],
    parse_file: Callable[[Any, Path], T],
    parse_inline: Callable[[Any, str], tuple[str, T]],
) -> list[_Found]:
    """The members of ``entries`` in order: names checked and found, duplicates and
    missing members dropped with a warning (missing ones an error when ``strict``),
    nesting refused; each member parsed by ``parse_file`` (a named member's JSON) or
    ``parse_inline`` (an inline object: its name and its parse)."""
    found: list[_Found] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        where = f"profiles[{i}]"
        if isinstance(entry, str):
            name = check_name(entry, file=file, field=where)
            if name in seen:
                warnings.append(duplicate_warning(where, name, seen[name]))
                continue
            path = source.find(name)
            if path is None:
                if strict:
                    raise ProfileNotFoundError(name, source.dirs, file=file, field=where)
                warnings.append(f"{where}: member {name!r} not found; skipped")
                continue
            raw = source.read_raw(path)
            if isinstance(raw, dict) and is_loadbalancer(raw):
                raise nesting_error(name, file=file, field=where)
            found_one = _Found(i, name, parse_file(raw, path), path, inline=False)
        elif isinstance(entry, dict):
            name, parsed = parse_inline(entry, where)
            if name in seen:
                warnings.append(duplicate_warning(where, name, seen[name]))
                continue
            found_one = _Found(i, name, parsed, file, inline=True)
        else:
            raise ProfileValidationError(
                f"must be a member profile name or an inline member object, "
                f"not {type(entry).__name__}",
                file=file,
                field=where,
                hint="write the member's profile name as a string",
            )
        seen[name] = i
        found.append(found_one)
    return found


# -- the engine's form -----------------------------------------------------------------


def resolve(
    name: str,
    profile: LoadBalancerProfile,
    *,
    source: MemberSource,
    env: Mapping[str, str],
    file: Path | None = None,
    strict: bool = False,
    keys: bool = True,
) -> LoadBalancerConfig:
    """Resolve ``profile``'s members in order (see the module docstring).

    A member whose key cannot be resolved is left out with a warning; with ``keys``
    False (saving, reports) it stays, and the key is only a warning (SPEC §2.2).
    """
    from lbprovider.profiles.models import MemberProfile, parse_inline_member, parse_profile

    def parse_file(raw: Any, path: Path) -> MemberProfile:
        parsed = parse_profile(raw, file=path)
        assert isinstance(parsed, MemberProfile)  # the walk refused nesting
        return parsed

    def parse_inline(raw: Any, where: str) -> tuple[str, MemberProfile]:
        inline = parse_inline_member(raw, file=file, field=where)
        return inline.name, inline

    warnings: list[str] = []
    found = _walk(
        profile.profiles,
        source=source,
        file=file,
        strict=strict,
        warnings=warnings,
        parse_file=parse_file,
        parse_inline=parse_inline,
    )
    members: list[Member] = []
    for f in found:
        try:
            key = _key(f, env)
        except ConfigError as exc:
            if keys:
                # SPEC §2.2: an unusable member is left out like a missing one.
                warnings.append(f"{f.where}: member {f.name!r} left out: {exc}")
                continue
            # Saving: the member is saved and left out at use until its key resolves.
            warnings.append(
                f"{f.where}: member {f.name!r} is left out until its key can be resolved: {exc}"
            )
            key = None
        members.append(_member(f, key, profile.modelParams))
    check_minimum(profile.policy, len(members), file=file, warnings=warnings)
    return LoadBalancerConfig(
        name=name,
        policy=profile.policy,
        members=tuple(members),
        settings=profile.ephemeralSettings,
        model_params=dict(profile.modelParams),
        file=file,
        warnings=tuple(warnings),
    )


def _key(found: _Found, env: Mapping[str, str]) -> SecretStr | None:
    from lbprovider.profiles.keys import resolve_key

    prefix = f"{found.where}." if found.inline else ""
    return resolve_key(found.parsed, file=found.file, field_prefix=prefix, env=env)


def _member(found: _Found, key: SecretStr | None, lb_params: Mapping[str, Any]) -> Member:
    parsed: MemberProfile = found.parsed
    s = parsed.ephemeralSettings
    return Member(
        name=found.name,
        provider=parsed.provider,
        model=parsed.model,
        api_base=s.base_url,
        api_key=key,
        model_params={**parsed.modelParams, **lb_params},
        context_limit=s.context_limit,
        file=found.file,
        transport=s.transport or TransportKind.default_for(parsed.provider),
        max_output_tokens=s.max_output_tokens,
        continuation=s.continuation,
    )


# -- a report's form -------------------------------------------------------------------


class _NotPlain(Exception):
    """The light reading met something only full validation may judge."""


def outline(name: str, raw: Any, *, source: MemberSource, file: Path | None) -> Outline | None:
    """A report's view of the load balancer whose JSON is ``raw``, read without pydantic
    and without keys; None when the file is not plain enough to read that way (an inline
    member, a policy or a setting spelled other than canonically, a field of the wrong
    type): the caller then resolves it in full, and that error names the problem."""
    try:
        if not (isinstance(raw, dict) and is_loadbalancer(raw)) or not _is_one(raw):
            raise _NotPlain
        policy = Policy(str(raw.get("policy")))
        entries = raw.get("profiles")
        if not isinstance(entries, list) or not entries:
            raise _NotPlain
        warnings: list[str] = []
        found = _walk(
            entries,
            source=source,
            file=file,
            strict=False,
            warnings=warnings,
            parse_file=_plain_model,
            parse_inline=_not_plain,
        )
        check_minimum(policy, len(found), file=file, warnings=warnings)
        return Outline(
            name=name,
            policy=policy,
            models={f.name: f.parsed for f in found},
            failure_window_ms=_plain_window(raw.get("ephemeralSettings", {})),
            warnings=tuple(warnings),
        )
    except (_NotPlain, ValueError):
        return None


def _plain_model(raw: Any, path: Path) -> str:
    """A member file's ``provider/model``, when both are plain non-blank strings."""
    del path
    if not isinstance(raw, dict) or "profiles" in raw or not _is_one(raw):
        raise _NotPlain
    provider, model = raw.get("provider"), raw.get("model")
    if not (isinstance(provider, str) and provider.strip() and isinstance(model, str)):
        raise _NotPlain
    if not model.strip():
        raise _NotPlain
    return f"{provider}/{model}"


def _is_one(raw: dict[str, Any]) -> bool:
    version = raw.get("version", 1)
    return type(version) is int and version == 1


def _not_plain(raw: Any, where: str) -> tuple[str, str]:
    raise _NotPlain


def _plain_window(settings: Any) -> int:
    if not isinstance(settings, dict):
        raise _NotPlain
    value = settings.get("circuit_breaker_failure_window_ms", DEFAULT_FAILURE_WINDOW_MS)
    if type(value) is not int or not 0 < value <= 86_400_000:
        raise _NotPlain
    return value
