"""The SQLite state store (SPEC §7), the default: ``sqlite:///PATH``, ``<home>/state.db``.

One table of JSON values.  Every ``update_many`` is one ``BEGIN IMMEDIATE``
transaction: read the current values, apply the pure updaters, write, commit —
so several processes at once never lose a count and never see half an update.
WAL mode lets readers (``stats``) run while a writer works.  ``busy_timeout`` plus
a bounded retry keeps "database is locked" from ever reaching the user.

A state file that cannot be opened or turns out corrupt is never fatal: the store
logs one warning and carries on in memory for the rest of the process, because
nothing about a broken state file should stop a user from reaching a backend.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from lbprovider.state import Updater
from lbprovider.state.memory import MemoryStore

__all__ = ["SQLiteStore"]

logger = logging.getLogger("lbprovider")

T = TypeVar("T")

_SCHEMA = "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
_BUSY_MS = 5000
_LOCK_RETRIES = 20
_CHUNK = 500  # keys per IN (...) query, below SQLite's variable limit


def _prefix_end(prefix: str) -> str:
    return prefix + "\U0010ffff"


class SQLiteStore:
    """A :class:`~lbprovider.state.StateStore` in one SQLite file, shared by processes."""

    blocking = True

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # one connection, used from worker threads in turn
        self._fallback: MemoryStore | None = None
        self._conn: sqlite3.Connection | None = None
        try:
            self._conn = self._connect()
        except (sqlite3.Error, OSError) as exc:
            self._degrade(exc)

    @property
    def degraded(self) -> bool:
        """True when the file proved unusable and state is kept in memory instead."""
        return self._fallback is not None

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=_BUSY_MS / 1000, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL: a commit is durable against a process crash (what we need
            # for counters) without an fsync per request.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(_SCHEMA)
            conn.execute("SELECT count(*) FROM kv").fetchone()  # detects a corrupt file
            self.path.chmod(0o600)
        except BaseException:
            conn.close()
            raise
        return conn

    def _degrade(self, exc: BaseException) -> None:
        if self._fallback is None:
            logger.warning(
                "state file %s is unusable (%s); keeping state in memory for this run "
                "(remove or fix the file, or set LBPROVIDER_STATE)",
                self.path,
                exc,
            )
            self._fallback = MemoryStore()
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _run(
        self, op: Callable[[sqlite3.Connection], T], fallback: Callable[[MemoryStore], T]
    ) -> T:
        """Run ``op`` on the connection; on lock contention retry, on damage degrade."""
        for attempt in range(_LOCK_RETRIES):
            if self._fallback is not None or self._conn is None:
                break
            try:
                with self._lock:
                    return op(self._conn)
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    time.sleep(min(0.2, 0.005 * 2**attempt))
                    continue
                self._degrade(exc)
            except sqlite3.Error as exc:
                self._degrade(exc)
        if self._fallback is None:
            self._degrade(sqlite3.OperationalError("database stayed locked"))
        assert self._fallback is not None
        return fallback(self._fallback)

    # -- the StateStore interface ----------------------------------------------------------

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Current values of ``keys``."""
        wanted = list(dict.fromkeys(keys))

        def op(conn: sqlite3.Connection) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for i in range(0, len(wanted), _CHUNK):
                part = wanted[i : i + _CHUNK]
                marks = ",".join("?" * len(part))
                rows = conn.execute(f"SELECT key, value FROM kv WHERE key IN ({marks})", part)
                out.update((k, json.loads(v)) for k, v in rows)
            return out

        return self._run(op, lambda m: m.get_many(wanted))

    def scan(self, prefix: str) -> dict[str, Any]:
        """Every key starting with ``prefix``."""

        def op(conn: sqlite3.Connection) -> dict[str, Any]:
            rows = conn.execute(
                "SELECT key, value FROM kv WHERE key >= ? AND key < ?",
                (prefix, _prefix_end(prefix)),
            )
            return {k: json.loads(v) for k, v in rows}

        return self._run(op, lambda m: m.scan(prefix))

    def update(self, key: str, fn: Updater) -> Any:
        """Atomic read-modify-write of one key."""
        return self.update_many({key: fn})[key]

    def update_many(self, updates: Mapping[str, Updater]) -> dict[str, Any]:
        """Atomic read-modify-write of several keys, in one IMMEDIATE transaction."""
        keys = list(updates)

        def op(conn: sqlite3.Connection) -> dict[str, Any]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                marks = ",".join("?" * len(keys))
                current = {
                    k: json.loads(v)
                    for k, v in conn.execute(
                        f"SELECT key, value FROM kv WHERE key IN ({marks})", keys
                    )
                }
                out: dict[str, Any] = {}
                for key in keys:
                    new = updates[key](current.get(key))
                    if new is None:
                        conn.execute("DELETE FROM kv WHERE key = ?", (key,))
                    else:
                        conn.execute(
                            "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)",
                            (key, json.dumps(new, separators=(",", ":"))),
                        )
                    out[key] = new
                conn.execute("COMMIT")
                return out
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        return self._run(op, lambda m: m.update_many(updates))

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key starting with ``prefix``."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM kv WHERE key >= ? AND key < ?", (prefix, _prefix_end(prefix)))

        self._run(op, lambda m: m.delete_prefix(prefix))

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
