"""The profile store (SPEC §2): find, read, validate and atomically edit profile files.

Reads go through the search path (first hit wins).  Edits (save, push, pop) work
on the raw JSON object, so keys and unknown llxprt settings survive untouched, are
validated as a whole before anything is written, and land with temp file + rename
at mode 0600: a crash never leaves a half-written profile.

The format models (pydantic) are imported by the methods that validate, not here:
finding, listing names and a report's :meth:`ProfileStore.outline` cost no pydantic.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lbprovider.config import LoadBalancerConfig, Outline
from lbprovider.errors import ConfigError, LBError, ProfileNotFoundError
from lbprovider.paths import home_dir, profile_search_dirs
from lbprovider.profiles.files import (
    SUFFIX,
    atomic_write_json,
    check_name,
    is_loadbalancer,
    profile_lock,
    read_profile_json,
    valid_name,
)
from lbprovider.profiles.resolve import nesting_error, outline, resolve

if TYPE_CHECKING:
    from lbprovider.profiles.models import LoadBalancerProfile, MemberProfile

__all__ = ["ProfileEntry", "ProfileStore", "Validation"]


@dataclass(frozen=True, slots=True)
class ProfileEntry:
    """One profile name on the search path: the file that wins and those it shadows."""

    name: str
    path: Path
    shadowed: tuple[Path, ...] = ()


@dataclass(slots=True)
class Validation:
    """What ``validate`` found for one profile."""

    name: str
    path: Path | None
    kind: str = ""
    errors: list[LBError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed)."""
        return not self.errors


