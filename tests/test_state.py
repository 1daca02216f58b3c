"""SPEC §7: the state stores (memory, SQLite, Redis), their URLs and how they fail safe.

The contract tests (the `store` fixture) run against each store, Redis on a real server."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from lbprovider.errors import ConfigError
from lbprovider.state import open_store, state_url
from lbprovider.state.memory import MemoryStore
from lbprovider.state.sqlite import SQLiteStore


def incr(raw: Any) -> Any:
    """Add one to a counter."""
    return (raw or 0) + 1


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Each store implementation (Redis: a real server)."""
    if request.param == "redis":
        from lbprovider.state.redis import RedisStore

        server = request.getfixturevalue("valkey")
        s: Any = RedisStore(server.url)
    elif request.param == "sqlite":
        s = SQLiteStore(tmp_path / "s.db")
    else:
        s = MemoryStore()
    yield s
    s.close()


def test_update_get_scan_delete(store: Any) -> None:
    """The interface: atomic updates, reads, prefix scans and deletes."""
    assert store.update("a:1", incr) == 1
    assert store.update_many({"a:1": incr, "a:2": lambda raw: {"x": [1, 2]}}) == {
        "a:1": 2,
        "a:2": {"x": [1, 2]},
    }
    store.update("b:1", lambda raw: "keep")
    assert store.get_many(["a:1", "a:2", "missing"]) == {"a:1": 2, "a:2": {"x": [1, 2]}}
    assert store.scan("a:") == {"a:1": 2, "a:2": {"x": [1, 2]}}
    store.delete_prefix("a:")
    assert store.scan("") == {"b:1": "keep"}
    assert store.update("b:1", lambda raw: None) is None
    assert store.get_many(["b:1"]) == {}


def test_values_are_copies(store: Any) -> None:
    """Mutating a returned value never changes the stored one."""
    store.update("k", lambda raw: {"n": [1]})
    got = store.get_many(["k"])["k"]
    got["n"].append(2)
    assert store.get_many(["k"])["k"] == {"n": [1]}


def test_concurrent_updates_never_lose_a_count(store: Any) -> None:
    """8 threads x 200 increments = 1600, exactly."""

    def work() -> None:
        for _ in range(200):
            store.update("n", incr)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get_many(["n"]) == {"n": 1600}


async def test_async_updates_are_atomic(store: Any) -> None:
    """Fifty concurrent async increments of two keys at once: exactly fifty on each."""
    import asyncio

    await asyncio.gather(*(store.aupdate_many({"n:a": incr, "n:b": incr}) for _ in range(50)))
    assert await store.aget_many(["n:a", "n:b"]) == {"n:a": 50, "n:b": 50}


async def test_posted_updates_are_seen_by_later_reads(store: Any) -> None:
    """A read after a posted (write-behind) update sees it."""
    for _ in range(5):
        store.post_many({"p:1": incr})
    assert await store.aget_many(["p:1"]) == {"p:1": 5}


def test_update_is_all_or_nothing(store: Any) -> None:
    """An updater that raises leaves every key of its update untouched."""
    store.update("x:1", lambda raw: 1)

    def broken(raw: Any) -> Any:
        raise ValueError("bug")

    with pytest.raises(ValueError, match="bug"):
        store.update_many({"x:1": incr, "x:2": broken})
    assert store.get_many(["x:1", "x:2"]) == {"x:1": 1}


def test_sqlite_persists_and_is_0600(tmp_path: Path) -> None:
    """State survives a restart; the file is private."""
    path = tmp_path / "state.db"
    first = SQLiteStore(path)
    first.update("k", lambda raw: {"v": 1})
    first.close()
    second = SQLiteStore(path)
    assert second.get_many(["k"]) == {"k": {"v": 1}}
    assert path.stat().st_mode & 0o777 == 0o600
    second.close()


def test_sqlite_two_connections_share(tmp_path: Path) -> None:
    """Two stores on one file (as two processes would be) see each other's writes."""
    a, b = SQLiteStore(tmp_path / "s.db"), SQLiteStore(tmp_path / "s.db")
    a.update("n", incr)
    b.update("n", incr)
    assert a.get_many(["n"]) == {"n": 2}
    a.close()
    b.close()


