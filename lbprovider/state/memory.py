"""The in-memory state store: one process, no persistence (``memory://``)."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from lbprovider.state import Updater

__all__ = ["MemoryStore"]


class MemoryStore:
    """A dict behind a lock.

    Updaters are pure (they build new values and never mutate their input), so the
    engine's path shares stored values without copying; the synchronous reads
    (``get_many``, ``scan``) hand out deep copies, since other callers may mutate them.
    Copying on every request cost about 1 ms of CPU (metrics carry latency samples).
    """

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        # The engine calls from the event loop thread only, but hosts may call
        # stats() from another thread; the lock keeps every update atomic anyway.
        self._lock = threading.Lock()

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Current values of ``keys``."""
        with self._lock:
            return {k: copy.deepcopy(self._data[k]) for k in keys if k in self._data}

    def scan(self, prefix: str) -> dict[str, Any]:
        """Every key with ``prefix``."""
        with self._lock:
            return {k: copy.deepcopy(v) for k, v in self._data.items() if k.startswith(prefix)}

    def update(self, key: str, fn: Updater) -> Any:
        """Atomic read-modify-write of one key."""
        return self.update_many({key: fn})[key]

    def update_many(
        self, updates: Mapping[str, Updater], *, ttl_s: Mapping[str, float] | None = None
    ) -> dict[str, Any]:
        """Atomic read-modify-write of several keys, all or nothing (the new values are
        shared: read only).  ``ttl_s`` is ignored: this store ends with its process."""
        with self._lock:
            out = {key: fn(self._data.get(key)) for key, fn in updates.items()}
            for key, new in out.items():
                if new is None:
                    self._data.pop(key, None)
                else:
                    self._data[key] = new
        return out

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key with ``prefix``."""
        with self._lock:
            for k in [k for k in self._data if k.startswith(prefix)]:
                del self._data[k]

    async def aget_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Immediate, and shared (the engine only reads what it gets)."""
        with self._lock:
            return {k: self._data[k] for k in keys if k in self._data}

    async def aupdate_many(
        self,
        updates: Mapping[str, Updater],
        *,
        ttl_s: Mapping[str, float] | None = None,
        read: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Immediate: nothing here blocks."""
        out = self.update_many(updates)
        with self._lock:
            out.update((k, self._data[k]) for k in read if k not in out and k in self._data)
        return out

    def post_many(
        self, updates: Mapping[str, Updater], *, ttl_s: Mapping[str, float] | None = None
    ) -> None:
        """Applied at once (already in order)."""
        self.update_many(updates)

    def flush(self) -> None:
        """Nothing is ever pending."""

    def close(self) -> None:
        """Nothing to release."""
