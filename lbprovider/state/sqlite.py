"""The SQLite state store (SPEC §7), the default: ``sqlite:///PATH``, ``<home>/state.db``.

One table of JSON values.  Updates run inside ``BEGIN IMMEDIATE`` transactions:
read the current values, apply the pure updaters, write, commit — so several
processes at once never lose a count and never see half an update.  A writer
thread applies the operations of this process in order, batching whatever is
queued into one transaction (write-behind for posted updates; a flush on exit).
WAL mode lets readers (``stats``) run while a writer works.  ``busy_timeout`` plus
a bounded retry keeps "database is locked" from ever reaching the user.

A state file that cannot be opened or turns out corrupt is never fatal
(:mod:`lbprovider.state.health`): the store logs one warning, carries on in memory and
tries the file again every 30 s, because nothing about a broken state file should stop
a user from reaching a backend.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from lbprovider.state import Updater
from lbprovider.state.health import StoreHealth, Unavailable
from lbprovider.state.memory import MemoryStore

if TYPE_CHECKING:
    import asyncio

__all__ = ["SQLiteStore"]

T = TypeVar("T")

logger = logging.getLogger("lbprovider")

_SCHEMA = "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
_BUSY_MS = 5000
_LOCK_RETRIES = 20
_CHUNK = 500  # keys per IN (...) query, below SQLite's variable limit
_BATCH = 256  # operations per transaction at most


def _prefix_end(prefix: str) -> str:
    return prefix + "\U0010ffff"


class OpKind(StrEnum):
    """What one queued operation does (the writer thread applies them in order)."""

    GET = "get"
    SCAN = "scan"
    UPDATE = "update"
    DELETE = "delete"
    NOOP = "noop"  # a marker: everything queued before it is applied (flush)


class _Op:
    """One queued operation; ``future`` is None for a posted (write-behind) update."""

    __slots__ = ("arg", "future", "kind")

    def __init__(self, kind: OpKind, arg: Any, future: Future[Any] | None) -> None:
        self.kind = kind
        self.arg = arg
        self.future = future


class SQLiteStore:
    """A :class:`~lbprovider.state.StateStore` in one SQLite file, shared by processes.

    One writer thread owns the connection and applies operations in the order they
    were issued, several at a time in one transaction; the event loop never blocks
    on SQLite (it awaits a future), and posted updates cost it nothing at all.
    """

    def __init__(self, path: Path, *, reset_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._fallback = MemoryStore()
        self._health = StoreHealth(
            lost=f"state file {self.path} is unusable (%s); keeping state in memory and "
            "trying the file again every %g s (remove or fix the file, or set LBPROVIDER_STATE)",
            back=f"state file {self.path} is usable again",
            failures=(sqlite3.Error, OSError),
            # A local file that fails once will fail again: no second try per request.
            fail_max=1,
            reset_timeout_s=reset_timeout_s,
        )
        self._conn: sqlite3.Connection | None = None
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        with contextlib.suppress(Unavailable), self._health.calling():
            self._conn = self._connect()

    @property
    def degraded(self) -> bool:
        """True while the file is unusable and state is kept in memory instead."""
        return self._health.degraded

    def _connect(self) -> sqlite3.Connection:
        """Open and prepare the file; other processes opening it at the same moment
        (switching to WAL, creating the table) only make us wait, never fail."""
        for attempt in range(_LOCK_RETRIES):
            conn = sqlite3.connect(
                self.path, timeout=_BUSY_MS / 1000, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
                conn.execute("PRAGMA journal_mode = WAL")
                # WAL + NORMAL: a commit survives a process crash (what counters need)
                # without an fsync per transaction.
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute(_SCHEMA)
                conn.execute("SELECT count(*) FROM kv").fetchone()  # detects a corrupt file
                self.path.chmod(0o600)
                return conn
            except sqlite3.OperationalError as exc:
                conn.close()
                if ("locked" not in str(exc) and "busy" not in str(exc)) or (
                    attempt == _LOCK_RETRIES - 1
                ):
                    raise
                time.sleep(min(0.2, 0.005 * 2**attempt))
            except BaseException:
                conn.close()
                raise
        raise sqlite3.OperationalError("database stayed locked")  # pragma: no cover

    # -- the writer thread -----------------------------------------------------------------

    def _submit(self, kind: OpKind, arg: Any, *, wait: bool) -> Future[Any]:
        future: Future[Any] = Future()
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._work, daemon=True, name="lbprovider-state"
                    )
                    self._thread.start()
                    atexit.register(self.close)  # a flush on exit: no posted count is lost
        self._queue.put(_Op(kind, arg, future if wait else None))
        return future

    def _work(self) -> None:
        while True:
            op = self._queue.get()
            if op is None:
                return
            batch = [op]
            while len(batch) < _BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(more)
            self._execute(batch)

    def _execute(self, batch: list[_Op]) -> None:
        try:
            with self._health.calling():
                if self._conn is None:
                    self._conn = self._connect()
                results = self._commit(self._conn, batch)
        except Unavailable:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None
            results = []
            for op in batch:
                try:
                    results.append((op, self._apply_memory(op.kind, op.arg), None))
                except Exception as exc:  # an updater's own bug: report it to its caller
                    results.append((op, None, exc))
        except Exception as exc:  # a bug, not the file's: fail this batch, keep the thread
            results = [(op, None, exc) for op in batch]
        for op, value, error in results:
            if op.future is not None:
                if error is not None:
                    op.future.set_exception(error)
                else:
                    op.future.set_result(value)
            elif error is not None:
                logger.error("a posted state update failed: %s", error)

    def _commit(
        self, conn: sqlite3.Connection, batch: list[_Op]
    ) -> list[tuple[_Op, Any, BaseException | None]]:
        """One transaction for the batch; another process holding the lock only makes
        us wait (bounded), any other error is the file's."""
        for attempt in range(_LOCK_RETRIES):
            try:
                return self._transaction(conn, batch)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                time.sleep(min(0.2, 0.005 * 2**attempt))
        raise sqlite3.OperationalError("database stayed locked")

    def _transaction(
        self, conn: sqlite3.Connection, batch: list[_Op]
    ) -> list[tuple[_Op, Any, BaseException | None]]:
        writes = any(op.kind in (OpKind.UPDATE, OpKind.DELETE) for op in batch)
        conn.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
        try:
            out = [self._run_op(conn, op) for op in batch]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return out

    @staticmethod
    def _run_op(conn: sqlite3.Connection, op: _Op) -> tuple[_Op, Any, BaseException | None]:
        if op.kind is OpKind.GET:
            keys: list[str] = op.arg
            found: dict[str, Any] = {}
            for i in range(0, len(keys), _CHUNK):
                part = keys[i : i + _CHUNK]
                marks = ",".join("?" * len(part))
                rows = conn.execute(f"SELECT key, value FROM kv WHERE key IN ({marks})", part)
                found.update((k, json.loads(v)) for k, v in rows)
            return op, found, None
        if op.kind is OpKind.SCAN:
            rows = conn.execute(
                "SELECT key, value FROM kv WHERE key >= ? AND key < ?",
                (op.arg, _prefix_end(op.arg)),
            )
            return op, {k: json.loads(v) for k, v in rows}, None
        if op.kind is OpKind.DELETE:
            conn.execute("DELETE FROM kv WHERE key >= ? AND key < ?", (op.arg, _prefix_end(op.arg)))
            return op, None, None
        if op.kind is OpKind.NOOP:
            return op, None, None
        updates: Mapping[str, Updater] = op.arg
        keys = list(updates)
        marks = ",".join("?" * len(keys))
        current = {
            k: json.loads(v)
            for k, v in conn.execute(f"SELECT key, value FROM kv WHERE key IN ({marks})", keys)
        }
        try:
            new = {k: updates[k](current.get(k)) for k in keys}
        except Exception as exc:  # nothing of this operation is written
            return op, None, exc
        for key, value in new.items():
            if value is None:
                conn.execute("DELETE FROM kv WHERE key = ?", (key,))
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)",
                    (key, json.dumps(value, separators=(",", ":"))),
                )
        return op, new, None

    def _apply_memory(self, kind: OpKind, arg: Any) -> Any:
        m = self._fallback
        if kind is OpKind.GET:
            return m.get_many(arg)
        if kind is OpKind.SCAN:
            return m.scan(arg)
        if kind is OpKind.DELETE:
            return m.delete_prefix(arg)
        if kind is OpKind.UPDATE:
            return m.update_many(arg)
        return None

    # -- the StateStore interface ----------------------------------------------------------

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Current values of ``keys``."""
        return self._submit(OpKind.GET, list(dict.fromkeys(keys)), wait=True).result()  # type: ignore[no-any-return]

    async def aget_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Current values of ``keys``, awaited."""
        future = self._submit(OpKind.GET, list(dict.fromkeys(keys)), wait=True)
        return await _wrap(future)

    def scan(self, prefix: str) -> dict[str, Any]:
        """Every key starting with ``prefix``."""
        return self._submit(OpKind.SCAN, prefix, wait=True).result()  # type: ignore[no-any-return]

    def update(self, key: str, fn: Updater) -> Any:
        """Atomic read-modify-write of one key."""
        return self.update_many({key: fn})[key]

    def update_many(
        self, updates: Mapping[str, Updater], *, ttl_s: Mapping[str, float] | None = None
    ) -> dict[str, Any]:
        """Atomic read-modify-write of several keys, in one IMMEDIATE transaction."""
        return self._submit(OpKind.UPDATE, dict(updates), wait=True).result()  # type: ignore[no-any-return]

    async def aupdate_many(
        self,
        updates: Mapping[str, Updater],
        *,
        ttl_s: Mapping[str, float] | None = None,
        read: Iterable[str] = (),
    ) -> dict[str, Any]:
        """``update_many``, awaited; the ``read`` keys are read right after it, in the
        same batch (usually the same transaction)."""
        future = self._submit(OpKind.UPDATE, dict(updates), wait=True)
        extra = [k for k in dict.fromkeys(read) if k not in updates]
        reading = self._submit(OpKind.GET, extra, wait=True) if extra else None
        out: dict[str, Any] = dict(await _wrap(future))
        if reading is not None:
            out.update(await _wrap(reading))
        return out

    def post_many(
        self, updates: Mapping[str, Updater], *, ttl_s: Mapping[str, float] | None = None
    ) -> None:
        """Queue ``update_many``; applied in order, in the next transaction."""
        self._submit(OpKind.UPDATE, dict(updates), wait=False)

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key starting with ``prefix``."""
        self._submit(OpKind.DELETE, prefix, wait=True).result()

    def flush(self) -> None:
        """Wait until every posted update is written."""
        if self._thread is not None:
            self._submit(OpKind.NOOP, None, wait=True).result()

    def close(self) -> None:
        """Flush, stop the writer thread, close the file (idempotent)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_Op(OpKind.NOOP, None, None))
            self._queue.put(None)
            thread.join()
            atexit.unregister(self.close)
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _wrap(future: Future[T]) -> asyncio.Future[T]:
    """``asyncio.wrap_future``, imported when first awaited: a command that reads the
    store synchronously (``stats``) starts without importing asyncio."""
    import asyncio

    return asyncio.wrap_future(future)
