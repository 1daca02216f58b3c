"""`lbprovider serve` (SPEC §11) over loopback, driven by the official openai SDK."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lbprovider.sim import SimServer, serve
from tests.conftest import WriteProfile, lb, member
from tests.gateway_support import GW_KEY, StartGateway, gateway, serve_process

__all__ = ["gateway"]  # the fixture, imported for pytest

HI = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def client(url: str, key: str = GW_KEY) -> openai.AsyncOpenAI:
    """The openai SDK pointed at the gateway, with its own retries off."""
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def setup_lb(
    write_profile: WriteProfile,
    sims: dict[str, SimServer],
    name: str = "coding",
    policy: str = "failover",
    **settings: Any,
) -> None:
    """Member profiles for the sims and one load balancer over them."""
    for member_name, sim in sims.items():
        write_profile(member_name, member(sim.url, model=f"model-{member_name}"))
    settings.setdefault("failback_after_ms", 0)
    write_profile(name, lb(list(sims), policy, **settings))


async def test_streaming_and_not(write_profile: WriteProfile, gateway: StartGateway) -> None:
    """A streamed and a whole answer, `model` naming the serving member on every chunk."""
    async with serve("chunks=4") as a, serve() as b:
        setup_lb(write_profile, {"a": a, "b": b})
        gw = await gateway()
        api = client(gw.url)
        whole = await api.chat.completions.create(model="coding", messages=HI)  # type: ignore[arg-type]
        assert whole.choices[0].message.content == "Hello from the simulated backend."
        assert whole.model == "openai/model-a"
        assert whole.usage is not None and whole.usage.total_tokens == 16
        stream = await api.chat.completions.create(
            model="coding",
            messages=HI,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Hello from the simulated backend."
        assert {c.model for c in chunks} == {"openai/model-a"}
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
        assert b.hits == 0


async def test_params_pass_through(write_profile: WriteProfile, gateway: StartGateway) -> None:
    """The body reaches an OpenAI member as the client sent it, but for `model`."""
    async with serve() as a, serve() as b:
        setup_lb(write_profile, {"a": a, "b": b})
        gw = await gateway()
        await client(gw.url).chat.completions.create(
            model="coding",
            messages=HI,  # type: ignore[arg-type]
            max_completion_tokens=77,
            temperature=0.3,
            top_p=0.9,
            stop=["END"],
            response_format={"type": "json_object"},
            reasoning_effort="low",
            user="u-1",
        )
        sent = a.requests[-1]
        assert sent["model"] == "model-a"
        assert sent["messages"] == HI
        for key, value in {
            "max_completion_tokens": 77,
            "temperature": 0.3,
            "top_p": 0.9,
            "stop": ["END"],
            "response_format": {"type": "json_object"},
            "reasoning_effort": "low",
            "user": "u-1",
        }.items():
            assert sent[key] == value, key
        assert a.api_keys[-1] != GW_KEY  # members use their own keys, never the client's


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_calls_both_ways(
    write_profile: WriteProfile, gateway: StartGateway, stream: bool
) -> None:
    """A tool call comes back; the assistant call and the tool's result reach the member."""
    async with serve("tool_call") as a, serve() as b:
        setup_lb(write_profile, {"a": a, "b": b})
        gw = await gateway()
        api = client(gw.url)
        if stream:
            events = await api.chat.completions.create(
                model="coding",
                messages=HI,
                tools=TOOLS,
                stream=True,  # type: ignore[arg-type]
            )
            calls: dict[int, dict[str, str]] = {}
            async for c in events:
                for d in (c.choices[0].delta.tool_calls or []) if c.choices else []:
                    call = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] += d.id or ""
                    call["name"] += (d.function.name or "") if d.function else ""
                    call["arguments"] += (d.function.arguments or "") if d.function else ""
            got = calls[0]
        else:
            whole = await api.chat.completions.create(
                model="coding",
                messages=HI,
                tools=TOOLS,  # type: ignore[arg-type]
            )
            assert whole.choices[0].finish_reason == "tool_calls"
            tc = whole.choices[0].message.tool_calls[0]  # type: ignore[index]
            got = {"id": tc.id, "name": tc.function.name, "arguments": tc.function.arguments}  # type: ignore[union-attr]
        assert got["name"] == "get_weather"
        assert json.loads(got["arguments"]) == {"city": "Paris"}
        follow_up = [
            *HI,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": got["id"],
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": got["arguments"]},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": got["id"], "content": "sunny"},
        ]
        done = await api.chat.completions.create(
            model="coding",
            messages=follow_up,
            tools=TOOLS,  # type: ignore[arg-type]
        )
        assert done.choices[0].message.content == "Hello from the simulated backend."
        assert a.requests[-1]["messages"] == follow_up


