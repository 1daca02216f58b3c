"""The profile store (SPEC §2): find, read, resolve and atomically write profile files.

Reads go through the search path (first hit wins).  Edits (save, push, pop) work
on the raw JSON object, so keys and unknown llxprt settings survive untouched, are
validated as a whole before anything is written, and land with temp file + rename
at mode 0600: a crash never leaves a half-written profile.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import json
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lbprovider.errors import (
    ConfigError,
    LBError,
    ProfileFormatError,
    ProfileNotFoundError,
    ProfileValidationError,
)
from lbprovider.paths import home_dir, profile_search_dirs
from lbprovider.profiles import (
    LoadBalancerConfig,
    LoadBalancerProfile,
    Member,
    MemberProfile,
    Policy,
    TransportKind,
    check_name,
    is_loadbalancer,
    parse_inline_member,
    parse_profile,
    resolve_key,
)
from lbprovider.settings import SETTING_KEYS

__all__ = [
    "PROFILE_LIMIT",
    "ProfileEntry",
    "ProfileStore",
    "Validation",
    "atomic_write_json",
    "profile_lock",
    "read_profile_json",
]

_SUFFIX = ".json"


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


PROFILE_LIMIT = 1024 * 1024


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
            candidate = d / f"{name}{_SUFFIX}"
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
            for p in sorted(d.glob(f"*{_SUFFIX}")):
                name = p.name[: -len(_SUFFIX)]
                if _valid_name(name):
                    found.setdefault(name, []).append(p)
        return [ProfileEntry(n, ps[0], tuple(ps[1:])) for n, ps in sorted(found.items())]

    @staticmethod
    def read_raw(path: Path) -> Any:
        """Read a profile file's JSON; a truncated file names the line and column."""
        return read_profile_json(path)

    def load(self, name: str) -> tuple[Path, MemberProfile | LoadBalancerProfile]:
        """Find and parse profile ``name`` (member or load balancer)."""
        path = self.path_of(name)
        return path, parse_profile(self.read_raw(path), file=path)

    # -- resolution ----------------------------------------------------------------------

    def load_loadbalancer(self, name: str) -> LoadBalancerConfig:
        """Load a load-balancer profile and resolve its members through the store."""
        path, profile = self.load(name)
        if not isinstance(profile, LoadBalancerProfile):
            raise ConfigError(
                f"{name!r} is a member profile, not a load balancer",
                file=path,
                field="type",
                hint='load balancers have "type": "loadbalancer"; use a load-balancer name',
            )
        return self.resolve(name, profile, file=path)

    def resolve(
        self,
        name: str,
        profile: LoadBalancerProfile,
        *,
        file: Path | None = None,
        strict: bool = False,
        keys: bool = True,
    ) -> LoadBalancerConfig:
        """Resolve members in order. Missing ones are dropped with a warning unless ``strict``.

        Duplicates keep their first position (warning); a member that is itself a
        load balancer is an error; a member whose key cannot be resolved is left out with
        a warning (``keys`` False, as when saving: the member stays, and a key that cannot
        be resolved now is only a warning, SPEC §2.2); too few usable members is an error.
        """
        warnings: list[str] = []
        members: list[Member] = []
        seen: dict[str, int] = {}
        for i, entry in enumerate(profile.profiles):
            where = f"profiles[{i}]"
            if isinstance(entry, str):
                check_name(entry, file=file, field=where)
                member_name = entry
                if member_name in seen:
                    warnings.append(
                        f"{where}: duplicate member {member_name!r} ignored "
                        f"(kept at profiles[{seen[member_name]}])"
                    )
                    continue
                member_path = self.find(member_name)
                if member_path is None:
                    if strict:
                        raise ProfileNotFoundError(member_name, self.dirs, file=file, field=where)
                    warnings.append(f"{where}: member {member_name!r} not found; skipped")
                    continue
                raw = self.read_raw(member_path)
                if isinstance(raw, dict) and is_loadbalancer(raw):
                    raise _nesting_error(member_name, file=file, field=where)
                parsed = parse_profile(raw, file=member_path)
                assert isinstance(parsed, MemberProfile)
                member_file: Path | None = member_path
            elif isinstance(entry, dict):
                inline = parse_inline_member(entry, file=file, field=where)
                member_name = inline.name
                if member_name in seen:
                    warnings.append(
                        f"{where}: duplicate member {member_name!r} ignored "
                        f"(kept at profiles[{seen[member_name]}])"
                    )
                    continue
                parsed = inline
                member_file = file
            else:
                raise ProfileValidationError(
                    f"must be a member profile name or an inline member object, "
                    f"not {type(entry).__name__}",
                    file=file,
                    field=where,
                    hint="write the member's profile name as a string",
                )
            seen[member_name] = i
            key = None
            try:
                key = resolve_key(
                    parsed,
                    file=member_file,
                    field_prefix="" if isinstance(entry, str) else f"{where}.",
                    env=self._env,
                )
            except ConfigError as exc:
                if keys:
                    # SPEC §2.2: an unusable member is left out like a missing one.
                    warnings.append(f"{where}: member {member_name!r} left out: {exc}")
                    continue
                # Saving: the member is saved and left out at use until its key resolves.
                warnings.append(
                    f"{where}: member {member_name!r} is left out until its key can be "
                    f"resolved: {exc}"
                )
                key = None
            members.append(
                Member(
                    name=member_name,
                    provider=parsed.provider,
                    model=parsed.model,
                    api_base=parsed.ephemeralSettings.base_url,
                    api_key=key,
                    model_params={**parsed.modelParams, **profile.modelParams},
                    context_limit=parsed.ephemeralSettings.context_limit,
                    file=member_file,
                    transport=parsed.ephemeralSettings.transport
                    or TransportKind.default_for(parsed.provider),
                    max_output_tokens=parsed.ephemeralSettings.max_output_tokens,
                    continuation=parsed.ephemeralSettings.continuation,
                )
            )
        minimum = 2 if profile.policy is Policy.FAILOVER else 1
        if len(members) < minimum:
            need = "at least 2 usable members" if minimum == 2 else "a usable member"
            dropped = f": {'; '.join(warnings)}" if warnings else ""
            raise ProfileValidationError(
                f"a {profile.policy.value} load balancer needs {need}, "
                f"{len(members)} left{dropped}",
                file=file,
                field="profiles",
            )
        return LoadBalancerConfig(
            name=name,
            policy=profile.policy,
            members=tuple(members),
            settings=profile.ephemeralSettings,
            model_params=dict(profile.modelParams),
            file=file,
            warnings=tuple(warnings),
        )

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
            path = directory / f"{name}{_SUFFIX}"
        elif existing is not None:
            path = existing
        else:
            path = self.write_dir / f"{name}{_SUFFIX}"
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
        paths = [self.find(m) if _valid_name(m) else None for m in members]
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
        path, data = self._read_lb(name)
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
            raise _nesting_error(member, file=path, field=f"profiles[{len(names)}]")
        data["profiles"] = [*data["profiles"], member]
        config = self._check_lb(name, data, file=path)
        return self.write(name, data), config

    def pop(self, name: str) -> tuple[Path, str, LoadBalancerConfig]:
        """Remove the last member of load balancer ``name``; returns the removed name."""
        with profile_lock(self.path_of(name)):
            return self._pop(name)

    def _pop(self, name: str) -> tuple[Path, str, LoadBalancerConfig]:
        path, data = self._read_lb(name)
        entries = list(data["profiles"])
        policy = str(data.get("policy", "")).lower()
        minimum = 2 if policy == Policy.FAILOVER.value else 1
        if len(entries) <= minimum:
            raise ConfigError(
                f"{name!r} has {len(entries)} member(s); a {policy} load balancer needs "
                f"at least {minimum}",
                file=path,
                field="profiles",
                hint="push another member first, or delete the profile",
            )
        removed = entries.pop()
        removed_name = _entry_names([removed])[0]
        data["profiles"] = entries
        config = self._check_lb(name, data, file=path)
        return self.write(name, data), removed_name, config

    def _read_lb(self, name: str) -> tuple[Path, dict[str, Any]]:
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
        return path, data

    def _check_lb(self, name: str, data: Mapping[str, Any], *, file: Path) -> LoadBalancerConfig:
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


def _valid_name(name: str) -> bool:
    try:
        check_name(name)
    except ConfigError:
        return False
    return True


def _entry_names(entries: list[Any]) -> list[str]:
    return [e if isinstance(e, str) else str(e.get("name", "?")) for e in entries]


def _nesting_error(member: str, *, file: Path | None, field: str) -> ConfigError:
    return ConfigError(
        f"member {member!r} is itself a load balancer; load balancers do not nest",
        file=file,
        field=field,
        hint="list that load balancer's members directly instead",
    )


def _unknown_setting_warnings(extra: Mapping[str, Any]) -> list[str]:
    out = []
    for key in extra:
        close = difflib.get_close_matches(key, SETTING_KEYS, n=1, cutoff=0.8)
        if close:
            out.append(
                f"ephemeralSettings.{key}: unknown setting, ignored (did you mean {close[0]!r}?)"
            )
    return out
