"""Built providers, reused per load balancer until its profile files change.

A host that serves many requests (the gateway, the LiteLLM handler, the ``llm``
plugin) should not re-read every profile and key file per request: building a provider
parses the load balancer and its members, resolves keys and makes a router.
:class:`ProviderCache` keeps one built :class:`~lbprovider.provider.LoadBalancingProvider`
per name with a *stamp* — the modification time and size of the load balancer's file, of
each member's file and of every directory on the search path (a member file that appears
or goes away changes its directory) — and builds again when the stamp differs.  State
lives in the state store, not in the provider, so a rebuilt provider carries on where
the old one was (breakers, positions, counters).

Key files and key variables are read when a provider is built: a key file edited in
place is seen after the next profile change or restart (docs/gateway.md says so).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from lbprovider.errors import ConfigError
from lbprovider.profiles.store import ProfileStore
from lbprovider.provider import LoadBalancingProvider

__all__ = ["ProviderCache", "cached_provider", "loadbalancer_names"]

Stamp = tuple[tuple[str, int, int], ...]

# (path, mtime_ns, size) -> whether that file is a load balancer, so listing reads a
# file again only when it changed; bounded, as a long-running gateway sees many edits.
_KINDS: LRUCache[tuple[str, int, int], bool] = LRUCache(maxsize=4096)


def _stat(path: Path) -> tuple[str, int, int]:
    try:
        info = path.stat()
    except OSError:
        return (str(path), -1, -1)
    return (str(path), info.st_mtime_ns, info.st_size)


def loadbalancer_names(profiles: ProfileStore) -> list[str]:
    """The load-balancer profiles on the search path, by name (first hit wins), reading
    each file only for its ``type`` and only when it changed."""
    names = []
    for entry in profiles.entries():
        key = _stat(entry.path)
        kind = _KINDS.get(key)
        if kind is None:
            try:
                raw = ProfileStore.read_raw(entry.path)
            except ConfigError:
                raw = None  # a broken file is reported by `profiles validate`
            kind = _KINDS[key] = isinstance(raw, dict) and (
                str(raw.get("type", "")).lower() == "loadbalancer"
            )
        if kind:
            names.append(entry.name)
    return names


class ProviderCache:
    """One built provider per load balancer, rebuilt when its files change.

    ``build`` makes a provider from a name (default: from the profile store, with
    ``provider_kwargs`` — a store, hooks — passed to every provider).
    """

    def __init__(
        self,
        profiles: ProfileStore | None = None,
        *,
        build: Callable[[str], LoadBalancingProvider] | None = None,
        **provider_kwargs: Any,
    ) -> None:
        self.profiles = profiles or ProfileStore()
        self._kwargs = provider_kwargs
        self._build = build or self._from_store
        self._built: dict[str, tuple[Stamp, LoadBalancingProvider]] = {}

    def _from_store(self, name: str) -> LoadBalancingProvider:
        return LoadBalancingProvider.from_profile(name, profiles=self.profiles, **self._kwargs)

    def _stamp(self, provider: LoadBalancingProvider | None, name: str) -> Stamp:
        files: set[Path] = set(self.profiles.dirs)
        if provider is not None:
            config = provider.config
            files.update(f for f in (config.file, *(m.file for m in config.members)) if f)
        else:
            found = self.profiles.find(name)
            if found is not None:
                files.add(found)
        return tuple(sorted(_stat(p) for p in files))

    def get(self, name: str) -> LoadBalancingProvider:
        """The provider of load balancer ``name`` (raises what building it raises)."""
        cached = self._built.get(name)
        if cached is not None and cached[0] == self._stamp(cached[1], name):
            return cached[1]
        provider = self._build(name)
        self._built[name] = (self._stamp(provider, name), provider)
        return provider

    def forget(self, name: str | None = None) -> None:
        """Drop one built provider (or all): the next :meth:`get` builds again."""
        if name is None:
            self._built.clear()
        else:
            self._built.pop(name, None)


class _Shared:
    """The process's caches, one per search path, for hosts that have no object of their
    own to keep one in (the LiteLLM handler, the ``llm`` plugin)."""

    store: object | None = None
    caches: dict[tuple[Path, ...], ProviderCache] = {}  # noqa: RUF012 - reset with the store


def cached_provider(name: str) -> LoadBalancingProvider:
    """The built provider of load balancer ``name`` for this process's search path and
    state store, reused until its profile files change (hosts call this per request)."""
    from lbprovider.state import default_store

    profiles = ProfileStore()
    store = default_store()
    if _Shared.store is not store:  # a new state store (tests reset it): build anew
        _Shared.store, _Shared.caches = store, {}
    key = tuple(profiles.dirs)
    cache = _Shared.caches.get(key)
    if cache is None:
        cache = _Shared.caches[key] = ProviderCache(profiles, store=store)
    return cache.get(name)