def test_corrupt_file_degrades_to_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A corrupt state file gives one clear warning; the store keeps working in memory."""
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database, just garbage" * 100)
    with caplog.at_level(logging.WARNING, logger="lbprovider"):
        s = SQLiteStore(path)
    assert s.degraded
    assert str(path) in caplog.text and "keeping state in memory" in caplog.text
    assert s.update("n", incr) == 1
    assert s.get_many(["n"]) == {"n": 1}
    assert path.read_bytes().startswith(b"this is not a database")  # never overwritten


def test_unopenable_path_degrades(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A path that cannot hold a database (its parent is a file) degrades, never raises."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING, logger="lbprovider"):
        s = SQLiteStore(blocker / "state.db")
    assert s.degraded and "unusable" in caplog.text
    assert s.update("n", incr) == 1


def test_repaired_file_is_used_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """After the reset timeout (0 here) the store tries the file again: one warning while
    it stays broken, one when it is usable again, and from then on state is in the file."""
    path = tmp_path / "state.db"
    path.write_bytes(b"garbage" * 500)
    with caplog.at_level(logging.WARNING, logger="lbprovider"):
        s = SQLiteStore(path, reset_timeout_s=0)
        for _ in range(3):
            assert s.update("n", incr) is not None
        assert s.degraded
        lost = [r for r in caplog.records if "unusable" in r.getMessage()]
        assert len(lost) == 1
        path.unlink()
        assert s.update("n", incr) == 1  # the file's count: memory's is left behind
        assert not s.degraded
        assert "usable again" in caplog.text
    s.close()
    other = SQLiteStore(path)
    assert other.get_many(["n"]) == {"n": 1}
    other.close()


@pytest.mark.parametrize("slashes", ["///", "////"])
def test_sqlite_urls(slashes: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sqlite:///PATH names an absolute path ("sqlite:////PATH" reads the same)."""
    opened: list[Path] = []
    monkeypatch.setattr(SQLiteStore, "__init__", lambda self, path, **_: opened.append(path))
    open_store(f"sqlite:{slashes}{str(tmp_path).lstrip('/')}/state.db")
    assert opened == [tmp_path / "state.db"]


def test_sqlite_missing_directory_is_an_error(tmp_path: Path) -> None:
    """An explicit sqlite:/// path whose directory does not exist: an error, nothing made."""
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(ConfigError, match="does not exist") as info:
        open_store(f"sqlite:///{missing}/state.db")
    assert info.value.field == "LBPROVIDER_STATE"
    assert not (tmp_path / "no").exists()


def test_memory_url() -> None:
    """memory:// is the in-process store."""
    assert isinstance(open_store("memory://"), MemoryStore)


@pytest.mark.parametrize("url", ["postgres://x", "sqlite://"])
def test_bad_urls(url: str) -> None:
    """Unsupported or incomplete URLs are bad input naming LBPROVIDER_STATE."""
    with pytest.raises(ConfigError, match="LBPROVIDER_STATE"):
        open_store(url)


def test_default_url(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Default: SQLite in the home; LBPROVIDER_STATE overrides."""
    assert state_url() == f"sqlite:///{isolated / 'state.db'}"
    monkeypatch.setenv("LBPROVIDER_STATE", "memory://")
    assert state_url() == "memory://"


STRESS = """
import sys
from pathlib import Path
from lbprovider.state.sqlite import SQLiteStore
s = SQLiteStore(Path(sys.argv[1]))
for _ in range(50):
    s.update("n", lambda raw: (raw or 0) + 1)
print("degraded" if s.degraded else "ok")
s.close()
"""


def test_many_processes_open_a_fresh_file_at_once(tmp_path: Path) -> None:
    """Processes racing to create the file (WAL switch, schema) wait; none degrades or loses."""
    import subprocess
    import sys

    path = tmp_path / "race.db"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STRESS, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(10)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [out.strip() for out, _ in outputs] == ["ok"] * 10, [err for _, err in outputs]
    store = SQLiteStore(path)
    assert store.get_many(["n"]) == {"n": 500}
    store.close()
