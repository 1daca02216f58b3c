"""Conversation affinity (SPEC §3.5): a conversation stays on the member that holds its
prompt cache; one-shots and short prompts rotate; health always wins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lbprovider.state.memory import MemoryStore
from lbprovider.state.sqlite import SQLiteStore
from lbprovider.testing import FakeClock, ScriptedTransport, fail
from tests.conftest import make_lb

SYSTEM = "You are a careful coding assistant. " * 200  # about 1800 tokens: cacheable
SERVERS = {"a": "http://127.0.0.1:9/v1", "b": "http://127.0.0.1:9/v1", "c": "http://127.0.0.1:9/v1"}


def turns(first: str, n: int) -> list[list[dict[str, Any]]]:
    """The messages of a conversation's first ``n`` turns (each resends the history)."""
    history: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    out = []
    for i in range(n):
        history = [*history, {"role": "user", "content": f"{first} turn {i}"}]
        out.append(list(history))
        history = [*history, {"role": "assistant", "content": f"answer {i}"}]
    return out


def lb_over(transport: ScriptedTransport, store: Any = None, **settings: Any) -> Any:
    """A round-robin load balancer over a, b, c with the scripted transport."""
    return make_lb(
        SERVERS,
        "roundrobin",
        transport=transport,
        clock=transport.clock,
        store=store if store is not None else MemoryStore(),
        **settings,
    )


async def served(lb: Any, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    return str((await lb.complete(messages, **kwargs)).backend)


async def test_a_conversation_stays_on_its_member() -> None:
    """Later turns follow the member that served the first; the rotation goes on for
    other requests; hits are counted."""
    transport = ScriptedTransport(FakeClock())
    lb = lb_over(transport)
    convo = turns("fix the parser", 4)
    first = await served(lb, convo[0])
    others = [await served(lb, [{"role": "user", "content": f"one-shot {i}"}]) for i in range(2)]
    later = [await served(lb, messages) for messages in convo[1:]]
    assert later == [first] * 3
    assert first not in others  # the rotation moved on meanwhile
    report = lb.stats()
    assert (report["affinityHits"], report["affinityMisses"]) == (3, 0)


async def test_one_shots_and_short_prompts_rotate() -> None:
    """The same one-shot prompt sent again rotates; so does a short conversation."""
    transport = ScriptedTransport(FakeClock())
    lb = lb_over(transport)
    one_shot = turns("explain", 1)[0]
    assert [await served(lb, one_shot) for _ in range(3)] == ["a", "b", "c"]
    short = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
    ]
    assert [await served(lb, short) for _ in range(3)] == ["a", "b", "c"]
    assert lb.stats()["affinityHits"] == 0


async def test_explicit_key_sticks_from_the_first_request() -> None:
    """An explicit affinity_key follows its member from the first request on."""
    transport = ScriptedTransport(FakeClock())
    lb = lb_over(transport)
    one_shot = turns("explain", 1)[0]
    got = [await served(lb, one_shot, affinity_key="session-1") for _ in range(3)]
    assert got == [got[0]] * 3
    assert all(c.params.get("affinity_key") is None for c in transport.calls)  # engine's own


async def test_health_wins_and_the_key_moves() -> None:
    """An affine member whose breaker opened is left; the serving member becomes the key's
    member, and the conversation follows it (a miss, then hits)."""
    transport = ScriptedTransport(FakeClock())
    lb = lb_over(
        transport,
        failover_retry_count=1,
        circuit_breaker_enabled=True,
        circuit_breaker_failure_threshold=1,
        circuit_breaker_recovery_timeout_ms=600_000,
        circuit_breaker_max_recovery_timeout_ms=600_000,
    )
    convo = turns("refactor", 4)
    first = await served(lb, convo[0])
    transport.script(first, fail(503))
    await served(lb, [{"role": "user", "content": "x"}])  # rotation: may open `first`
    while lb.stats()["circuitBreakerStates"][first]["state"] != "open":
        await served(lb, [{"role": "user", "content": "x"}])
    moved = await served(lb, convo[1])
    assert moved != first
    assert [await served(lb, m) for m in convo[2:]] == [moved, moved]
    report = lb.stats()
    assert report["affinityMisses"] == 1 and report["affinityHits"] == 2


async def test_expired_record_is_a_miss_and_rotates() -> None:
    """After affinity_ttl_ms the conversation is routed as usual (a miss)."""
    clock = FakeClock()
    transport = ScriptedTransport(clock)
    lb = lb_over(transport, affinity_ttl_ms=60_000)
    convo = turns("review", 2)
    await served(lb, convo[0])
    clock.advance(61)
    await served(lb, convo[1])
    assert lb.stats()["affinityMisses"] == 1


async def test_off_for_failover_and_with_ttl_zero() -> None:
    """failover is sticky already; affinity_ttl_ms=0 turns affinity off."""
    transport = ScriptedTransport(FakeClock())
    off = lb_over(transport, affinity_ttl_ms=0)
    convo = turns("x", 3)
    assert [await served(off, m) for m in convo] == ["a", "b", "c"]


async def test_across_processes_and_no_prompt_text_in_the_store(tmp_path: Path) -> None:
    """Two providers on one SQLite file (as two processes) keep a conversation on one
    member; the file holds only the key's hash, never prompt text."""
    path = tmp_path / "state.db"
    one = lb_over(ScriptedTransport(FakeClock()), store=SQLiteStore(path))
    two = lb_over(ScriptedTransport(FakeClock()), store=SQLiteStore(path))
    convo = turns("secret-project-name", 3)
    first = await served(one, convo[0])
    one.store.flush()
    assert await served(two, convo[1]) == first
    two.store.flush()
    one.store.close()
    two.store.close()
    raw = path.read_bytes()
    assert b"secret-project-name" not in raw and b"careful coding" not in raw
    assert b"affinity:lbtest:" in raw


@pytest.mark.parametrize("key", ["metadata-user", None])
async def test_gateway_keys_reach_the_engine(key: str | None) -> None:
    """The Python API's affinity_key is the explicit key (the gateway passes its session
    headers and body fields as it)."""
    transport = ScriptedTransport(FakeClock())
    lb = lb_over(transport)
    one_shot = turns("y", 1)[0]
    got = {await served(lb, one_shot, affinity_key=key) for _ in range(3)}
    assert len(got) == (1 if key else 3)


async def test_moving_cache_markers_keep_the_key() -> None:
    """Claude Code moves `cache_control` to the newest message each turn: the conversation
    key (and so its member) stays the same."""
    transport = ScriptedTransport(FakeClock())
    lb = lb_over(transport)
    marked = {"type": "text", "text": "fix it", "cache_control": {"type": "ephemeral"}}
    plain = {"type": "text", "text": "fix it"}
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": [marked]}]
    second = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": [plain]},
        {"role": "assistant", "content": "done"},
        {"role": "user", "content": [{**marked, "text": "and the tests"}]},
    ]
    assert await served(lb, first) == await served(lb, second)