async def test_images_reach_the_member(write_profile: WriteProfile, gateway: StartGateway) -> None:
    """Image parts pass through untouched."""
    async with serve() as a, serve() as b:
        setup_lb(write_profile, {"a": a, "b": b})
        gw = await gateway()
        content = [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ]
        messages = [{"role": "user", "content": content}]
        await client(gw.url).chat.completions.create(model="coding", messages=messages)  # type: ignore[arg-type]
        assert a.requests[-1]["messages"] == messages


@pytest.mark.parametrize("stream", [False, True])
async def test_failover_in_headers(
    write_profile: WriteProfile, gateway: StartGateway, stream: bool
) -> None:
    """A failed first member shows in x-lbprovider-backend / x-lbprovider-attempts."""
    async with serve("status=503") as a, serve() as b:
        setup_lb(write_profile, {"a": a, "b": b}, failover_retry_count=1)
        gw = await gateway()
        raw = await client(gw.url).chat.completions.with_raw_response.create(
            model="coding",
            messages=HI,
            stream=stream,  # type: ignore[arg-type]
        )
        assert raw.headers["x-lbprovider-backend"] == "b"
        assert raw.headers["x-lbprovider-attempts"] == "2"
        parsed = raw.parse()
        if stream:
            models = {c.model async for c in parsed}  # type: ignore[union-attr]
            assert models == {"openai/model-b"}
        else:
            assert parsed.model == "openai/model-b"  # type: ignore[union-attr]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("behavior", "status", "retry_after"),
    [
        ("status=503", 503, None),
        ("status=429,retry_after=20", 429, "20"),
        ("status=401", 401, None),
        ("status=400", 400, None),
    ],
)
async def test_real_status_when_nothing_can_serve(
    write_profile: WriteProfile,
    gateway: StartGateway,
    behavior: str,
    status: int,
    retry_after: str | None,
    stream: bool,
) -> None:
    """Nothing can serve: a real status before any byte, in OpenAI's error form."""
    async with serve(behavior) as a, serve(behavior) as b:
        setup_lb(write_profile, {"a": a, "b": b}, failover_retry_count=1)
        gw = await gateway()
        api = client(gw.url)
        with pytest.raises(openai.APIStatusError) as caught:
            await api.chat.completions.create(model="coding", messages=HI, stream=stream)  # type: ignore[call-overload]
        err = caught.value
        assert err.status_code == status
        body = err.body if isinstance(err.body, dict) else {}
        assert "no backend of 'coding'" in body.get("message", "")
        assert err.response.headers.get("retry-after") == retry_after