class ProfileStore:
    """Profiles on a search path, with atomic edits.

    ``dirs`` overrides the search path (tests, hosts); by default it is computed
    from the environment and the working directory (SPEC §2).  New profiles are
    written to ``write_dir`` (default ``<home>/profiles``); existing ones are
    edited where they are.
    """

    def __init__(
        self,
        dirs: Iterable[Path] | None = None,
        *,
        write_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self._env = os.environ if env is None else env
        self.dirs = list(dirs) if dirs is not None else profile_search_dirs(cwd, self._env)
        self.write_dir = write_dir if write_dir is not None else home_dir(self._env) / "profiles"

    # -- finding and reading -------------------------------------------------------------

    def find(self, name: str) -> Path | None:
        """Where profile ``name`` is, or None. The name is checked first.

        Anything at the path counts (a directory, a FIFO, a dangling symlink): reading
        it then says what it is, rather than "not found" or a hang.
        """
        check_name(name)
        for d in self.dirs:
            candidate = d / f"{name}{SUFFIX}"
            if os.path.lexists(candidate):
                return candidate
        return None

    def path_of(self, name: str, *, file: Path | None = None, field: str | None = None) -> Path:
        """Like :meth:`find`, but a missing profile is an error naming the search path."""
        path = self.find(name)
        if path is None:
            raise ProfileNotFoundError(name, self.dirs, file=file, field=field)
        return path

    def entries(self) -> list[ProfileEntry]:
        """Every profile on the search path, sorted by name, with shadowed copies."""
        found: dict[str, list[Path]] = {}
        for d in self.dirs:
            if not d.is_dir():
                continue
            for p in sorted(d.glob(f"*{SUFFIX}")):
                name = p.name[: -len(SUFFIX)]
                if valid_name(name):
                    found.setdefault(name, []).append(p)
        return [ProfileEntry(n, ps[0], tuple(ps[1:])) for n, ps in sorted(found.items())]

    @staticmethod
    def read_raw(path: Path) -> Any:
        """Read a profile file's JSON; a truncated file names the line and column."""
        return read_profile_json(path)

    def load(self, name: str) -> tuple[Path, MemberProfile | LoadBalancerProfile]:
        """Find and parse profile ``name`` (member or load balancer)."""
        from lbprovider.profiles.models import parse_profile

        path = self.path_of(name)
        return path, parse_profile(self.read_raw(path), file=path)

    # -- resolution ----------------------------------------------------------------------

    def load_loadbalancer(self, name: str) -> LoadBalancerConfig:
        """Load a load-balancer profile and resolve its members through the store."""
        path, profile = self._load_lb(name)
        return self.resolve(name, profile, file=path)

    def _load_lb(self, name: str) -> tuple[Path, LoadBalancerProfile]:
        from lbprovider.profiles.models import LoadBalancerProfile

        path, profile = self.load(name)
        if not isinstance(profile, LoadBalancerProfile):
            raise ConfigError(
                f"{name!r} is a member profile, not a load balancer",
                file=path,
                field="type",
                hint='load balancers have "type": "loadbalancer"; use a load-balancer name',
            )
        return path, profile

    def resolve(
        self,
        name: str,
        profile: LoadBalancerProfile,
        *,
        file: Path | None = None,
        strict: bool = False,
        keys: bool = True,
    ) -> LoadBalancerConfig:
        """Resolve members in order (:func:`lbprovider.profiles.resolve.resolve`). Missing
        ones are dropped with a warning unless ``strict``; with ``keys`` False a key that
        cannot be resolved now is only a warning (saving, reports: SPEC §2.2)."""
        return resolve(
            name, profile, source=self, env=self._env, file=file, strict=strict, keys=keys
        )

    def outline(self, name: str) -> Outline:
        """Load balancer ``name`` as a report needs it: member names and models, no keys
        (SPEC §2.2: a report may be read where none of the keys is). A plain file is read
        without pydantic; any other is resolved in full, so its errors are the usual ones."""
        path = self.path_of(name)
        found = outline(name, self.read_raw(path), source=self, file=path)
        if found is not None:
            return found
        path, profile = self._load_lb(name)
        return self.resolve(name, profile, file=path, keys=False).outline

    # -- validation ----------------------------------------------------------------------

    def validate(self, names: Iterable[str] | None = None) -> list[Validation]:
        """Check the named profiles (default: every profile) and report each problem."""
        if names is None:
            return [self._validate_one(e.name, e.path) for e in self.entries()]
        results: list[Validation] = []
        for name in names:
            try:
                path = self.path_of(name)
            except ConfigError as exc:
                results.append(Validation(name, None, errors=[exc]))
                continue
            results.append(self._validate_one(name, path))
        return results

    def _validate_one(self, name: str, path: Path) -> Validation:
        from lbprovider.profiles.keys import resolve_key
        from lbprovider.profiles.models import LoadBalancerProfile, parse_profile

        result = Validation(name, path)
        try:
            profile = parse_profile(self.read_raw(path), file=path)
            if isinstance(profile, LoadBalancerProfile):
                config = self.resolve(name, profile, file=path)
                result.kind = (
                    f"loadbalancer ({config.policy.value}: {', '.join(config.member_names)})"
                )
                result.warnings.extend(config.warnings)
                result.warnings.extend(
                    _unknown_setting_warnings(profile.ephemeralSettings.extra_keys)
                )
            else:
                result.kind = f"member ({profile.provider}/{profile.model})"
                try:
                    resolve_key(profile, file=path, env=self._env)
                except ConfigError as exc:
                    # The profile is sound; its key is missing here and now (SPEC §2.2):
                    # load balancers leave it out until it resolves, with a warning.
                    result.warnings.append(f"key cannot be resolved now: {exc}")
        except ConfigError as exc:
            result.errors.append(exc)
        return result

    # -- edits ---------------------------------------------------------------------------

    def write(self, name: str, data: Mapping[str, Any], *, directory: Path | None = None) -> Path:
        """Write profile ``name`` atomically: in place if it exists, else to ``directory``."""
        check_name(name)
        existing = self.find(name)
        if directory is not None:
            path = directory / f"{name}{SUFFIX}"
        elif existing is not None:
            path = existing
        else:
            path = self.write_dir / f"{name}{SUFFIX}"
        try:
            atomic_write_json(path, dict(data))
        except OSError as exc:
            raise ConfigError(
                f"cannot write the file: {exc.strerror or exc}",
                file=path,
                hint="check that its directory exists and that you may write to it",
            ) from None
        return path

    def save_loadbalancer(
        self,
        name: str,
        *,
        policy: str,
        members: list[str],
        settings: Mapping[str, Any] | None = None,
        directory: Path | None = None,
    ) -> tuple[Path, LoadBalancerConfig]:
        """Create or replace a load-balancer profile; every member must exist."""
        from lbprovider.settings import SETTING_KEYS

        check_name(name)
        for key in settings or {}:
            if key not in SETTING_KEYS:
                close = difflib.get_close_matches(key, SETTING_KEYS, n=1)
                raise ConfigError(
                    f"unknown setting {key!r}",
                    field=f"ephemeralSettings.{key}",
                    hint=f"did you mean {close[0]!r}?" if close else "see docs/profiles.md",
                )
        existing = self.find(name)
        if existing is not None and directory is None:
            raw = self.read_raw(existing)
            if not (isinstance(raw, dict) and is_loadbalancer(raw)):
                raise ConfigError(
                    f"{name!r} already exists as a member profile; refusing to overwrite it",
                    file=existing,
                    hint="pick another name for the load balancer",
                )
        data: dict[str, Any] = {
            "version": 1,
            "type": "loadbalancer",
            "policy": policy,
            "profiles": list(members),
            "modelParams": {},
            "ephemeralSettings": dict(settings or {}),
        }
        if directory is None:
            directory = existing.parent if existing else self._members_dir(members)
        target = directory / f"{name}.json"
        try:
            config = self._check_lb(name, data, file=target)
        except ConfigError as exc:
            if os.path.lexists(target):
                raise
            # Nothing is written yet: the error is about the command's own arguments.
            raise ConfigError(
                exc.reason,
                field=_argument_of(exc.field, members),
                hint=None if exc.hint and "in the file" in exc.hint else exc.hint,
            ) from None
        _make_dir(target.parent)
        with profile_lock(target):
            return self.write(name, data, directory=target.parent), config

    def _members_dir(self, members: list[str]) -> Path:
        """Where a new load balancer goes: the one search-path directory all its members
        come from (a project's ``.lbprovider/profiles/``, so it travels with them), else
        ``write_dir``."""
        paths = [self.find(m) if valid_name(m) else None for m in members]
        parents = {p.parent for p in paths if p is not None}
        if None in paths or len(parents) != 1:
            return self.write_dir
        (only,) = parents
        return only if only in self.dirs else self.write_dir

    def push(self, name: str, member: str) -> tuple[Path, LoadBalancerConfig]:
        """Append ``member`` to load balancer ``name``'s list, with validation."""
        with profile_lock(self.path_of(name)):
            return self._push(name, member)

    def _push(self, name: str, member: str) -> tuple[Path, LoadBalancerConfig]:
        path, data, _ = self._read_lb(name)
        check_name(member, field="MEMBER")
        names = _entry_names(data["profiles"])
        if member in names:
            raise ConfigError(
                f"{member!r} is already a member of {name!r} (profiles[{names.index(member)}])",
                file=path,
                field="profiles",
                hint="nothing to do; use 'profiles pop' to remove the last member",
            )
        member_path = self.path_of(member, field="MEMBER")
        raw = self.read_raw(member_path)
        if isinstance(raw, dict) and is_loadbalancer(raw):
            raise nesting_error(member, file=path, field=f"profiles[{len(names)}]")
        data["profiles"] = [*data["profiles"], member]
        config = self._check_lb(name, data, file=path)
        return self.write(name, data), config

    def pop(self, name: str) -> tuple[Path, str, LoadBalancerConfig]:
        """Remove the last member of load balancer ``name``; returns the removed name."""
        with profile_lock(self.path_of(name)):
            return self._pop(name)

    def _pop(self, name: str) -> tuple[Path, str, LoadBalancerConfig]:
        path, data, profile = self._read_lb(name)
        entries = list(data["profiles"])
        minimum = profile.policy.minimum_members
        if len(entries) <= minimum:
            raise ConfigError(
                f"{name!r} has {len(entries)} member(s); a {profile.policy.value} load "
                f"balancer needs at least {minimum}",
                file=path,
                field="profiles",
                hint="push another member first, or delete the profile",
            )
        removed = entries.pop()
        removed_name = _entry_names([removed])[0]
        data["profiles"] = entries
        config = self._check_lb(name, data, file=path)
        return self.write(name, data), removed_name, config

    def _read_lb(self, name: str) -> tuple[Path, dict[str, Any], LoadBalancerProfile]:
        from lbprovider.profiles.models import LoadBalancerProfile, parse_profile

        path = self.path_of(name)
        data = self.read_raw(path)
        if not (isinstance(data, dict) and is_loadbalancer(data)):
            raise ConfigError(
                f"{name!r} is a member profile, not a load balancer",
                file=path,
                hint="push and pop edit load-balancer profiles",
            )
        profile = parse_profile(data, file=path)  # a broken file is reported, never edited
        assert isinstance(profile, LoadBalancerProfile)
        return path, data, profile

    def _check_lb(self, name: str, data: Mapping[str, Any], *, file: Path) -> LoadBalancerConfig:
        from lbprovider.profiles.models import LoadBalancerProfile, parse_profile

        profile = parse_profile(dict(data), file=file)
        assert isinstance(profile, LoadBalancerProfile)
        # Saving never requires keys (SPEC §2.2): they are resolved when the profile is used.
        return self.resolve(name, profile, file=file, strict=True, keys=False)


def _argument_of(field: str | None, members: list[str]) -> str | None:
    """The command-line argument a field of a not-yet-written profile came from."""
    if field is None:
        return None
    if field == "policy":
        return "--policy"
    if field.startswith("ephemeralSettings."):
        return f"--set {field.removeprefix('ephemeralSettings.')}"
    if field.startswith("profiles["):
        index = field[len("profiles[") :].split("]", 1)[0]
        if index.isdigit() and int(index) < len(members):
            return f"MEMBER {members[int(index)]!r}"
        return "MEMBERS"
    return field


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the profile directory {directory}: {exc.strerror or exc}",
            field="LBPROVIDER_HOME",
            hint="point LBPROVIDER_HOME at a directory you can write, or use --dir",
        ) from None


def _entry_names(entries: list[Any]) -> list[str]:
    return [e if isinstance(e, str) else str(e.get("name", "?")) for e in entries]


def _unknown_setting_warnings(extra: Mapping[str, Any]) -> list[str]:
    from lbprovider.settings import SETTING_KEYS

    out = []
    for key in extra:
        close = difflib.get_close_matches(key, SETTING_KEYS, n=1, cutoff=0.8)
        if close:
            out.append(
                f"ephemeralSettings.{key}: unknown setting, ignored (did you mean {close[0]!r}?)"
            )
    return out
