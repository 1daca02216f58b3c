"""Where lbprovider keeps things (SPEC §2): its home and the profile search path."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["home_dir", "profile_search_dirs", "project_profiles_dir"]


def home_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$LBPROVIDER_HOME``, else the platform user config dir (``~/.config/lbprovider``)."""
    env = os.environ if env is None else env
    explicit = env.get("LBPROVIDER_HOME")
    if explicit:
        return Path(explicit).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir("lbprovider", appauthor=False))


def project_profiles_dir(cwd: Path) -> Path | None:
    """The nearest ``.lbprovider/profiles/`` walking up from ``cwd``, if any."""
    for directory in (cwd, *cwd.parents):
        candidate = directory / ".lbprovider" / "profiles"
        if candidate.is_dir():
            return candidate
    return None


def profile_search_dirs(
    cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> list[Path]:
    """The profile directories in search order (first hit wins), without duplicates."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    dirs: list[Path] = []
    for part in env.get("LBPROVIDER_PROFILES_PATH", "").split(os.pathsep):
        if part.strip():
            dirs.append(Path(part).expanduser())
    project = project_profiles_dir(cwd.resolve())
    if project is not None:
        dirs.append(project)
    dirs.append(home_dir(env) / "profiles")
    seen: set[Path] = set()
    unique: list[Path] = []
    for d in dirs:
        key = d.resolve() if d.exists() else d.absolute()
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique
