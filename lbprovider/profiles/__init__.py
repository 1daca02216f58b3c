"""The profile wing (SPEC §2): profile files in, the engine's config out.

- :mod:`~lbprovider.profiles.files`: names, the one path check, strict JSON reading,
  atomic writes, the edit lock;
- :mod:`~lbprovider.profiles.models`: the llxprt-compatible format (pydantic), its
  validation messages;
- :mod:`~lbprovider.profiles.keys`: key resolution;
- :mod:`~lbprovider.profiles.resolve`: a load-balancer profile →
  :class:`~lbprovider.config.LoadBalancerConfig` (or a report's ``Outline``);
- :mod:`~lbprovider.profiles.store`: :class:`ProfileStore`, the search path and edits.

The names below are re-exported lazily: importing the package (or its pydantic-free
modules) does not import pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lbprovider.profiles.files import (
        atomic_write_json,
        check_name,
        check_profile_file,
        profile_lock,
        read_profile_json,
    )
    from lbprovider.profiles.keys import resolve_key
    from lbprovider.profiles.models import (
        InlineMember,
        LoadBalancerProfile,
        MemberProfile,
        parse_profile,
    )
    from lbprovider.profiles.store import ProfileEntry, ProfileStore, Validation

__all__ = [
    "InlineMember",
    "LoadBalancerProfile",
    "MemberProfile",
    "ProfileEntry",
    "ProfileStore",
    "Validation",
    "atomic_write_json",
    "check_name",
    "check_profile_file",
    "parse_profile",
    "profile_lock",
    "read_profile_json",
    "resolve_key",
]

_HOMES = {
    "atomic_write_json": "files",
    "check_name": "files",
    "check_profile_file": "files",
    "profile_lock": "files",
    "read_profile_json": "files",
    "resolve_key": "keys",
    "InlineMember": "models",
    "LoadBalancerProfile": "models",
    "MemberProfile": "models",
    "parse_profile": "models",
    "ProfileEntry": "store",
    "ProfileStore": "store",
    "Validation": "store",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'lbprovider.profiles' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lbprovider.profiles.{home}"), name)