async def test_retry_after_when_every_breaker_is_open(
    write_profile: WriteProfile, gateway: StartGateway
) -> None:
    """Every member skipped by an open breaker (and the panic probe failing too): 503 with
    a Retry-After of at most 30 s."""
    async with serve("status=503") as a, serve("status=503") as b:
        setup_lb(
            write_profile,
            {"a": a, "b": b},
            failover_retry_count=1,
            circuit_breaker_enabled=True,
            circuit_breaker_failure_threshold=1,
            circuit_breaker_recovery_timeout_ms=600_000,
            circuit_breaker_max_recovery_timeout_ms=600_000,
        )
        gw = await gateway()
        api = client(gw.url)
        for _ in range(2):
            with pytest.raises(openai.APIStatusError) as caught:
                await api.chat.completions.create(model="coding", messages=HI)  # type: ignore[arg-type]
        assert caught.value.status_code == 503
        assert caught.value.response.headers["retry-after"] == "30"
        assert a.hits + b.hits == 3  # both opened, then one panic probe (SPEC §3.3)


async def test_interrupted_stream_ends_with_an_error_event(
    write_profile: WriteProfile, gateway: StartGateway
) -> None:
    """A stream that breaks after it started ends with an error event and no [DONE]."""
    async with serve("chunks=6,drop_after=2") as a, serve("chunks=6,drop_after=2") as b:
        setup_lb(write_profile, {"a": a, "b": b}, failover_retry_count=1)
        gw = await gateway()
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{gw.url}/v1/chat/completions",
                json={"model": "coding", "messages": HI, "stream": True},
                headers={"Authorization": f"Bearer {GW_KEY}"},
            ) as response,
        ):
            assert response.status == 200
            body = (await response.read()).decode()
        assert "[DONE]" not in body
        last = [line for line in body.splitlines() if line.startswith("data:")][-1]
        assert "failed after the answer had started" in json.loads(last[5:])["error"]["message"]
        stream = await client(gw.url).chat.completions.create(
            model="coding",
            messages=HI,
            stream=True,  # type: ignore[arg-type]
        )
        with pytest.raises(openai.APIError):
            [c async for c in stream]


async def test_aliases_default_and_unknown_models(
    write_profile: WriteProfile, gateway: StartGateway
) -> None:
    """--alias globs and --default pick a load balancer; an unknown name is a 404."""
    from lbprovider.gateway.served import parse_alias

    async with serve() as a, serve("text=from-b") as b:
        write_profile("a", member(a.url, model="model-a"))
        write_profile("b", member(b.url, model="model-b"))
        write_profile("coding", lb(["a"], "roundrobin"))
        write_profile("other", lb(["b"], "roundrobin"))
        plain = await gateway()
        with pytest.raises(openai.NotFoundError) as caught:
            await client(plain.url).chat.completions.create(model="gpt-5", messages=HI)  # type: ignore[arg-type]
        body = caught.value.body if isinstance(caught.value.body, dict) else {}
        assert body["code"] == "model_not_found"
        assert "coding" in body["message"] and "other" in body["message"]
        aliased = await gateway(aliases=[parse_alias("gpt-5*=other")], default="coding")
        api = client(aliased.url)
        five = await api.chat.completions.create(model="gpt-5.2-codex", messages=HI)  # type: ignore[arg-type]
        assert five.choices[0].message.content == "from-b"
        anything = await api.chat.completions.create(model="claude-x", messages=HI)  # type: ignore[arg-type]
        assert anything.model == "openai/model-a"


async def test_models_lists_served(write_profile: WriteProfile, gateway: StartGateway) -> None:
    """/v1/models lists the served load balancers (--profile narrows it)."""
    write_profile("a", member())
    write_profile("coding", lb(["a"], "roundrobin"))
    write_profile("team", lb(["a"], "roundrobin"))
    every = await gateway()
    assert [m.id async for m in client(every.url).models.list()] == ["coding", "team"]
    one = await gateway(profiles=["team"])
    listed = [m async for m in client(one.url).models.list()]
    assert [m.id for m in listed] == ["team"]
    assert listed[0].owned_by == "lbprovider"


async def test_profile_edits_are_picked_up(
    write_profile: WriteProfile, gateway: StartGateway
) -> None:
    """A provider is reused until its files change; an edit on disk needs no restart."""
    async with serve("text=one") as a, serve("text=two") as b:
        write_profile("a", member(a.url, model="model-a"))
        write_profile("b", member(b.url, model="model-b"))
        path = write_profile("coding", lb(["a"], "roundrobin"))
        gw = await gateway()
        api = client(gw.url)
        first = await api.chat.completions.create(model="coding", messages=HI)  # type: ignore[arg-type]
        assert gw.served.provider("coding") is gw.served.provider("coding")
        path.write_text(json.dumps(lb(["b"], "roundrobin")))
        os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
        second = await api.chat.completions.create(model="coding", messages=HI)  # type: ignore[arg-type]
        assert (first.choices[0].message.content, second.choices[0].message.content) == (
            "one",
            "two",
        )


# -- keys and doors ------------------------------------------------------------------------------


async def _status(url: str, path: str = "/v1/models", **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        method = kwargs.pop("method", "GET")
        async with session.request(method, url + path, **kwargs) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, text


async def test_keys(write_profile: WriteProfile, gateway: StartGateway) -> None:
    """No key or a wrong one: 401 in the endpoint's form; Bearer and x-api-key both open."""
    write_profile("a", member())
    write_profile("coding", lb(["a"], "roundrobin"))
    gw = await gateway()
    status, body = await _status(gw.url)
    assert status == 401 and body["error"]["type"] == "authentication_error"
    assert GW_KEY not in json.dumps(body)
    assert (await _status(gw.url, headers={"Authorization": "Bearer wrong-key-0123456789"}))[
        0
    ] == 401
    assert (await _status(gw.url, headers={"Authorization": f"Bearer {GW_KEY}"}))[0] == 200
    assert (await _status(gw.url, headers={"x-api-key": GW_KEY}))[0] == 200
    assert (await _status(gw.url, "/health"))[0] == 200  # open without a key
    with pytest.raises(openai.AuthenticationError):
        await client(gw.url, "wrong-key-0123456789").models.list()


async def test_generated_key_file(
    write_profile: WriteProfile, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no key given, the first start writes <home>/serve.key (0600); the next reads it."""
    from lbprovider.gateway.server import GatewayServer, ServeOptions

    monkeypatch.delenv("LBPROVIDER_SERVE_KEY", raising=False)
    first = GatewayServer(ServeOptions(port=0))
    path = isolated / "serve.key"
    assert first.keys.generated == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text().strip()
    again = GatewayServer(ServeOptions(port=0))
    assert again.keys.generated is None and again.keys.accepts(key)
    assert not again.keys.accepts(key[:-1] + "x")


async def test_origin_refused_unless_allowed(
    write_profile: WriteProfile, gateway: StartGateway
) -> None:
    """A web page's request (an Origin header) gets 403 unless --allow-origin names it."""
    write_profile("a", member())
    write_profile("coding", lb(["a"], "roundrobin"))
    headers = {"Authorization": f"Bearer {GW_KEY}", "Origin": "https://evil.example"}
    gw = await gateway()
    status, body = await _status(gw.url, headers=headers)
    assert status == 403 and "--allow-origin" in body["error"]["message"]
    allowed = await gateway(allow_origins=["https://evil.example"])
    assert (await _status(allowed.url, headers=headers))[0] == 200


@pytest.mark.parametrize(
    ("method", "path", "data", "status", "says"),
    [
        ("POST", "/v1/chat/completions", b"{not json", 400, "not JSON"),
        ("POST", "/v1/chat/completions", b"[1, 2]", 400, "JSON object"),
        ("POST", "/v1/chat/completions", b'{"messages": []}', 400, "model"),
        ("POST", "/v1/chat/completions", b'{"model": "coding"}', 400, "messages"),
        (
            "POST",
            "/v1/chat/completions",
            b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}',
            404,
            "nope",
        ),
        (
            "POST",
            "/v1/chat/completions",
            b'{"model": "coding", "messages": ["x"]}',
            400,
            "messages[0]",
        ),
        ("POST", "/v1/chat/completions", b"x" * (2 * 1024 * 1024), 413, "larger than"),
        ("GET", "/v1/chat/completions", None, 405, "not allowed"),
        ("POST", "/v1/nothing", b"{}", 404, "no such endpoint"),
    ],
)
async def test_bad_requests(
    write_profile: WriteProfile,
    gateway: StartGateway,
    method: str,
    path: str,
    data: bytes | None,
    status: int,
    says: str,
) -> None:
    """Each bad request gets its status in OpenAI's error form; the server keeps serving."""
    write_profile("a", member())
    write_profile("coding", lb(["a"], "roundrobin"))
    gw = await gateway(max_body_mb=1)
    headers = {"Authorization": f"Bearer {GW_KEY}", "Content-Type": "application/json"}
    got, body = await _status(gw.url, path, method=method, data=data, headers=headers)
    assert got == status
    assert says in body["error"]["message"]
    if says == "no such endpoint":
        assert body["error"]["code"] is None  # not a model's absence
    assert "Traceback" not in json.dumps(body)
    assert (await _status(gw.url, "/health"))[0] == 200


async def test_client_disconnect_closes_the_upstream(
    write_profile: WriteProfile, gateway: StartGateway
) -> None:
    """A client that goes away before the first chunk cancels the upstream; no failure counts."""
    async with serve("stall_first_chunk=30") as a, serve() as b:
        setup_lb(write_profile, {"a": a, "b": b})
        gw = await gateway()
        session = aiohttp.ClientSession()
        request = asyncio.ensure_future(
            session.post(
                f"{gw.url}/v1/chat/completions",
                json={"model": "coding", "messages": HI, "stream": True},
                headers={"Authorization": f"Bearer {GW_KEY}"},
            )
        )
        await a.wait_for(lambda s: s.hits == 1)
        request.cancel()
        await session.close()
        await a.wait_for(lambda s: s.disconnects == 1)
        stats = gw.served.provider("coding").stats()["backendMetrics"]["a"]
        assert stats["failures"] == 0 and b.hits == 0


async def test_metrics_parse(write_profile: WriteProfile, gateway: StartGateway) -> None:
    """/metrics is Prometheus text with the contract's names; breaker state from the store."""
    async with serve("status=503") as a, serve() as b:
        setup_lb(
            write_profile,
            {"a": a, "b": b},
            failover_retry_count=1,
            circuit_breaker_enabled=True,
            circuit_breaker_failure_threshold=1,
        )
        gw = await gateway()
        await client(gw.url).chat.completions.create(model="coding", messages=HI)  # type: ignore[arg-type]
        status, text = await _status(
            gw.url, "/metrics", headers={"Authorization": f"Bearer {GW_KEY}"}
        )
        assert status == 200
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

        def value(name: str, **labels: str) -> float:
            return samples[(name, tuple(sorted(labels.items())))]

        ok = {"lb": "coding", "endpoint": "/v1/chat/completions", "outcome": "ok"}
        assert value("lbprovider_requests_total", **ok) == 1
        assert value("lbprovider_attempts_total", lb="coding", member="a", outcome="retryable") == 1
        assert value("lbprovider_attempts_total", lb="coding", member="b", outcome="ok") == 1
        assert value("lbprovider_failovers_total", lb="coding") == 1
        assert value("lbprovider_tokens_total", member="b", kind="completion") == 5
        assert value("lbprovider_inflight_requests", lb="coding") == 0
        assert value("lbprovider_time_to_first_chunk_seconds_count", lb="coding", member="b") == 1
        assert value("lbprovider_breaker_state", member="a") == 2
        assert value("lbprovider_breaker_state", member="b") == 0


# -- as a process ---------------------------------------------------------------------------------


def _env(isolated: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, LBPROVIDER_HOME=str(isolated), LBPROVIDER_SERVE_KEY=GW_KEY)
    env.update(extra)
    return env


@pytest.mark.slow
def test_serve_imports_no_sdk_and_drains(
    write_profile: WriteProfile, isolated: Path, tmp_path: Path
) -> None:
    """`serve` with native members imports neither litellm nor an SDK; SIGTERM lets a stream
    in flight finish, then exits 0."""
    import urllib.request

    from lbprovider.sim import serve_in_thread

    with serve_in_thread("chunks=10,chunk_delay=0.2") as sim:
        write_profile("a", member(sim.url))
        write_profile("coding", lb(["a"], "roundrobin"))
        env = _env(isolated, LBPROVIDER_STATE=f"sqlite:///{tmp_path}/state.db")
        with serve_process(env, python_args=("-X", "importtime")) as (proc, url, err):
            request = urllib.request.Request(
                url + "/v1/chat/completions",
                data=json.dumps({"model": "coding", "messages": HI, "stream": True}).encode(),
                headers={"Authorization": f"Bearer {GW_KEY}", "Content-Type": "application/json"},
            )
            response = urllib.request.urlopen(request, timeout=60)
            first = response.readline()
            assert first.startswith(b"data:")
            os.killpg(proc.pid, signal.SIGTERM)
            rest = response.read().decode()
            assert rest.rstrip().endswith("data: [DONE]")
            assert proc.wait(60) == 0
            log = err.read_text()
        modules = {
            line.split("|")[-1].strip().split(".")[0]
            for line in log.splitlines()
            if line.startswith("import time:")
        }
        assert not modules & {"litellm", "openai", "anthropic", "httpx"}
        assert "stopping; 1 request(s) in flight" in log
        access = [line for line in log.splitlines() if "POST /v1/chat/completions" in line]
        assert len(access) == 1 and "member=a" in access[0] and "status=200" in access[0]
        assert GW_KEY not in log and "hi" not in access[0].split("model=")[0]


@pytest.mark.slow
def test_two_replicas_share_a_redis_store(
    write_profile: WriteProfile, isolated: Path, valkey: Any
) -> None:
    """Two `serve` processes on one Redis share breakers, positions and counts."""
    import urllib.error
    import urllib.request

    from lbprovider.sim import serve_in_thread

    def ask(url: str) -> tuple[int, str | None]:
        request = urllib.request.Request(
            url + "/v1/chat/completions",
            data=json.dumps({"model": "coding", "messages": HI}).encode(),
            headers={"Authorization": f"Bearer {GW_KEY}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.headers.get("x-lbprovider-backend")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()[:300]

    with (
        serve_in_thread("status=503") as bad,
        serve_in_thread() as good,
        serve_in_thread() as third,
    ):
        write_profile("bad", member(bad.url))
        write_profile("good", member(good.url))
        write_profile("third", member(third.url))
        write_profile(
            "coding",
            lb(
                ["bad", "good", "third"],
                "roundrobin",
                failover_retry_count=1,
                circuit_breaker_enabled=True,
                circuit_breaker_failure_threshold=1,
                circuit_breaker_recovery_timeout_ms=600_000,
                circuit_breaker_max_recovery_timeout_ms=600_000,
            ),
        )
        env = _env(isolated, LBPROVIDER_STATE=valkey.url)
        with serve_process(env) as (_, one, _e1), serve_process(env) as (_, two, _e2):
            served = [ask(url) for url in (one, two, one, two, one, two)]
        assert all(status == 200 for status, _ in served), served
        # One shared rotation (starts 0, 1, 2, 0, 1, 2 across both replicas): the bad
        # member is met once, its breaker open for both replicas after that, so the
        # requests starting there are served by the next member.
        assert bad.hits == 1
        assert (good.hits, third.hits) == (4, 2)
        from tests.conftest import run_process

        report = json.loads(run_process(env, "stats", "coding", "--json").stdout)
        assert report["totalRequests"] == 6
        assert report["circuitBreakerStates"]["bad"]["state"] == "open"
