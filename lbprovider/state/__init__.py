"""The state store: the raw, shared storage under the ledger (SPEC §7).

Everything the engine remembers between requests lives in one store, so that several
processes (every ``llm`` invocation is one) and several machines can share it.  A store
holds JSON values under string keys and has one write: an atomic read-modify-write,
``update_many({key: fn})``, applying pure functions to the current values with no other
writer in between.  Typed keys, records and their codecs are the ledger's
(:mod:`lbprovider.ledger`); a store only makes the updates atomic: a lock in memory, a
transaction in SQLite, an optimistic compare-and-set in Redis.

The engine uses the async forms on its hot path: ``aget_many``/``aupdate_many`` when it
needs the result, ``post_many`` when it does not (metrics at the end of a request:
write-behind).  A store applies the operations on one key in the order they were
issued, so a read sees the writes posted before it.  ``ttl_s`` tells a store that can
expire keys how long a key may live.  The synchronous forms serve ``stats``, ``bench``
and tests.

URLs (``$LBPROVIDER_STATE``): ``sqlite:///PATH`` (default ``<home>/state.db``),
``memory://``, ``redis://[:PASSWORD@]HOST:PORT/DB``, ``rediss://`` (TLS).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

__all__ = [
    "StateStore",
    "Updater",
    "default_store",
    "open_store",
    "reset_default_store",
    "state_url",
]

Updater = Callable[[Any], Any]


class StateStore(Protocol):
    """Atomic key-value state shared by every load balancer (and, persisted, every process)."""

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Current values of ``keys`` (missing keys are absent)."""
        ...

    def scan(self, prefix: str) -> dict[str, Any]:
        """Every key starting with ``prefix``, with its value."""
        ...

    def update(self, key: str, fn: Updater) -> Any:
        """Atomically replace the value of ``key`` (None if absent) by ``fn(value)``.

        Returns the new value; ``fn`` returning None deletes the key.
        """
        ...

    def update_many(
        self, updates: Mapping[str, Updater], *, ttl_s: Mapping[str, float] | None = None
    ) -> dict[str, Any]:
        """Several updates in one atomic step; returns the new values."""
        ...

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key starting with ``prefix``."""
        ...

    async def aget_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """``get_many`` without blocking the event loop."""
        ...

    async def aupdate_many(
        self,
        updates: Mapping[str, Updater],
        *,
        ttl_s: Mapping[str, float] | None = None,
        read: Iterable[str] = (),
    ) -> dict[str, Any]:
        """``update_many`` without blocking the event loop; the answer also holds the
        current values of the ``read`` keys (read in the same round trip: a request's
        start and its first admission cost one trip to the store, not two)."""
        ...

    def post_many(
        self, updates: Mapping[str, Updater], *, ttl_s: Mapping[str, float] | None = None
    ) -> None:
        """Queue ``update_many`` without waiting for it (applied in order, soon)."""
        ...

    def flush(self) -> None:
        """Wait until every posted update is applied."""
        ...

    def close(self) -> None:
        """Flush and release resources."""
        ...


def state_url(env: Mapping[str, str] | None = None) -> str:
    """``$LBPROVIDER_STATE``, else ``sqlite:///<home>/state.db``."""
    import os

    from lbprovider.paths import home_dir

    env = os.environ if env is None else env
    return env.get("LBPROVIDER_STATE") or f"sqlite:///{home_dir(env) / 'state.db'}"


def open_store(url: str, *, create_dir: bool = False) -> StateStore:
    """Open the store a URL names: ``sqlite:///PATH`` or ``memory://``.

    A SQLite file's directory must exist (SPEC §7: never created for an explicit URL,
    where a typo would scatter directories); ``create_dir`` is for the default file in
    lbprovider's own home.
    """
    from pathlib import Path

    from lbprovider.errors import ConfigError

    if url.startswith("memory:"):
        from lbprovider.state.memory import MemoryStore

        return MemoryStore()
    if url.startswith(("redis://", "rediss://")):
        try:
            from lbprovider.state.redis import RedisStore
        except ImportError:
            raise ConfigError(
                "the redis package is not installed",
                field="LBPROVIDER_STATE",
                hint="pip install 'lbprovider[redis]'",
            ) from None
        return RedisStore(url)
    if url.startswith("sqlite://"):
        # sqlite:///PATH: PATH is absolute ("sqlite:////x" reads the same); "/~/..." expands.
        rest = url.removeprefix("sqlite://").lstrip("/")
        if not rest:
            raise ConfigError(
                "sqlite:///PATH needs a path",
                field="LBPROVIDER_STATE",
                hint="for example sqlite:///home/me/.config/lbprovider/state.db",
            )
        from lbprovider.state.sqlite import SQLiteStore

        path = Path(rest).expanduser() if rest.startswith("~") else Path("/" + rest)
        if create_dir:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"cannot create {path.parent}: {exc.strerror or exc}",
                    field="LBPROVIDER_HOME",
                    hint="point LBPROVIDER_HOME at a directory you can write",
                ) from None
        elif not path.parent.is_dir():
            raise ConfigError(
                f"the directory of {path} does not exist",
                field="LBPROVIDER_STATE",
                hint="create it, or fix the path; it is never created for you",
            )
        return SQLiteStore(path)
    scheme = url.split(":", 1)[0]
    raise ConfigError(
        f"unsupported state store {scheme!r}",
        field="LBPROVIDER_STATE",
        hint="use sqlite:///PATH (the default), redis://HOST:PORT/DB or memory://",
    )


_default: StateStore | None = None


def default_store() -> StateStore:
    """The process-wide store named by ``$LBPROVIDER_STATE`` (default: SQLite in the home).

    A documented, resettable accessor rather than a bare module global: breakers are
    shared by every load balancer of the process, so they must share one store.
    """
    global _default
    if _default is None:
        import os

        _default = open_store(state_url(), create_dir=not os.environ.get("LBPROVIDER_STATE"))
    return _default


def reset_default_store() -> None:
    """Forget the process-wide store (tests; a host that changes its configuration)."""
    global _default
    if _default is not None:
        _default.close()
    _default = None
